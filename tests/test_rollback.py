"""BiLD's rollback rule (verify.py): threshold 0 is the lossless rule, a larger one keeps more."""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.sampling import Dist, SamplingParams, shape
from spec_cli.verify import (
    accept_greedy,
    accept_greedy_rollback,
    accept_sampled,
    accept_sampled_rollback,
    rollback_distance,
    token_nll,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def test_distance_is_the_targets_surprise_at_the_draft_token():
    p = Dist(np.array([2, 5, 9]), np.array([0.5, 0.25, 0.25]))
    assert rollback_distance(p, 2) == pytest.approx(np.log(2))
    assert rollback_distance(p, 5) == pytest.approx(np.log(4))
    assert rollback_distance(p, 7) == float("inf")  # outside the support
    assert rollback_distance(Dist.point(3), 3) == 0.0
    rows = np.random.default_rng(0).normal(size=(3, 50))
    toks = [4, 17, 0]
    want = [-np.log(softmax(rows[i])[t]) for i, t in enumerate(toks)]
    assert token_nll(rows, toks) == pytest.approx(want)


def test_threshold_zero_is_the_lossless_greedy_rule_on_random_inputs():
    rng = np.random.default_rng(1)
    differ = 0
    for _ in range(2000):
        g = int(rng.integers(0, 7))
        rows = rng.normal(scale=1.0, size=(g + 1, 12))
        argmax = rows.argmax(axis=1)
        # drafts that agree with the argmax for a while, then guess
        drafts = [int(argmax[i]) if rng.random() < 0.7 else int(rng.integers(0, 12)) for i in range(g)]
        want = accept_greedy(drafts, argmax)
        assert accept_greedy_rollback(drafts, argmax, token_nll(rows, drafts), 0.0) == want
        differ += accept_greedy_rollback(drafts, argmax, token_nll(rows, drafts), 2.5) != want
    assert differ > 50  # the inputs do reach positions a threshold would keep


def test_threshold_zero_is_the_lossless_sampled_rule_uniform_for_uniform():
    rng = np.random.default_rng(2)
    params = SamplingParams(temperature=0.8, top_k=8)
    differ = 0
    for trial in range(2000):
        g = int(rng.integers(1, 6))
        p = [shape(rng.normal(scale=2.0, size=20), params) for _ in range(g + 1)]
        q = [shape(rng.normal(scale=2.0, size=20), params) for _ in range(g)]
        drafts = [qi.sample(rng) for qi in q]
        want = accept_sampled(drafts, q, p, np.random.default_rng(trial))
        assert accept_sampled_rollback(drafts, q, p, np.random.default_rng(trial), 0.0) == want
        differ += accept_sampled_rollback(drafts, q, p, np.random.default_rng(trial), 2.0)[0] != want[0]
    assert differ > 50


def test_large_threshold_keeps_everything_drafted():
    argmax = [1, 2, 3, 4]
    drafts = [7, 8, 9]  # every one differs from the target's choice
    assert accept_greedy(drafts, argmax) == (0, 1)
    assert accept_greedy_rollback(drafts, argmax, [5.0, 9.0, 30.0], 1e9) == (3, 4)
    p = [Dist(np.arange(10), np.full(10, 0.1))] * 4  # full support: every distance is finite
    q = [Dist.point(t) for t in drafts]
    rng = np.random.default_rng(0)
    assert accept_sampled_rollback(drafts, q, p, rng, 1e9)[0] == 3


def test_middle_threshold_rolls_back_at_the_first_far_position():
    argmax = [1, 2, 3, 4, 5]
    drafts = [1, 8, 9, 4]  # 1 agrees; 8 and 9 differ; 4 agrees
    # 8 is near (0.3), 9 is far (2.0): keep 1 and 8, roll back at 9 with the target's 3
    assert accept_greedy_rollback(drafts, argmax, [0.0, 0.3, 2.0, 0.0], 0.5) == (2, 3)
    # a token the target agrees with is kept whatever its distance (a flat target's argmax)
    assert accept_greedy_rollback(drafts, argmax, [4.0, 0.3, 0.4, 4.0], 0.5) == (4, 5)
    # sampled: a point-mass draft the target gives 0.2 (distance log 5 = 1.6) before a far one
    # (0.1, distance log 10 = 2.3)
    near, far = 3, 4
    pd = Dist(np.array([near, far, 6]), np.array([0.2, 0.1, 0.7]))
    q = [Dist.point(near), Dist.point(far)]
    p = [pd, pd, Dist.point(6)]
    kept = [accept_sampled_rollback([near, far], q, p, np.random.default_rng(s), 2.0) for s in range(200)]
    # `near` is always kept (by the test or the threshold); `far` is kept only when the test passes
    assert all(n >= 1 for n, _ in kept)
    assert {n for n, _ in kept} == {1, 2}
    # at the rollback the replacement comes from the residual max(p - q, 0), which leaves `far` out
    assert {extra for n, extra in kept if n == 1} == {near, 6}


# --- in the loop, on scripted fakes -------------------------------------------------------------

from spec_cli.decode import Engine, GenerateOptions  # noqa: E402
from spec_cli.drafters import ModelDrafter  # noqa: E402
from spec_cli.errors import SpecError  # noqa: E402
from spec_cli.strategy import FixedStrategy  # noqa: E402
from tests.fakes import FakeModel, table_lm  # noqa: E402

V = 16
CYCLE = {i: i % 9 + 1 for i in range(1, 10)}  # the target: 1 -> 2 -> ... -> 9 -> 1
WRONG = {i: (i + 1) % 9 + 1 for i in range(1, 10)}  # the draft skips one: 1 -> 3 -> 5 ...


def generate(rollback, temp=0.0, n=12):
    # sharp=10: the target gives a token it would not pick about e^-10, a distance of ~10
    t = FakeModel(table_lm(CYCLE, V), V)
    d = FakeModel(table_lm(WRONG, V), V)
    opts = GenerateOptions(max_tokens=n, draft_len=4, rollback_threshold=rollback, seed=3,
                           sampling=SamplingParams(temperature=temp, top_k=0))  # fmt: skip
    return Engine(t, FixedStrategy(ModelDrafter(d), 4)).generate([1], opts)


@pytest.mark.parametrize("temp", [0.0, 0.8])
def test_loop_threshold_zero_or_small_is_the_lossless_output(temp):
    lossless = generate(None, temp)
    for rb in (0.0, 5.0):
        res = generate(rb, temp)
        assert res.tokens == lossless.tokens and res.stats.accepted == lossless.stats.accepted
    assert not generate(0.0, temp).stats.lossy and generate(5.0, temp).stats.lossy


def test_loop_large_threshold_keeps_the_drafts():
    lossless, lossy = generate(None), generate(12.0)
    assert lossless.tokens[:4] == [2, 3, 4, 5] and lossless.stats.accepted == 0
    # every round keeps its 4 drafts, then the target's own token after the last one
    assert lossy.tokens[:5] == [3, 5, 7, 9, 1] and lossy.stats.accepted == lossy.stats.drafted
    d = lossy.stats.to_dict()
    assert d["lossy"] is True and d["rollback_threshold"] == 12.0


def test_bad_threshold_is_refused():
    with pytest.raises(SpecError, match="rollback-threshold"):
        GenerateOptions(rollback_threshold=-1.0).check()
    with pytest.raises(SpecError, match="rollback-threshold"):
        GenerateOptions(rollback_threshold=float("nan")).check()


# --- the command line, on the fakes ---------------------------------------------------------------


def _fake_loaded_pair(*a, **k):
    from pathlib import Path

    from spec_cli.loading import LoadedPair

    class Fake(FakeModel):
        n_threads, n_gpu_layers = 1, 0

        def tokenize(self, text):
            return [1]

        def close(self):
            pass

    cost = lambda n: 0.001 * (1 + 0.1 * n)  # noqa: E731  (a scripted price per pass, for the bench's cost curve)
    target, draft = Fake(table_lm(CYCLE, V), V, n_ctx=4096, cost=cost), Fake(table_lm(WRONG, V), V, n_ctx=4096, cost=cost)
    return LoadedPair(target, draft, Path("/nowhere/t.gguf"), Path("/nowhere/d.gguf"))


def test_cli_run_labels_a_positive_threshold_lossy(monkeypatch):
    import json

    from typer.testing import CliRunner

    import spec_cli.cli.setup as setup
    from spec_cli.cli import app

    monkeypatch.setattr(setup, "load_pair", _fake_loaded_pair)
    monkeypatch.setenv("SPEC_WIDTH", "200")
    runner = CliRunner()
    base = ["run", "--json", "-n", "8", "--drafter", "model", "-k", "4", "x"]
    out = {}
    for rb in (None, "0", "12"):
        res = runner.invoke(app, base + ([] if rb is None else ["--rollback-threshold", rb]))
        assert res.exit_code == 0, res.output
        out[rb] = json.loads(res.stdout.strip().splitlines()[-1])
    assert out[None]["tokens"] == out["0"]["tokens"] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert out[None]["stats"]["lossy"] is False and out["0"]["stats"]["lossy"] is False
    assert out["12"]["stats"]["lossy"] is True and out["12"]["stats"]["rollback_threshold"] == 12.0
    assert out["12"]["tokens"] != out[None]["tokens"]
    res = runner.invoke(app, ["run", "-n", "8", "--drafter", "model", "-k", "4", "--rollback-threshold", "12", "x"])
    assert res.exit_code == 0 and "LOSSY: rollback threshold 12" in " ".join(res.output.split())
    res = runner.invoke(app, ["run", "-n", "8", "--drafter", "model", "-k", "4", "x"])
    assert "LOSSY" not in res.output
    res = runner.invoke(app, ["run", "-n", "8", "--rollback-threshold", "-1", "x"])
    assert res.exit_code != 0 and "--rollback-threshold must be a number >= 0" in str(res.exception)


def test_cli_bench_sweeps_thresholds_and_measures_departures(monkeypatch, capsys, tmp_path):
    import json

    import spec_cli.cli.bench as cli_bench
    from spec_cli.cli import main

    monkeypatch.setattr(cli_bench, "load_pair", _fake_loaded_pair)
    monkeypatch.setenv("SPEC_WIDTH", "200")
    j = tmp_path / "r.json"
    argv = ["bench", "--drafter", "model", "--draft-lens", "4", "-n", "8", "-r", "1", "--no-warmup", "--limit", "2",
            "--rollback-threshold", "0,12", "--json", str(j)]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    assert " g=4 rb=12 " in out and "\n g=4 " in out  # the lossless row keeps its name
    assert "lossy g=4 rb=12: 100% of outputs depart from the target alone's, first at token 0 (median)" in out
    data = json.loads(j.read_text())
    assert data["settings"]["lossy"] is True and data["settings"]["rollback_thresholds"] == [0.0, 12.0]
    by = {(s["draft_len"], s["rollback"]): s for s in data["summary"] if s["mode"] == "speculative"}
    assert by[(4, 12.0)]["departed"] == 1.0 and by[(4, 12.0)]["first_departure"] == 0.0
    assert by[(4, 0.0)]["departed"] is None and by[(4, 0.0)]["mismatches"] == 0
    lossy_runs = [r for r in data["runs"] if r["rollback"]]
    assert lossy_runs and {r["output_check"] for r in lossy_runs} == {"lossy"}
    # the target scores every text: its own (lossless) one is the yardstick, the lossy one is less likely to it
    assert by[(4, 0.0)]["logprob_gap"] == 0.0 and by[(4, 12.0)]["logprob_gap"] < -1.0
    assert all(
        r["logprob"] is not None and r["logprob"] <= 0
        for r in data["runs"]
        if r["engine"] == "spec" and r["drafter"] != "control"
    )
    assert "lossless g=4: the target's mean log-likelihood per token" in out and "+0.000 against" in out
    assert "(perplexity x" in out.split("lossy g=4 rb=12:")[1].splitlines()[0]
    assert data["recommendation"]["drafter"] is None or "rb" not in str(data["recommendation"])


def test_bench_threshold_option_is_checked():
    from spec_cli.bench import BenchSettings, parse_thresholds

    assert parse_thresholds(None) == () and parse_thresholds("0, 0.5,2,0.5") == (0.0, 0.5, 2.0)
    with pytest.raises(SpecError, match="comma-separated numbers"):
        parse_thresholds("lots")
    with pytest.raises(SpecError, match="token tree"):
        BenchSettings(drafters=("tree",), rollback_thresholds=(1.0,)).check()


def test_server_extension_field_takes_a_threshold_and_the_timings_say_lossy():
    pytest.importorskip("starlette")
    from spec_cli.serve.schemas import ApiError, Outcome, parse_completion

    assert parse_completion({"model": "m", "prompt": "x"}).spec.rollback_threshold is None
    assert parse_completion({"model": "m", "prompt": "x", "spec": {"rollback_threshold": 0.5}}).spec.rollback_threshold == 0.5
    for bad in (-1, "1", True):
        with pytest.raises(ApiError, match="rollback_threshold"):
            parse_completion({"model": "m", "prompt": "x", "spec": {"rollback_threshold": bad}})
    out = Outcome("t", "stop", 1, 1, 1, None, 0, 0, "model", 0.1, 0.1, 0.1, 0.0)
    assert "lossy" not in out.timings()
    out.rollback_threshold = 0.5
    assert out.timings()["lossy"] is True and out.timings()["rollback_threshold"] == 0.5


# --- on the small default models (auto-marked slow) ----------------------------------------------


def test_real_threshold_zero_is_lossless_and_a_positive_one_is_labelled(target, draft):
    toks = target.tokenize("def fibonacci(n):\n")

    def gen(rb):
        target.reset()
        draft.reset()
        opts = GenerateOptions(max_tokens=32, draft_len=4, rollback_threshold=rb)
        return Engine(target, FixedStrategy(ModelDrafter(draft), 4)).generate(toks, opts)

    lossless, zero, lossy = gen(None), gen(0.0), gen(3.0)
    assert zero.tokens == lossless.tokens and zero.stats.accepted == lossless.stats.accepted
    assert not zero.stats.lossy and lossy.stats.lossy and lossy.stats.to_dict()["rollback_threshold"] == 3.0
    # (acceptance is not compared: once the lossy text parts from the target's, the rounds differ)
