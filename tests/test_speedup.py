"""The speedup model (spec_cli/speedup.py) against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spec_cli import speedup


@pytest.mark.parametrize(
    "a, g, expected",
    [
        (0.5, 3, 1.875),  # 1 + .5 + .25 + .125
        (0.8, 4, 3.3616),  # (1 - .8^5) / .2 = (1 - .32768) / .2
        (0.0, 5, 1.0),  # every draft rejected: only the target's own token
        (1.0, 5, 6.0),  # every draft accepted: g + 1
        (0.9, 0, 1.0),  # no drafts
    ],
)
def test_expected_tokens_per_pass(a, g, expected):
    assert speedup.expected_tokens_per_pass(a, g) == pytest.approx(expected)


def test_expected_tokens_per_pass_is_continuous_at_one():
    assert speedup.expected_tokens_per_pass(1 - 1e-9, 4) == pytest.approx(5.0, rel=1e-6)


@pytest.mark.parametrize("a, g", [(-0.1, 2), (1.1, 2), (0.5, -1)])
def test_expected_tokens_per_pass_rejects_bad_input(a, g):
    with pytest.raises(ValueError):
        speedup.expected_tokens_per_pass(a, g)


def test_predicted_speedup_hand_computed():
    # a = .5, g = 3: 1.875 tokens per pass. Cost: 3 draft steps of 2 ms + one 4-token pass of 20 ms.
    # Target alone: 10 ms per token. 1.875 * 10 / (6 + 20) = 0.72115...
    curve = [10.0, 15.0, 18.0, 20.0, 22.0]
    assert speedup.predicted_speedup(0.5, 3, curve, 2.0) == pytest.approx(18.75 / 26)


def test_predicted_speedup_charges_the_draft_catch_up_after_a_full_acceptance():
    # As above, plus: with probability a^3 = 1/8 the round starts with a 2-token draft pass
    # of 3.5 ms instead of a 2 ms step, so it costs 1.5 / 8 = 0.1875 ms more on average.
    curve = [10.0, 15.0, 18.0, 20.0, 22.0]
    assert speedup.predicted_speedup(0.5, 3, curve, 2.0, 3.5) == pytest.approx(18.75 / 26.1875)
    # g = 1, a = 0.74, costs of this project's CPU: the catch-up is what took 0.67x to 0.58x
    cpu = [17.4, 29.0]
    plain = speedup.predicted_speedup(0.74, 1, cpu, 16.0)
    assert plain == pytest.approx(1.74 * 17.4 / 45.0)
    assert speedup.predicted_speedup(0.74, 1, cpu, 16.0, 27.0) == pytest.approx(1.74 * 17.4 / (45.0 + 0.74 * 11.0))
    assert speedup.predicted_speedup(0.74, 1, cpu, 16.0, float("nan")) == plain  # not measured: left out
    assert speedup.best_predicted(0.74, cpu, 16.0, 27.0) == (1, pytest.approx(1.74 * 17.4 / (45.0 + 0.74 * 11.0)))


def test_predicted_speedup_flat_curve_free_draft_is_tokens_per_pass():
    # Leviathan's idealized case: verification as cheap as one token, draft free.
    curve = [10.0] * 9
    for g in (1, 4, 8):
        assert speedup.predicted_speedup(0.7, g, curve, 0.0) == pytest.approx(speedup.expected_tokens_per_pass(0.7, g))


def test_predicted_speedup_with_draft_cost_matches_paper_formula():
    # Flat curve, draft costs c times a target step: (1 - a^(g+1)) / ((1 - a)(g c + 1)), Leviathan et al. Thm 3.8.
    a, g, c = 0.8, 4, 0.05
    want = (1 - a ** (g + 1)) / ((1 - a) * (g * c + 1))
    assert speedup.predicted_speedup(a, g, [20.0] * 6, c * 20.0) == pytest.approx(want)


def test_predicted_speedup_needs_the_curve_to_cover_the_pass():
    with pytest.raises(ValueError, match="draft length 4"):
        speedup.predicted_speedup(0.5, 4, [10.0, 12.0, 13.0, 14.0], 1.0)
    assert speedup.predicted_speedup(0.5, 0, [10.0], 1.0) == 1.0


def test_acceptance_from_hist():
    # g = 3; rounds accepting 0,0,1,3,3,3 drafts: 10 accepted, 3 rounds ended by a rejection.
    assert speedup.acceptance_from_hist([2, 1, 0, 3], 3) == pytest.approx(10 / 13)
    assert speedup.acceptance_from_hist([0, 0, 0, 4], 3) == 1.0
    assert speedup.acceptance_from_hist([5, 0, 0, 0], 3) == 0.0
    assert speedup.acceptance_from_hist([0, 0, 0, 0], 3) is None
    assert speedup.acceptance_from_hist([], 3) is None
    with pytest.raises(ValueError):
        speedup.acceptance_from_hist([1, 1, 1], 1)


def test_acceptance_from_hist_recovers_a_simulated_rate():
    rng = np.random.default_rng(0)
    a, g = 0.7, 5
    hist = np.zeros(g + 1, dtype=int)
    for _ in range(20000):
        k = 0
        while k < g and rng.random() < a:
            k += 1
        hist[k] += 1
    assert speedup.acceptance_from_hist(hist, g) == pytest.approx(a, abs=0.01)
    # accepted / drafted is a different, smaller quantity
    accepted = (np.arange(g + 1) * hist).sum()
    assert accepted / (g * hist.sum()) < a - 0.1


def test_acceptance_length_probs():
    p = speedup.acceptance_length_probs(0.5, 3)
    assert p == pytest.approx([0.5, 0.25, 0.125, 0.125])
    assert (np.arange(4) * p).sum() + 1 == pytest.approx(speedup.expected_tokens_per_pass(0.5, 3))


def test_best_predicted_follows_the_steps_of_the_curve():
    # Passes of up to 4 tokens cost the same, then the price doubles: with good acceptance the best
    # draft length is 3 (a 4-token pass), not the longest.
    curve = [10.0, 10.0, 10.0, 10.0, 20.0, 20.0, 20.0, 20.0]
    g, s = speedup.best_predicted(0.9, curve, 0.5)
    assert g == 3
    assert s == pytest.approx(speedup.expected_tokens_per_pass(0.9, 3) * 10 / (1.5 + 10))


def test_median_ratio_is_per_prompt():
    num = {"a": [2.0, 4.0, 3.0], "b": [1.0], "only-num": [9.0]}
    den = {"a": [1.0, 1.0, 2.0], "b": [2.0], "zero": [0.0]}
    # a: 3 / 1 = 3, b: 1 / 2 = .5 -> median 1.75; prompts on one side only are ignored
    assert speedup.median_ratio(num, den) == pytest.approx(1.75)
    assert math.isnan(speedup.median_ratio({}, den))


def test_median_ignores_missing_values():
    assert speedup.median([3.0, None, 1.0, float("nan"), 2.0]) == 2.0
    assert math.isnan(speedup.median([]))


def test_recommend_picks_the_best_measured_length():
    r = speedup.recommend({1: 1.10, 2: 1.30, 3: 1.30, 4: 1.2})
    assert r.draft_len == 2  # a tie goes to the shorter draft
    assert r.speedup == pytest.approx(1.30)
    assert "2" in r.message


def test_recommend_says_when_speculation_does_not_pay():
    r = speedup.recommend({1: 0.7, 2: 0.8, 4: 0.6})
    assert r.draft_len is None
    assert r.speedup == pytest.approx(0.8)
    assert "does not pay" in r.message
    # a gain within the noise threshold is not worth a second model either
    assert speedup.recommend({2: speedup.MIN_WORTHWHILE_SPEEDUP - 0.01}).draft_len is None
    assert speedup.recommend({}).draft_len is None
