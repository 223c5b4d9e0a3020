"""Prompt-lookup drafting: continue the context the way it continued last time.

If the last k tokens of the context also occur earlier, the tokens that followed
that earlier occurrence are a free guess at what comes next (Saxena 2023,
"prompt lookup decoding"; llama.cpp's lookup examples). It pays on text that
quotes or edits its prompt, on code, and on outputs that repeat themselves.

The lookup is a pure numpy function so it can be tested without a model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..sampling import SamplingParams
from .base import DrafterBase, Proposal


def longest_match(ctx: np.ndarray, max_ngram: int = 4, min_ngram: int = 1) -> tuple[int, int]:
    """Find the longest suffix of `ctx` (up to max_ngram tokens) that occurred earlier.

    Returns (c, k): the suffix of length k also ends at position c - 1, so
    ctx[c] is the token that followed it there; among occurrences of the
    longest suffix, the most recent one (largest c) wins. Occurrences may
    overlap the suffix itself (in "x x x" the 2-gram "x x" occurs at 0..1).
    (-1, 0) when no suffix of at least min_ngram tokens occurred before.

    Cost: one vectorised comparison over the context, then each longer n-gram
    only filters the surviving candidates, so a call stays O(len(ctx)).
    """
    n = len(ctx)
    min_ngram = max(min_ngram, 1)
    if n < 2 or max_ngram < min_ngram:
        return -1, 0
    last = n - 1
    # ends: positions e < last where an occurrence of the current k-gram ends
    ends = np.flatnonzero(ctx[:last] == ctx[last])
    best = (-1, 0)
    for k in range(1, min(max_ngram, n - 1) + 1):
        if k > 1:
            ends = ends[ends >= k - 1]
            ends = ends[ctx[ends - (k - 1)] == ctx[last - (k - 1)]]
        if ends.size == 0:
            break
        if k >= min_ngram:
            best = (int(ends[-1]) + 1, k)
    return best


def ngram_lookup(ctx: np.ndarray, n_draft: int, max_ngram: int = 4, min_ngram: int = 1) -> np.ndarray:
    """The n_draft tokens that followed the most recent earlier occurrence of the
    longest matching suffix; an empty array when nothing matched.

    When the continuation runs into the end of the context (the match is less than
    n_draft tokens back), the guess keeps repeating with the period d = len(ctx) - c:
    the prediction for position len(ctx) + i is the token at c + i, which for
    i >= d is itself the prediction i - d. So "a b a b" with a 2-gram match
    drafts "a b a b ..." instead of stopping short.
    """
    if n_draft <= 0:
        return np.empty(0, dtype=ctx.dtype)
    c, k = longest_match(ctx, max_ngram, min_ngram)
    if k == 0:
        return np.empty(0, dtype=ctx.dtype)
    return continuation(ctx, c, n_draft)


def continuation(ctx: np.ndarray, c: int, n: int) -> np.ndarray:
    """The n tokens predicted to follow ctx when ctx[c:] repeats what followed before."""
    return ctx[c + np.arange(n) % (len(ctx) - c)]


class NgramDrafter(DrafterBase):
    """Deterministic drafter over the prompt and the output so far (q = point masses).

    It is consulted every round, also when it ends up drafting nothing, so a round
    must cost next to nothing: rather than searching the whole context each time
    (`longest_match`, the reference it is tested against), it keeps, for each n-gram
    length, a dict from every n-gram of the context to where it last ended, and adds
    only the n-grams that the tokens appended since the last call complete.
    """

    name = "ngram"
    # Tokens compared to decide that the new context extends the indexed one.
    # A stale index could only cost acceptance, never correctness (the target
    # verifies every draft), so a short check is enough.
    _CHECK = 16

    def __init__(self, max_ngram: int = 4, min_ngram: int = 1):
        if min_ngram < 1 or max_ngram < min_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}..{max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        # length of the n-gram behind the last proposal (0 = no match), for the stats
        self.last_ngram = 0
        self._seen: list[int] = []  # the context the index was built from
        # _ends[n][gram] = the last position e < len(_seen) - 1 where the n-gram `gram` ends
        self._ends: dict[int, dict[tuple, int]] = {n: {} for n in range(min_ngram, max_ngram + 1)}

    def propose(
        self, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator
    ) -> Proposal:
        self.last_ngram = 0
        if n <= 0:
            return Proposal()
        self._index(context)
        size = len(context)
        for k in range(min(self.max_ngram, size - 1), self.min_ngram - 1, -1):
            e = self._ends[k].get(tuple(context[size - k :]))
            if e is not None:
                self.last_ngram = k
                c, period = e + 1, size - (e + 1)
                return Proposal(tokens=[int(context[c + i % period]) for i in range(n)])
        return Proposal(stopped="no-match")

    @property
    def guess_kind(self) -> str | None:
        """What kind of guess the last proposal was: "long" (a match of max_ngram tokens), "short", None (no match).

        A guess behind a long match is right far more often (on the bench suite's outputs the
        first token was right 0.90-0.93 of the time after a 4-token match, 0.52-0.74 after a 2-
        or 3-token one), so `auto` weighs a guess by its kind when it decides which drafter goes
        first (strategy.py).
        """
        if self.last_ngram == 0:
            return None
        return "long" if self.last_ngram >= self.max_ngram else "short"

    def reset(self) -> None:
        self.last_ngram = 0
        self._seen = []
        for d in self._ends.values():
            d.clear()

    def _index(self, context: Sequence[int]) -> None:
        """Bring the index up to `context`: the n-grams ending before its last token."""
        size, m = len(context), len(self._seen)
        lo = max(0, m - self._CHECK)
        if not (0 < m <= size and list(context[lo:m]) == self._seen[lo:m]):
            self.reset()  # not an extension of what was indexed: start over
            m = 0
        # n-grams ending at e = m - 1 .. size - 2 are new (the old last token now has a successor)
        for e in range(max(m - 1, 0), size - 1):
            for k, ends in self._ends.items():
                if e >= k - 1:
                    ends[tuple(context[e - k + 1 : e + 1])] = e
        self._seen.extend(int(t) for t in context[m:size])
