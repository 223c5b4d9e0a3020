"""Drafting overlapped with verification (pipeline.py) on scripted fake models."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.drafters.ngram import NgramDrafter
from spec_cli.errors import SpecError
from spec_cli.pipeline import MIN_SAMPLES, OverlapChoice, parse_overlap
from spec_cli.sampling import SamplingParams
from spec_cli.strategy import FixedStrategy
from tests.chisquare import masked_chi2, softmax
from tests.fakes import FakeModel, soft_lm, table_lm

V = 16
CYCLE = {i: i % 9 + 1 for i in range(1, 10)}


def target_only(n, table=CYCLE, eog=None):
    return Engine(FakeModel(table_lm(table, V), V, eog=eog)).generate([1], GenerateOptions(max_tokens=n)).tokens


def run(draft_table, n=30, g=4, overlap="on", eog=None, rpc=False, **kw):
    t = FakeModel(table_lm(CYCLE, V), V, eog=eog)
    d = FakeModel(table_lm(draft_table, V), V)
    if rpc:
        t.rpc_servers = ("10.0.0.2:50052",)  # the target on another host: auto may overlap
    drafter = ModelDrafter(d)
    res = Engine(t, FixedStrategy(drafter, g), overlap=overlap).generate([1], GenerateOptions(max_tokens=n, draft_len=g, **kw))
    return res, t, d, drafter


@pytest.mark.parametrize("g", [1, 2, 4])
@pytest.mark.parametrize("draft_table", [CYCLE, {**CYCLE, 3: 7}, {**CYCLE, 5: 5, 8: 2}])
def test_greedy_output_is_the_target_alone_and_caches_stay_consistent(draft_table, g):
    res, t, d, drafter = run(draft_table, g=g)
    assert res.tokens == target_only(30)
    assert t.tokens == ([1] + res.tokens)[:-1]  # the target's cache invariant
    assert drafter.ahead is None  # nothing left over for a later generation
    assert not [th for th in threading.enumerate() if th.name == "spec-overlap"]
    s = res.stats
    assert 0 < s.overlap_used <= s.overlap_rounds < s.target_passes


def test_a_perfect_draft_uses_every_pre_draft():
    res, *_ = run(CYCLE, n=30, g=4)
    # 30 tokens in rounds of 5; each round but the first was drafted during the one before
    assert res.stats.target_passes == 6
    assert res.stats.overlap_used == 5
    assert res.stats.accept_hist == [0, 0, 0, 0, 6]


def test_a_wrong_guess_is_not_used():
    # The draft agrees on 1..4 and then bets on 12 where the target says 5: a round ending on 4
    # (draft 1 2 3 4, target's own token 5) must not take the pre-draft drafted after 4, 12.
    res, *_ = run({**CYCLE, 4: 12}, n=30, g=3)
    assert res.tokens == target_only(30)
    assert res.stats.overlap_used < res.stats.overlap_rounds


def test_off_never_starts_the_worker():
    res, *_ = run(CYCLE, overlap="off")
    assert res.tokens == target_only(30)
    assert res.stats.overlap_rounds == 0 and res.stats.overlap == ""


def test_auto_stays_off_where_target_and_draft_share_the_cpu():
    res, *_ = run(CYCLE, overlap="auto")
    assert res.stats.overlap_rounds == 0
    assert any("overlap auto: off" in n for n in res.stats.notes)


def test_auto_measures_both_ways_where_the_target_runs_elsewhere():
    res, *_ = run({**CYCLE, 6: 3}, n=60, g=2, overlap="auto", rpc=True)
    assert res.tokens == target_only(60)
    s = res.stats
    assert 0 < s.overlap_rounds < s.target_passes - 1  # some rounds each way
    assert any("overlap auto" in n and "with a pre-draft" in n for n in s.notes)


def test_stops_inside_a_round_end_cleanly():
    eog = 7
    res, t, d, drafter = run(CYCLE, n=40, g=4, eog=eog)
    assert res.tokens == target_only(40, eog=eog)
    assert res.stats.stop_reason == "eos"
    res, *_ = run(CYCLE, n=30, g=4, stop=["<8>"])
    assert res.stats.stop_reason == "stop" and res.tokens[-1] == 8


def test_choice_alternates_then_keeps_the_faster_and_probes_the_other():
    c = OverlapChoice()
    seen = []
    for _ in range(2 * MIN_SAMPLES):
        w = c.want()
        seen.append(w)
        c.record(w, 0.010 if w else 0.020)  # overlapping halves a round
    assert seen.count(True) == seen.count(False) == MIN_SAMPLES
    picks = [c.want() for _ in range(40)]
    assert picks.count(True) > 30 and False in picks  # on, with a probe of off now and then
    slow = OverlapChoice()
    for _ in range(2 * MIN_SAMPLES):
        w = slow.want()
        slow.record(w, 0.0199 if w else 0.020)  # within the margin: not clearly faster
    assert not slow.better()
    assert [slow.want() for _ in range(40)].count(True) <= 4


def test_a_draft_error_in_the_worker_reaches_the_caller():
    class Failing(FakeModel):
        def eval(self, tokens, logits="last"):
            if threading.current_thread().name == "spec-overlap":
                raise RuntimeError("boom")
            return super().eval(tokens, logits)

    t = FakeModel(table_lm(CYCLE, V), V)
    d = Failing(table_lm(CYCLE, V), V)
    eng = Engine(t, FixedStrategy(ModelDrafter(d), 3), overlap="on")
    with pytest.raises(RuntimeError, match="boom"):
        eng.generate([1], GenerateOptions(max_tokens=20, draft_len=3))


def test_a_full_draft_context_costs_only_the_pre_draft():
    t = FakeModel(table_lm(CYCLE, V), V, n_ctx=64)
    d = FakeModel(table_lm(CYCLE, V), V, n_ctx=12)  # the draft's context fills up first
    res = Engine(t, FixedStrategy(ModelDrafter(d), 3), overlap="on").generate([1], GenerateOptions(max_tokens=8, draft_len=3))
    assert res.tokens == target_only(8)


def test_bad_values_are_refused():
    with pytest.raises(SpecError, match="--overlap"):
        parse_overlap("sometimes")
    t = FakeModel(table_lm(CYCLE, V), V)
    with pytest.raises(SpecError, match="--overlap on"):
        Engine(t, FixedStrategy(NgramDrafter(), 3), overlap="on")


def test_same_seed_same_sampled_output():
    def go(seed):
        t, d = FakeModel(soft_lm(V, 1), V), FakeModel(soft_lm(V, 2), V)
        opts = GenerateOptions(max_tokens=24, draft_len=2, seed=seed, sampling=SamplingParams(temperature=1.0, top_k=0))
        return Engine(t, FixedStrategy(ModelDrafter(d), 2), overlap="on").generate([1], opts).tokens

    assert go(5) == go(5)
    assert go(5) != go(6)


def test_sampled_output_keeps_the_target_distribution():
    """Chi-square on the first three sampled tokens, with g=1 so that the third is often drafted ahead."""
    n_vocab = 3
    tgt, drf = soft_lm(n_vocab, 21, temperature=2.0), soft_lm(n_vocab, 22, temperature=2.0)
    params = SamplingParams(temperature=1.0, top_k=0)
    runs, used = 3000, 0
    counts = np.zeros((n_vocab,) * 3)
    for seed in range(runs):
        eng = Engine(FakeModel(tgt, n_vocab), FixedStrategy(ModelDrafter(FakeModel(drf, n_vocab)), 1), overlap="on")
        res = eng.generate([1], GenerateOptions(max_tokens=4, draft_len=1, seed=seed, sampling=params))
        a, b, c = res.tokens[:3]
        counts[a, b, c] += 1
        used += res.stats.overlap_used
    assert used > runs // 20, used  # the pre-drafts really were used

    def joint(lm):
        """The exact probability of each first three tokens when sampling from `lm` alone."""

        def dist(history):
            return softmax(lm(history).astype(np.float64))

        out = np.zeros_like(counts)
        for a in range(n_vocab):
            for b in range(n_vocab):
                for c in range(n_vocab):
                    out[a, b, c] = dist([1])[a] * dist([1, a])[b] * dist([1, a, b])[c]
        return out

    chi2, dof = masked_chi2(counts, joint(tgt) * runs)
    assert chi2 < dof + 4.5 * np.sqrt(2 * dof) + 10, (chi2, dof)

    # power: the draft's own joint distribution fails the same test
    wrong = joint(drf)
    chi2_q, _ = masked_chi2(counts, wrong * runs)
    assert chi2_q > dof + 4.5 * np.sqrt(2 * dof) + 10, chi2_q


@pytest.mark.parametrize("command", [["run", "hello"], ["bench"], ["chat"], ["serve"]])
def test_a_bad_overlap_value_is_a_one_line_error(command):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "spec_cli", *command, "--overlap", "sometimes"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "--overlap takes off, on, auto" in res.stderr and "Traceback" not in res.stderr


def test_only_a_target_on_another_host_or_a_gpu_counts_as_separate_hardware():
    from spec_cli.pipeline import separate_hardware

    t, d = FakeModel(table_lm(CYCLE, V), V), FakeModel(table_lm(CYCLE, V), V)
    assert not separate_hardware(t, d)
    for local in (("127.0.0.1:50052",), ("localhost:1", "127.0.0.2:2"), ("[::1]:50052",)):
        t.rpc_servers = local  # loopback servers compute on this machine's cores, beside the draft
        assert not separate_hardware(t, d), local
    t.rpc_servers = ("127.0.0.1:50052", "10.0.0.2:50052")
    assert separate_hardware(t, d)
    d.rpc_servers = ("10.0.0.3:50052",)  # the draft is remote too: nothing is on separate hardware
    assert not separate_hardware(t, d)
