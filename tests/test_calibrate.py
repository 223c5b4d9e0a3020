"""The calibrated cost curve on scripted fakes: measured again when not increasing, dropped when a run contradicts it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spec_cli import calibrate
from spec_cli.adaptive import AdaptiveDraftLength
from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters.ngram import NgramDrafter
from spec_cli.strategy import CURVE_CHECK_AFTER, AdaptiveStrategy
from tests.fakes import FakeModel, table_lm

V = 32
CYCLE = {i: i % 9 + 1 for i in range(1, 10)}


class CostedFake(FakeModel):
    """A fake with a file identity (for the cache key) and a scripted cost per pass."""

    def __init__(self, path: Path, cost):
        super().__init__(table_lm(CYCLE, V), V, cost=cost)
        self.path, self.n_threads, self.n_gpu_layers = path, 2, 0

    def tokenize(self, text: str) -> list[int]:
        return [1 + i % 9 for i in range(len(text.split()))]


def test_increasing_allows_noise_but_not_a_drop():
    assert calibrate.increasing([10, 18, 20, 21, 20.5])  # within 10 %
    assert not calibrate.increasing([24.1, 139.5, 84.8, 59.8, 179.9])  # measured beside another process
    assert calibrate.increasing([5.0])


def test_a_curve_that_is_not_increasing_is_measured_again_and_made_increasing(tmp_path):
    passes = {"n": 0}

    def cost(k):  # the first attempt's K = 3 samples hit by a busy machine, then quiet
        passes["n"] += 1
        busy = passes["n"] <= 2 * 9 * calibrate.COST_SAMPLES and k == 3
        return (0.010 + 0.002 * k) * (5.0 if busy else 1.0)

    target = CostedFake(tmp_path / "t.gguf", cost)
    curve = calibrate.robust_costs(target, None, list(range(1, 12)), 6)
    assert calibrate.increasing(curve.target_ms, tolerance=0.0)
    assert curve.how.startswith("2 attempt(s)")  # the first was not increasing
    assert curve.measured_at and "load average" in curve.how
    assert curve.target_ms == pytest.approx([12, 14, 16, 18, 20, 22], rel=1e-6)


def test_a_cached_curve_that_is_not_increasing_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_CACHE", str(tmp_path))
    (tmp_path / "t.gguf").write_bytes(b"x")
    target = CostedFake(tmp_path / "t.gguf", lambda k: 0.010 + 0.002 * k)
    calibrate.cached_costs(target, None, 5)
    path = tmp_path / "calibration.json"
    table = json.loads(path.read_text())
    for entry in table.values():  # the shape of a curve measured beside another llama.cpp process
        entry["target_ms"] = [12.0, 70.0, 42.0, 30.0, 90.0]
    path.write_text(json.dumps(table))
    notes: list[str] = []
    curve = calibrate.cached_costs(target, None, 5, notify=notes.append)
    assert any("not increasing" in n for n in notes)
    assert curve.target_ms == pytest.approx([12, 14, 16, 18, 20], rel=1e-6)
    assert json.loads(path.read_text())[next(iter(table))]["target_ms"] == pytest.approx(curve.target_ms)
    assert calibrate.forget_costs(target, None, 5) and not calibrate.forget_costs(target, None, 5)
    assert json.loads(path.read_text()) == {}


@pytest.mark.parametrize(
    "cached, replaced",
    [
        ([12.0, 26.0, 40.0, 54.0, 68.0], True),  # right at K = 1, priced as K single steps beyond: no draft could pay
        ([12.0, 17.0, 19.0, 21.6, 24.0], False),  # within the noise of the quick check (1.2x at K = 4)
    ],
)
def test_a_cached_curve_too_dear_beyond_one_token_is_replaced(tmp_path, monkeypatch, cached, replaced):
    monkeypatch.setenv("SPEC_CACHE", str(tmp_path))
    (tmp_path / "t.gguf").write_bytes(b"x")
    target = CostedFake(tmp_path / "t.gguf", lambda k: 0.010 + 0.002 * k)  # 12, 14, 16, 18, 20 ms
    calibrate.cached_costs(target, None, 5)
    path = tmp_path / "calibration.json"
    table = json.loads(path.read_text())
    for entry in table.values():
        entry["target_ms"] = cached
    path.write_text(json.dumps(table))
    notes: list[str] = []
    curve = calibrate.cached_costs(target, None, 5, notify=notes.append)
    if replaced:
        assert any("stale" in n and "4 tokens: 54.0 ms then, 18.0 ms now" in n for n in notes), notes
        assert curve.target_ms == pytest.approx([12, 14, 16, 18, 20], rel=1e-6)
    else:
        assert notes == [] and curve.target_ms == cached


def test_the_runs_passes_rescale_the_curve_it_did_not_measure():
    # Calibrated 2x too dear throughout; the run measures only plain passes (K = 1). Every K
    # is rescaled alike, so the shape (and the predicted gain of drafting) is kept, where
    # correcting K = 1 alone made every draft look twice as dear as it is.
    true = np.array([10.0, 17, 19, 20, 21, 24, 27, 30, 32])
    ctl = AdaptiveDraftLength(2 * true, 0.0, g_max=8)
    for _ in range(30):
        ctl.observe_pass(1, true[0])
    assert ctl.cost == pytest.approx(true, rel=1e-3)
    assert ctl.cost_ratio() == pytest.approx(0.5, rel=1e-3)
    for _ in range(30):  # then passes of 6 tokens at what calibration said: K = 2..5 in between
        ctl.observe_pass(6, 2 * true[5])
    assert ctl.cost[5] == pytest.approx(2 * true[5], rel=1e-3)
    assert ctl.cost[0] == pytest.approx(true[0], rel=1e-3)
    assert true[2] < ctl.cost[2] < 2 * true[2]
    assert ctl.cost[8] == pytest.approx(2 * true[8], rel=1e-3)  # beyond the last K measured: its ratio


@pytest.mark.parametrize("scale, fires", [(1.0, False), (2.0, True), (0.5, True)])
def test_a_run_that_contradicts_the_curve_says_so_once(scale, fires):
    curve = np.array([0.010, 0.017, 0.019, 0.020, 0.021, 0.024, 0.027, 0.030, 0.032])
    calls: list[float] = []
    ctl = AdaptiveDraftLength(curve, 0.0, g_max=8, probe_every=0)
    strategy = AdaptiveStrategy([(NgramDrafter(4, 2), ctl, True)], on_curve_off=calls.append)
    target = FakeModel(table_lm(CYCLE, V), V, cost=lambda k: scale * curve[min(k, 9) - 1])
    res = Engine(target, strategy=strategy).generate([1, 2, 3, 4, 5, 6, 7, 8, 9, 1], GenerateOptions(max_tokens=120))
    assert res.stats.target_passes > CURVE_CHECK_AFTER
    assert len(calls) == (1 if fires else 0)
    if fires:
        assert calls[0] == pytest.approx(scale, rel=0.05)
        assert any("measured again next run" in n for n in res.stats.notes)
