"""What speculative decoding should gain, from acceptance and the machine's cost curve. numpy only.

Used by `spec bench` to put a prediction beside each measurement and to recommend a draft length.

Leviathan et al. (2023), section 3: if each drafted token is accepted independently
with probability a, a round that drafts g tokens yields on average
(1 - a^(g+1)) / (1 - a) tokens, counting the token the target adds itself. The round
costs g draft steps plus one target pass over g + 1 positions; the paper assumes that
pass costs the same as a one-token pass, which is close to true on a GPU with a big
target and far from true on a CPU (see docs/machine-notes.md). So the cost of the target pass is
read from a measured curve, `target_ms[k - 1]` = one llama_decode of k tokens, and

    speedup(g) = tokens_per_pass(a, g) * target_ms[0] / (g * draft_ms + target_ms[g])

where target_ms[0] is also what one token costs without speculation.

One refinement: the draft model keeps its KV cache between rounds, so each round starts by evaluating what the draft has not
seen. After a rejection that is one token (the target's correction), but after a round
that accepted all g drafts it is two (the last draft, which the draft sampled but never
evaluated, and the target's bonus token), and a two-token pass costs more than a
one-token one (1.7x on the CPU of docs/machine-notes.md). That happens with probability a^g, so the
round costs a^g * (draft2_ms - draft_ms) more on average. At g = 1 and a = 0.74 that is
+8 ms on a 46 ms round; left out, the prediction is 13 % too high (docs/benchmark-log.md).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# The formula itself is shared with the adaptive draft-length controller.
from .adaptive import expected_tokens, predicted_speedups

# A measured gain smaller than this is within what a shared laptop's noise can produce
# between interleaved runs, so it is not worth the second model's memory.
MIN_WORTHWHILE_SPEEDUP = 1.05


def expected_tokens_per_pass(a: float, g: int) -> float:
    """Mean tokens per target pass for per-token acceptance probability a and draft length g."""
    if g < 0:
        raise ValueError(f"draft length must be >= 0, got {g}")
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"acceptance probability must be in [0, 1], got {a}")
    return float(expected_tokens(a, g)[g])


def acceptance_from_hist(hist: Sequence[int], g: int) -> float | None:
    """Per-token acceptance probability that best explains an acceptance-length histogram.

    hist[k] counts rounds that accepted exactly k of g drafted tokens. Under the
    independence model each round is a run of Bernoulli trials that stops at the first
    rejection or after g successes, so the maximum-likelihood estimate is
    accepted / (accepted + rejections), a round with fewer than g accepted holding one
    rejection. This differs from accepted / drafted, which undercounts a because the
    positions after a rejection are never tried. None when no round drafted anything.
    """
    h = np.asarray(hist, dtype=np.int64)
    if h.size == 0 or h.sum() == 0:
        return None
    if h.size > g + 1:
        raise ValueError(f"histogram has {h.size} bins but at most {g} tokens can be accepted")
    accepted = int((np.arange(h.size) * h).sum())
    rejections = int(h[:g].sum())
    if accepted + rejections == 0:
        return 0.0
    return accepted / (accepted + rejections)


def acceptance_length_probs(a: float, g: int) -> np.ndarray:
    """Probability that a round accepts exactly k = 0..g drafts under the independence model."""
    k = np.arange(g + 1)
    p = a**k * (1.0 - a)
    p[g] = a**g
    return p


def predicted_speedup(a: float, g: int, target_ms: Sequence[float], draft_ms: float, draft2_ms: float | None = None) -> float:
    """Expected speedup over target-only decoding for draft length g (see the module docstring).

    draft2_ms, when given (and finite), is one two-token draft pass: the catch-up after a
    round that accepted every draft.
    """
    curve = np.asarray(target_ms, dtype=np.float64)
    if g < 0:
        raise ValueError(f"draft length must be >= 0, got {g}")
    if g + 1 > curve.size:
        raise ValueError(f"the cost curve covers passes of up to {curve.size} tokens; draft length {g} needs {g + 1}")
    if np.any(curve[: g + 1] <= 0) or draft_ms < 0:
        raise ValueError("costs must be positive")
    catch_up = 0.0 if draft2_ms is None or not np.isfinite(draft2_ms) else max(0.0, draft2_ms - draft_ms)
    return float(predicted_speedups(a, curve, draft_ms, g, catch_up=catch_up)[g])


def best_predicted(a: float, target_ms: Sequence[float], draft_ms: float, draft2_ms: float | None = None) -> tuple[int, float]:
    """The draft length (1..len(curve)-1) with the highest predicted speedup, and that speedup."""
    if len(target_ms) < 2:
        raise ValueError("the cost curve needs at least two points")
    scores = [predicted_speedup(a, g, target_ms, draft_ms, draft2_ms) for g in range(1, len(target_ms))]
    i = int(np.argmax(scores))
    return i + 1, float(scores[i])


def median(values: Sequence[float]) -> float:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    return float(np.median(v)) if v.size else float("nan")


def median_ratio(num: Mapping[Hashable, Sequence[float]], den: Mapping[Hashable, Sequence[float]]) -> float:
    """Median over keys of (median of num[key]) / (median of den[key]).

    A key is what pairs a measurement with its baseline: a prompt, or a prompt and a
    repeat (`spec bench` uses the latter, the two runs being back to back in time).
    Keys missing from either side, or with no positive baseline, are left out. Taking
    the ratio per prompt first keeps one long, fast prompt from dominating the figure
    the way a ratio of pooled rates would, and the median keeps one run that a
    background program slowed down from moving it.
    """
    ratios = []
    for key, xs in num.items():
        ys = den.get(key)
        if not ys:
            continue
        top, bottom = median(xs), median(ys)
        if np.isfinite(top) and np.isfinite(bottom) and bottom > 0:
            ratios.append(top / bottom)
    return median(ratios)


@dataclass
class Recommendation:
    draft_len: int | None  # None: speculation does not pay
    speedup: float  # measured speedup at draft_len (or the best one seen when None)
    message: str


def recommend(measured: Mapping[int, float], min_speedup: float = MIN_WORTHWHILE_SPEEDUP) -> Recommendation:
    """Pick the draft length with the best measured speedup, if it clears min_speedup."""
    finite = {g: s for g, s in measured.items() if g > 0 and s is not None and np.isfinite(s)}
    if not finite:
        return Recommendation(None, float("nan"), "no speculative configuration produced a measurement")
    g = max(finite, key=lambda k: (finite[k], -k))  # ties go to the shorter draft: less draft work
    s = finite[g]
    if s < min_speedup:
        return Recommendation(
            None,
            s,
            f"speculation does not pay on this machine with this pair: the best draft length ({g}) "
            f"runs at {s:.2f}x the target alone",
        )
    return Recommendation(g, s, f"use draft length {g}: {s:.2f}x the target alone")
