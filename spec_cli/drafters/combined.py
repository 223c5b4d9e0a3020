"""Prompt lookup first, another drafter when the lookup finds nothing.

An n-gram match costs microseconds and, where the text repeats, is accepted
often; a draft model costs a forward pass per token. So the model is asked only
in rounds where the lookup has no match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..sampling import SamplingParams
from .base import Drafter, DrafterBase, Proposal


class CombinedDrafter(DrafterBase):
    """Asks `first`; when it proposes no token, asks `fallback`.

    Each proposal comes whole from one drafter, so its q (None for the lookup,
    the draft model's distributions when sampling) matches its tokens.
    `last_source` names the drafter behind the last proposal, for the stats and
    for anything that keeps acceptance per source.
    """

    def __init__(self, first: Drafter, fallback: Drafter):
        self.first = first
        self.fallback = fallback
        self.name = f"{first.name}+{fallback.name}"
        self.model = fallback.model if fallback.model is not None else first.model
        self.last_source: str | None = None

    def propose(self, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        self.last_source = None
        if n <= 0:
            return Proposal()
        prop = self.first.propose(context, n, params, rng)
        if prop.tokens:
            self.last_source = self.first.name
            return prop
        prop = self.fallback.propose(context, n, params, rng)
        self.last_source = self.fallback.name if prop.tokens else None
        return prop

    def prepare(self, tokens: Sequence[int]) -> int | None:
        first = self.first.prepare(tokens)
        fallback = self.fallback.prepare(tokens)
        return fallback if fallback is not None else first  # the last draft model evaluation, as it happened

    def reset(self) -> None:
        self.first.reset()
        self.fallback.reset()
        self.last_source = None
