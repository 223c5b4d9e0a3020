"""Strategies on scripted fakes: n-gram first, fall back to plain decoding, come back."""

from __future__ import annotations

import numpy as np

from spec_cli.adaptive import AdaptiveDraftLength
from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.drafters.ngram import NgramDrafter
from spec_cli.strategy import AdaptiveStrategy, FixedStrategy
from tests.fakes import FakeModel, table_lm

V = 32
CYCLE = {i: i % 9 + 1 for i in range(1, 10)}  # the target repeats 1..9 forever
CPU_CURVE = np.array([1, 1.89, 2.03, 2.27, 3.91, 3.96, 3.96, 3.96, 3.96]) * 0.016  # NOTES.md, Gemma Q4_K_M
FLAT_CURVE = np.full(9, 0.016)


def run(strategy, prompt=(1,), n=60):
    t = FakeModel(table_lm(CYCLE, V), V)
    res = Engine(t, strategy=strategy).generate(list(prompt), GenerateOptions(max_tokens=n))
    ref = Engine(FakeModel(table_lm(CYCLE, V), V)).generate(list(prompt), GenerateOptions(max_tokens=n, draft_len=0))
    assert res.tokens == ref.tokens  # whatever the strategy does, the output is the target's
    return res, strategy


def test_ngram_takes_over_on_repetitive_text():
    ctl = AdaptiveDraftLength(CPU_CURVE, 0.0, g_max=8)
    res, strat = run(AdaptiveStrategy([(NgramDrafter(4, 2), ctl, True)]), prompt=[1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2])
    assert strat.rounds["ngram"] > strat.rounds["none"]
    assert res.stats.tokens_per_pass > 3
    assert ctl.acceptance > 0.9


def test_bad_draft_on_steep_curve_falls_back_to_plain_decoding():
    wrong = FakeModel(table_lm({i: 20 for i in range(V)}, V), V)  # never agrees with the target
    # cheap enough to pay if it were right (so it is kept and probed), but it never is
    ctl = AdaptiveDraftLength(CPU_CURVE, 0.002, g_max=8)
    res, strat = run(AdaptiveStrategy([(ModelDrafter(wrong), ctl, False)]), n=80)
    assert strat.rounds["none"] > 0.8 * sum(strat.rounds.values())
    assert ctl.counts["off"] > ctl.counts["probe"] > 0
    assert "off" in ctl.reason


def test_shadow_evidence_brings_the_lookup_back():
    """An n-gram drafter switched off by a bad start comes back once its guesses land."""
    ctl = AdaptiveDraftLength(CPU_CURVE, 0.0, g_max=8, prior=0.05, prior_weight=3.0, probe_every=0)  # no probes: only shadow evidence
    res, strat = run(AdaptiveStrategy([(NgramDrafter(4, 2), ctl, True)]), prompt=[1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2], n=120)
    assert ctl.counts["off"] > 0  # it started off (pessimistic prior)
    assert strat.rounds["ngram"] > 0  # and came back on shadow evidence
    assert ctl.reason.startswith("g=")


def test_fixed_strategy_reports_rounds():
    d = FakeModel(table_lm(CYCLE, V), V)
    res, strat = run(FixedStrategy(ModelDrafter(d), 3), n=20)
    assert strat.rounds["model"] == res.stats.target_passes - strat.rounds["none"]
    assert "fixed draft length 3" in strat.describe()[0]


def test_a_drafter_that_cannot_pay_is_left_out():
    slow = FakeModel(table_lm(CYCLE, V), V)
    # a draft step as slow as a target pass, on the CPU curve: loses even at 100 % acceptance
    ctl = AdaptiveDraftLength(CPU_CURVE, 0.016, g_max=8)
    strat = AdaptiveStrategy([(NgramDrafter(4, 2), AdaptiveDraftLength(CPU_CURVE, 0.0, g_max=8, probe_every=0), True),
                              (ModelDrafter(slow), ctl, False)])
    assert [s.drafter.name for s in strat.sources] == ["ngram"]
    assert any("model drafter off" in line for line in strat.describe())
    res, _ = run(strat, n=30)
    assert not slow.batches  # the draft model never ran
    # the same drafter on a flat (GPU-like) curve is kept
    kept = AdaptiveStrategy([(ModelDrafter(slow), AdaptiveDraftLength(FLAT_CURVE, 0.004, g_max=8), False)])
    assert [s.drafter.name for s in kept.sources] == ["model"]
