"""Prompt-lookup drafting: the pure lookup and the drafter around it. No model."""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.drafters.ngram import NgramDrafter
from spec_cli.sampling import SamplingParams

P = SamplingParams()
RNG = np.random.default_rng(0)


def lookup(tokens, n, max_ngram=4, min_ngram=1):
    """A fresh drafter's guess for `tokens`."""
    return NgramDrafter(max_ngram, min_ngram).propose(tokens, n, P, RNG).tokens


def brute_force(tokens, n, max_ngram, min_ngram):
    """Reference: try each suffix length from the longest, scan occurrences newest first,
    extend the continuation token by token (so it may run into its own predictions)."""
    L = len(tokens)
    for k in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        suffix = tokens[L - k :]
        for start in range(L - k - 1, -1, -1):
            if tokens[start : start + k] == suffix:
                ext = list(tokens)
                c = start + k
                for i in range(n):
                    ext.append(ext[c + i])
                return ext[L:]
    return []


def test_no_match():
    assert lookup([1, 2, 3, 4, 5], 4) == []
    assert lookup([1, 2, 3, 4, 5], 4, min_ngram=1) == []


def test_simple_match_continues_with_what_followed():
    # suffix [7, 8] occurred at 0..1, followed by 9, 10, 11
    assert lookup([7, 8, 9, 10, 11, 5, 7, 8], 3) == [9, 10, 11]


def test_most_recent_occurrence_wins():
    # [1, 2] occurs twice before the suffix: followed by 3 first, by 4 later
    ctx = [1, 2, 3, 9, 1, 2, 4, 9, 0, 1, 2]
    assert lookup(ctx, 1) == [4]


def test_longest_ngram_preferred_over_more_recent_shorter_one():
    # The 3-gram [5, 1, 2] matches only the old occurrence (followed by 3);
    # the 2-gram [1, 2] alone would pick the newer one (followed by 4).
    ctx = [5, 1, 2, 3, 0, 1, 2, 4, 0, 5, 1, 2]
    assert lookup(ctx, 1) == [3]
    # With the n-gram capped at 2 the most recent 2-gram wins instead.
    assert lookup(ctx, 1, max_ngram=2) == [4]


def test_min_ngram_rejects_short_matches():
    ctx = [1, 2, 3, 4, 9, 1]  # only the 1-gram [1] matches
    assert lookup(ctx, 2) == [2, 3]
    assert lookup(ctx, 2, min_ngram=2) == []


def test_proposal_capped_at_n():
    ctx = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    assert lookup(ctx, 3) == [3, 4, 5]
    assert lookup(ctx, 1) == [3]
    assert lookup(ctx, 0) == []


def test_overlap_repeats_a_single_token():
    # "x x x": the 2-gram [x, x] occurs at 0..1, overlapping the suffix at 1..2;
    # what follows it is the last token itself, then its own prediction, and so on.
    assert lookup([9, 9, 9], 5) == [9, 9, 9, 9, 9]


def test_overlap_continues_a_period():
    # [1, 2, 3] repeated: the continuation runs past the end of the context and
    # keeps the period 3 instead of stopping after the tokens that exist.
    assert lookup([0, 1, 2, 3, 1, 2, 3], 5) == [1, 2, 3, 1, 2]


def test_tiny_contexts():
    assert lookup([], 4) == []
    assert lookup([5], 4) == []
    assert lookup([5, 5], 3) == [5, 5, 5]
    assert lookup([5, 6], 3) == []


@pytest.mark.parametrize("seed", range(30))
def test_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    # a small alphabet makes long and overlapping matches common
    tokens = rng.integers(0, 3 + seed % 5, size=int(rng.integers(0, 40))).tolist()
    max_ngram = 1 + seed % 5
    min_ngram = 1 + seed % 2
    if min_ngram > max_ngram:
        min_ngram = max_ngram
    n = int(rng.integers(1, 9))
    assert lookup(tokens, n, max_ngram, min_ngram) == brute_force(tokens, n, max_ngram, min_ngram)


def test_drafter_protocol():
    d = NgramDrafter(max_ngram=3)
    assert d.name == "ngram"
    prop = d.propose([4, 5, 6, 7, 4, 5], 2, P, RNG)
    assert prop.tokens == [6, 7]
    assert prop.q is None and prop.stopped is None
    assert d.last_ngram == 2 and d.guess_kind == "short"  # a match shorter than max_ngram
    assert [q.argmax() for q in prop.q_dists()] == [6, 7]
    d.propose([4, 5, 6, 7, 4, 5, 6], 2, P, RNG)
    assert d.last_ngram == 3 and d.guess_kind == "long"

    prop = d.propose([1, 2, 3], 4, P, RNG)
    assert prop.tokens == [] and prop.stopped == "no-match"
    assert d.last_ngram == 0 and d.guess_kind is None

    assert d.propose([4, 5, 6, 7, 4, 5], 0, P, RNG).tokens == []


def test_drafter_follows_a_growing_then_edited_context():
    d = NgramDrafter()
    ctx = [1, 2, 3, 4, 5]
    assert d.propose(ctx, 2, P, RNG).tokens == []
    ctx += [1, 2]  # grown in place, as the loop does
    assert d.propose(ctx, 2, P, RNG).tokens == [3, 4]
    # Edited at the end (not an extension of what it saw): the cached array must not be reused.
    edited = [1, 2, 3, 4, 5, 9, 3]
    assert d.propose(edited, 2, P, RNG).tokens == [4, 5]
    # Shorter context (a chat regenerated from an earlier point).
    assert d.propose([8, 8], 2, P, RNG).tokens == [8, 8]
    d.reset()
    assert d.propose([6, 7, 6], 2, P, RNG).tokens == [7, 6]


def test_drafter_incremental_agrees_with_the_reference():
    rng = np.random.default_rng(1)
    full = rng.integers(0, 6, size=3000).tolist()
    d = NgramDrafter()
    ctx = full[:10]
    while len(ctx) < len(full):
        got = d.propose(ctx, 4, P, rng).tokens
        assert got == brute_force(ctx, 4, 4, 1)
        ctx.extend(full[len(ctx) : len(ctx) + int(rng.integers(1, 5))])


def test_bad_ngram_bounds():
    with pytest.raises(ValueError):
        NgramDrafter(max_ngram=2, min_ngram=3)
    with pytest.raises(ValueError):
        NgramDrafter(min_ngram=0)
