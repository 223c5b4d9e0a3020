"""Logits to probability distributions, and seeded sampling. numpy only.

Target and draft logits go through the same `shape` so that p and q are
comparable in the acceptance rule. A distribution is kept sparse (token ids
plus probabilities, ids ascending) because top-k usually leaves a few dozen
tokens out of a vocabulary that can hold 262,144.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 40  # 0 keeps the whole vocabulary
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def check(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0 (0 = no limit), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")


class Dist:
    """A probability distribution over token ids: `ids` ascending, `probs` summing to 1."""

    __slots__ = ("ids", "probs", "_cdf")

    def __init__(self, ids: np.ndarray, probs: np.ndarray):
        self.ids = ids
        self.probs = probs
        self._cdf: np.ndarray | None = None

    @classmethod
    def point(cls, token: int) -> Dist:
        return cls(np.array([token], dtype=np.int64), np.array([1.0]))

    def prob(self, token: int) -> float:
        i = int(np.searchsorted(self.ids, token))
        if i < len(self.ids) and self.ids[i] == token:
            return float(self.probs[i])
        return 0.0

    def probs_at(self, tokens: np.ndarray) -> np.ndarray:
        """Probabilities of many tokens at once (0 outside the support)."""
        idx = np.searchsorted(self.ids, tokens)
        idx_clipped = np.minimum(idx, len(self.ids) - 1)
        hit = self.ids[idx_clipped] == tokens
        return np.where(hit, self.probs[idx_clipped], 0.0)

    def sample(self, rng: np.random.Generator) -> int:
        cdf = self._cdf
        if cdf is None:
            cdf = self._cdf = self.probs.cumsum()
        return _draw(self.ids, cdf, rng)

    def argmax(self) -> int:
        return int(self.ids[int(np.argmax(self.probs))])

    def dense(self, n_vocab: int) -> np.ndarray:
        out = np.zeros(n_vocab)
        out[self.ids] = self.probs
        return out


# top_k_of's threshold: the SAMPLE_RANK-th highest of every SAMPLE_STRIDE-th logit.
SAMPLE_STRIDE = 97
SAMPLE_RANK = 4


def top_k_of(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest logits of a row as (token ids, logits), in no particular order; k = 0: all.

    Every token at or above a threshold beats every token below it, so when at least k
    tokens reach one, the k highest are among them: one comparison pass over the row, then
    a partition of the few that passed. A partition of a whole 262,144-token row costs
    about a millisecond. The threshold only decides how few pass; the result is exactly the
    row's top k either way.

    The threshold comes from a sparse sample: the 4th highest of every 97th logit. At
    least 4 tokens reach it, about 4 x 97 are expected to, and fewer than k = 40 do only
    when 4 of the sample's ~2,700 tokens sit among the row's 39 highest. Where the sample
    misses (a small or odd row, ties at -inf, a large k), the threshold is the best logit
    minus a margin instead, which costs one more pass (a max) than the sample does.
    """
    n = logits.shape[-1]
    if not 0 < k < n:
        return np.arange(n), logits
    # Array methods rather than np.* functions, and as few calls as will do: right after a
    # model pass nothing here is in the caches, and every call costs ~5-10 µs more than warm.
    rank = max(SAMPLE_RANK, -(-4 * k // SAMPLE_STRIDE))  # expect ~4k tokens at or above it
    if n >= 64 * SAMPLE_STRIDE and k <= n // 64:
        sample = logits[::SAMPLE_STRIDE].copy()
        at = len(sample) - rank
        sample.partition(at)
        near = (logits >= sample[at]).nonzero()[0]
        if k <= len(near) <= n // 16:
            return _highest(logits, near, k)
    best = logits.max()
    for margin in (8.0, 16.0):
        near = (logits > best - margin).nonzero()[0]
        if len(near) >= k:
            return _highest(logits, near, k)
    ids = logits.argpartition(n - k)[n - k :]
    return ids, logits[ids]


def _highest(logits: np.ndarray, near: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest of logits[near] (len(near) >= k), as (ids, logits)."""
    vals = logits[near]
    m = len(near)
    if m > k:
        keep = vals.argpartition(m - k)[m - k :]
        near, vals = near[keep], vals[keep]
    return near, vals


def shape(logits: np.ndarray, params: SamplingParams) -> Dist:
    """Temperature, then top-k, then top-p, as llama.cpp orders them.

    top-k is applied with argpartition before any exponential, so a big
    vocabulary costs one O(n) pass, not a softmax over every token.
    """
    if params.greedy:
        return Dist.point(int(np.argmax(logits)))
    return shape_top_k(*top_k_of(logits, params.top_k), params)


def shape_top_k(ids: np.ndarray, logits: np.ndarray, params: SamplingParams) -> Dist:
    """`shape` of a row known only by its top-k candidates (ids and their logits).

    A temperature does not change which tokens are the k highest, so top-k first and
    temperature second gives the same distribution as the order `shape` names; top-p
    then cuts inside the k. This is what makes backend top-k (only k candidates leave
    llama.cpp) lossless.
    """
    ids, probs = _weights(ids, logits, params.temperature)
    probs /= probs.sum()
    if params.top_p < 1.0:
        by_prob = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[by_prob])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = int(np.searchsorted(cum, params.top_p, side="left")) + 1
        kept = np.sort(by_prob[:keep])
        ids, probs = ids[kept], probs[kept]
        probs = probs / probs.sum()
    return Dist(ids.astype(np.int64, copy=False), probs)


def sample_top_k(ids: np.ndarray, logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The token `shape_top_k(ids, logits, params).sample(rng)` draws, without building the Dist.

    A round with no draft to judge (plain decoding) needs one draw, not probabilities: the
    same ids ascending, the same cumulative weights (not normalized: the uniform is scaled
    by their total instead) and the same single uniform from rng, in half the numpy calls.
    top-p needs the normalized, sorted distribution and goes through shape_top_k.
    """
    if params.top_p < 1.0:
        return shape_top_k(ids, logits, params).sample(rng)
    ids, weights = _weights(ids, logits, params.temperature)
    return _draw(ids, weights.cumsum(), rng)


def _draw(ids: np.ndarray, cdf: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw of one id; cdf is the running sum of the ids' weights, normalized or not."""
    i = int(cdf.searchsorted(rng.random() * cdf[-1], side="right"))
    return int(ids[i if i < len(ids) else -1])


def _weights(ids: np.ndarray, logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The ids ascending, each with exp((z - max z) / temperature): probabilities before normalizing."""
    ids = np.asarray(ids)
    order = ids.argsort()  # the ids are distinct: any sort gives the same order
    z = np.asarray(logits)[order].astype(np.float64)
    z /= temperature
    z -= z.max()
    return ids[order], np.exp(z, out=z)


def residual(p: Dist, q: Dist) -> Dist:
    """normalize(max(p - q, 0)): where to sample after a draft token is rejected.

    Its support lies inside p's, so it is computed on p's ids. If p <= q
    everywhere (p == q) a rejection has probability zero; p itself is returned
    so a caller never divides by zero.
    """
    if len(q.ids) == 0:
        return p
    diff = np.maximum(p.probs - q.probs_at(p.ids), 0.0)
    total = diff.sum()
    if total <= 1e-12:
        return p
    keep = diff > 0
    return Dist(p.ids[keep], diff[keep] / total)


def without(q: Dist, token: int) -> Dist:
    """q with `token` taken out and the rest renormalized: what a draw without replacement draws from next.

    Tokens of probability 0 are dropped too; when nothing with mass is left, the result has no ids.
    """
    keep = (q.ids != token) & (q.probs > 0)
    if keep.all():
        return q
    rest = q.probs[keep]
    return Dist(q.ids[keep], rest / rest.sum() if len(rest) else rest)
