"""The combined drafter: n-gram lookup first, a scripted fake drafter as the fallback."""

from __future__ import annotations

import numpy as np

from spec_cli.drafters.base import DrafterBase, Proposal
from spec_cli.drafters.combined import CombinedDrafter
from spec_cli.drafters.ngram import NgramDrafter
from spec_cli.sampling import Dist, SamplingParams

P = SamplingParams()
RNG = np.random.default_rng(0)


class ScriptedDrafter(DrafterBase):
    """Returns queued proposals in order and records every call."""

    name = "fake"

    def __init__(self):
        self.queue: list[Proposal] = []
        self.history: list[tuple[list[int], int]] = []
        self.resets = 0

    def enqueue(self, tokens, q=None, stopped=None):
        self.queue.append(Proposal(tokens=list(tokens), q=q, stopped=stopped))

    def propose(self, context, n, params, rng):
        self.history.append((list(context), n))
        return self.queue.pop(0)

    def reset(self):
        self.resets += 1


def test_lookup_match_does_not_call_the_fallback():
    fake = ScriptedDrafter()
    d = CombinedDrafter(NgramDrafter(), fake)
    assert d.name == "ngram+fake"
    prop = d.propose([3, 4, 5, 6, 3, 4], 2, P, RNG)
    assert prop.tokens == [5, 6] and prop.q is None
    assert d.last_source == "ngram"
    assert fake.history == []


def test_no_match_falls_back_with_the_same_request():
    fake = ScriptedDrafter()
    q = [Dist.point(8), Dist.point(9)]
    fake.enqueue([8, 9], q=q)
    d = CombinedDrafter(NgramDrafter(), fake)
    prop = d.propose([1, 2, 3], 2, P, RNG)
    assert prop.tokens == [8, 9]
    assert prop.q is q  # the fallback's distributions travel with its tokens
    assert fake.history == [([1, 2, 3], 2)]
    assert d.last_source == "fake"


def test_both_empty():
    fake = ScriptedDrafter()
    fake.enqueue([], stopped="confidence")
    d = CombinedDrafter(NgramDrafter(), fake)
    prop = d.propose([1, 2, 3], 4, P, RNG)
    assert prop.tokens == [] and prop.stopped == "confidence"
    assert d.last_source is None


def test_alternates_round_by_round():
    fake = ScriptedDrafter()
    fake.enqueue([7])
    d = CombinedDrafter(NgramDrafter(min_ngram=2), fake)
    ctx = [1, 2, 3]
    assert d.propose(ctx, 1, P, RNG).tokens == [7] and d.last_source == "fake"
    ctx += [1, 2]
    assert d.propose(ctx, 1, P, RNG).tokens == [3] and d.last_source == "ngram"
    assert len(fake.history) == 1


def test_zero_length_and_reset():
    fake = ScriptedDrafter()
    d = CombinedDrafter(NgramDrafter(), fake)
    assert d.propose([1, 1], 0, P, RNG).tokens == []
    assert fake.history == []
    d.reset()
    assert fake.resets == 1
