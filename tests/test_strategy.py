"""Strategies on scripted fakes: n-gram first, fall back to plain decoding, come back."""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.adaptive import AdaptiveDraftLength
from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.drafters.base import DrafterBase, Proposal
from spec_cli.drafters.ngram import NgramDrafter
from spec_cli.sampling import SamplingParams
from spec_cli.strategy import (
    AdaptiveStrategy,
    FixedStrategy,
    RoundOutcome,
    shadow_evidence,
)
from tests.fakes import FakeModel, sequence_lm, table_lm

V = 32
CYCLE = {i: i % 9 + 1 for i in range(1, 10)}  # the target repeats 1..9 forever
CPU_CURVE = np.array([1, 1.89, 2.03, 2.27, 3.91, 3.96, 3.96, 3.96, 3.96]) * 0.016  # docs/machine-notes.md, Gemma Q4_K_M
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
    ctl = AdaptiveDraftLength(
        CPU_CURVE, 0.0, g_max=8, prior=0.05, prior_weight=3.0, probe_every=0
    )  # no probes: only shadow evidence
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
    strat = AdaptiveStrategy(
        [
            (NgramDrafter(4, 2), AdaptiveDraftLength(CPU_CURVE, 0.0, g_max=8, probe_every=0), True),
            (ModelDrafter(slow), ctl, False),
        ]
    )
    assert [s.drafter.name for s in strat.sources] == ["ngram"]
    assert any("model drafter off" in line for line in strat.describe())
    res, _ = run(strat, n=30)
    assert not slow.batches  # the draft model never ran
    # the same drafter on a flat (GPU-like) curve is kept
    kept = AdaptiveStrategy([(ModelDrafter(slow), AdaptiveDraftLength(FLAT_CURVE, 0.004, g_max=8), False)])
    assert [s.drafter.name for s in kept.sources] == ["model"]


# --- auto where the draft model pays ------------------------------------------------
# Scripted costs (seconds): SmolLM2-135M F32 as the target (docs/machine-notes.md), its Q4_1 as the
# draft at 17 ms a token, whatever the batch (so a catch-up of many tokens is dear).
STANDIN_MS = {1: 39.9, 2: 42.0, 3: 45.6, 4: 49.4, 5: 53.1, 6: 57.7, 7: 59.6, 8: 61.6, 9: 64.6}


def standin_target_cost(n):
    return STANDIN_MS[min(n, 9)] / 1000


def draft_cost(n):
    return 0.017 * n


def standin_auto(draft):
    cost = [standin_target_cost(k) for k in range(1, 10)]
    ngram_ctl = AdaptiveDraftLength(cost, 0.0, g_max=8, probe_every=0, prior_weight=4.0)
    model_ctl = AdaptiveDraftLength(cost, 0.017, g_max=8)
    strat = AdaptiveStrategy([(NgramDrafter(4, 2), ngram_ctl, True), (ModelDrafter(draft), model_ctl, False)])
    return strat, ngram_ctl, model_ctl


def test_catch_up_after_idle_rounds_does_not_switch_the_draft_model_off():
    # 60 tokens that repeat (the lookup drafts them; the draft model sits idle), then text
    # that does not repeat, where only the draft model can guess. Its first round there
    # evaluates the ~60 tokens it skipped: booked as a price per drafted token, that pass
    # made it look far too dear to use.
    rng = np.random.default_rng(0)
    text = [1, 2, 3, 4, 5, 6, 7, 8, 9] * 8 + list(rng.permutation(np.arange(10, 250)))
    lm = sequence_lm(text, 256)
    prompt = text[:11]
    target = FakeModel(lm, 256, cost=standin_target_cost)
    draft = FakeModel(lm, 256, cost=draft_cost)
    strat, _, model_ctl = standin_auto(draft)
    res = Engine(target, strategy=strat).generate(prompt, GenerateOptions(max_tokens=160))
    assert res.tokens == text[11:171]
    assert strat.rounds["ngram"] >= 5  # the lookup had the repeating part, 8 tokens a round
    assert max(len(b) for b in draft.batches) > 30  # the draft model did catch up on it
    assert model_ctl.draft_step == pytest.approx(0.017)  # only one-token steps set its price
    assert model_ctl.counts["off"] == 0
    assert strat.rounds["model"] >= 0.8 * (strat.rounds["model"] + strat.rounds["none"])


def test_the_drafter_with_the_higher_predicted_gain_goes_first():
    # Text that never repeats a 2-gram in the same way: the lookup's guesses miss, the
    # draft model (a perfect copy of the target) lands. Once the evidence is in, the draft
    # model is asked first even in rounds where the lookup has a match.
    rng = np.random.default_rng(1)
    text = list(rng.integers(1, 12, size=400))
    lm = sequence_lm(text, 16)
    strat, ngram_ctl, model_ctl = standin_auto(FakeModel(lm, 16, cost=draft_cost))
    target = FakeModel(lm, 16, cost=standin_target_cost)
    res = Engine(target, strategy=strat).generate(text[:8], GenerateOptions(max_tokens=200))
    assert res.tokens == text[8:208]
    assert model_ctl.best_speedup() > ngram_ctl.best_speedup()
    # a fixed "lookup first" order would let the lookup draft whenever it matches (most
    # rounds, with 11 symbols); by predicted gain it drafts in only a few
    assert strat.rounds["ngram"] <= 0.15 * strat.rounds["model"]


def test_a_prepare_that_finds_the_draft_in_place_keeps_the_catch_up_price():
    # The chat prepares the draft before the engine does; the engine's prepare then evaluates
    # nothing and must not make a catch-up look free.
    draft = FakeModel(table_lm(CYCLE, V), V, cost=draft_cost)
    strat, _, _ = standin_auto(draft)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]
    strat.prepare(prompt)
    src = next(s for s in strat.sources if not s.free)
    price = src.catch_up
    assert price > 0 and src.synced == len(prompt) + 1
    strat.prepare(prompt)
    assert src.catch_up == price
    assert src.pending(len(prompt) + 1) == 0.0  # nothing to catch up
    assert src.pending(len(prompt) + 11) == pytest.approx(10 * price)


class _StubDrafter(DrafterBase):
    """Proposes n copies of one token; `guess_kind` as the lookup names its matches."""

    def __init__(self, name, token, guess_kind=None):
        self.name, self.token, self.guess_kind = name, token, guess_kind

    def propose(self, context, n, params, rng):
        return Proposal(tokens=[self.token] * n)

    def reset(self):
        pass


def test_the_lookup_goes_first_by_the_acceptance_of_its_kind_of_match():
    """Long matches right, short ones wrong: the lookup's one estimate is middling and a steady
    draft model predicts more, yet in a round with a long match the lookup drafts first."""
    cost = [standin_target_cost(k) for k in range(1, 10)]
    lookup_ctl = AdaptiveDraftLength(cost, 0.0, g_max=8, probe_every=0, prior_weight=4.0)
    for hit in [1] * 6 + [0] * 10:
        lookup_ctl.update(1, hit)
    model_ctl = AdaptiveDraftLength(cost, 0.017, g_max=8)
    for _ in range(10):
        model_ctl.update(8, 8)
    lookup = _StubDrafter("ngram", 5)
    strat = AdaptiveStrategy([(lookup, lookup_ctl, True), (_StubDrafter("model", 6), model_ctl, False)])
    src = strat.sources[0]
    assert model_ctl.best_speedup() > lookup_ctl.best_speedup()

    def first(kind):
        lookup.guess_kind = kind
        strat._previous = None  # no turn kept from an earlier call
        return strat.propose([1, 2, 3], 8, SamplingParams(), np.random.default_rng(0)).source

    assert first(None) == "model"  # no kinds: ordered by the one estimate, as before
    src.kinds = {"long": [30.0, 1.0], "short": [2.0, 10.0]}
    assert first("long") == "ngram"
    assert first("short") == "model"
    src.kind = "long"
    long_gain = src.order_gain()
    src.kind = "short"
    assert src.order_gain() < lookup_ctl.best_speedup() < long_gain


def test_kind_evidence_comes_from_drafted_rounds_and_shadow_guesses():
    cost = [standin_target_cost(k) for k in range(1, 10)]
    lookup = _StubDrafter("ngram", 5, "long")
    model_ctl = AdaptiveDraftLength(cost, 0.017, g_max=8)
    for _ in range(10):
        model_ctl.update(8, 8)
    strat = AdaptiveStrategy([(lookup, AdaptiveDraftLength(cost, 0.0, g_max=8, probe_every=0), True),
                              (_StubDrafter("model", 6), model_ctl, False)])  # fmt: skip
    src = strat.sources[0]
    prop = strat.propose([1, 2, 3], 4, SamplingParams(), np.random.default_rng(0))
    assert prop.source == "model" and src.shadow == [5, 5, 5, 5]  # the lookup's guess kept for a check
    strat.observe(
        prop, RoundOutcome(drafted=4, accepted=4, target_tokens=[5], pass_tokens=5, pass_seconds=cost[4], draft_seconds=0.07)
    )
    assert src.kinds == {"long": [1.0, 0.0]}  # only the first token known: right
    lookup.guess_kind = "short"
    strat.observe(strat.propose([1, 2, 3], 4, SamplingParams(), np.random.default_rng(0)),
                  RoundOutcome(drafted=4, accepted=1, target_tokens=[7], pass_tokens=5, pass_seconds=cost[4], draft_seconds=0.07))  # fmt: skip
    assert src.kinds["short"] == [0.0, 1.0]  # wrong this time
    assert src.kinds["long"][0] == pytest.approx(0.95)  # older evidence fades
    # With every token of the round known, the whole guess is judged: 3 right, then a miss.
    lookup.guess_kind = "long"
    strat.observe(strat.propose([1, 2, 3], 4, SamplingParams(), np.random.default_rng(0)),
                  RoundOutcome(drafted=4, accepted=4, target_tokens=[5, 5, 5, 6, 9], pass_tokens=5, pass_seconds=cost[4],
                               draft_seconds=0.07))  # fmt: skip
    assert src.kinds["long"] == pytest.approx([0.95 * 0.95 + 3, 1.0])
    assert "ngram: acceptance estimate" in strat.describe()[1] and "(by kind of match: long 0." in strat.describe()[1]


def test_shadow_evidence_judges_as_many_positions_as_the_target_produced():
    assert shadow_evidence([4, 5, 6], [4, 5, 6, 7, 8]) == (3, 3)  # right all through the guess
    assert shadow_evidence([4, 5, 6, 7], [4, 5]) == (2, 2)  # right as far as the round shows
    assert shadow_evidence([4, 9, 6], [4, 5, 6]) == (2, 1)  # one right, then a miss
    assert shadow_evidence([9], [4, 5]) == (1, 0)
