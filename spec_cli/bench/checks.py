"""The greedy check: speculation is lossless, so every greedy output must be the target alone's.

Batched evaluation is not bit-identical to one-token-at-a-time evaluation, so where the
target's top two logits nearly tie, a verification pass may pick the other one. An output
that parts from the target alone's is therefore replayed at the point where it parts: a
near-tie is allowed, any other difference is a MISMATCH and fails `spec bench`.

Under sampling nothing is compared (sampling_note says why).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..verify import token_nll
from .schedule import Run
from .settings import CONTROL, SPEC, TARGET, BenchSettings

# Where greedy outputs part, the two tokens' logits must come this close to the best one,
# in at least one of several ways of batching the same context, for the difference to
# count as a near-tie flipped by batched arithmetic rather than a bug (tie_gap_at).
TIE_TOLERANCE = 0.3
# Batch sizes tried for the last tokens of the context, besides plain decoding's replay.
TIE_BATCHES = (2, 3, 4, 5, 6, 8)


def check_outputs(target, prompts, tokenized, runs: list[Run]) -> None:
    """Greedy outputs must match spec's target-only decoding, or part where the target nearly ties.

    Every run that reports its tokens is checked (spec, and llama-cpp-python's Llama,
    which is fed the same token ids); llama.cpp's binaries print text only.
    """
    for i, p in enumerate(prompts):
        mine = [r for r in runs if r.prompt_id == p.id and r.tokens is not None and r.error is None]
        base = next((r for r in mine if r.engine == SPEC and r.mode == TARGET and r.drafter != CONTROL), None)
        if base is None:
            continue
        base.output_check = "baseline"
        gaps: dict[tuple, float] = {}
        for r in mine:
            if r is base:
                continue
            k = first_difference(base.tokens, r.tokens)
            if k is None:
                r.output_check = "same"
                continue
            pair = (base.tokens[k], r.tokens[k]) if k < min(len(base.tokens), len(r.tokens)) else (None, None)
            if (k, *pair) not in gaps:
                gaps[(k, *pair)] = tie_gap_at(target, tokenized[i], base.tokens[:k], *pair)
            r.tie_gap = gaps[(k, *pair)]
            r.output_check = "near-tie" if r.tie_gap <= TIE_TOLERANCE else "MISMATCH"
    for r in runs:
        if not r.output_check:
            r.output_check = "not-checked"


def tie_gap_at(target, prompt: Sequence[int], generated: Sequence[int], a: int | None = None, b: int | None = None) -> float:
    """How close the target comes to choosing token b instead of token a after prompt + generated.

    For each way of evaluating that context, the gap is how far the weaker of a and b
    sits below the best logit; the result is the smallest gap over: plain decoding's
    replay (the prompt in one batch, then one token at a time: what the target-only
    run saw) and the last 2..8 tokens evaluated in one batch, as a verification pass
    does. Batched and single-token arithmetic differ in the last bits, and through the KV
    cache the difference can grow to a tie in one batching and half a logit in another;
    a wrongly accepted token stays far below the best in every batching.
    Without a and b (one output is a prefix of the other), the top-two gap.
    """
    context = list(prompt) + list(generated)
    n = len(context)

    def gap(row: np.ndarray) -> float:
        if a is None or b is None:
            return top_two_gap(row)
        best = float(np.max(row))
        return max(best - float(row[a]), best - float(row[b]))

    target.reset()
    target.sync(list(prompt)[:-1], logits="none")
    for tok in context[len(prompt) - 1 : -1]:
        target.eval([tok], logits="none")
    gaps = [gap(target.eval([context[-1]], logits="last")[0])]
    jmax = min(max(TIE_BATCHES), n - 1)
    if jmax >= 2:
        for j in TIE_BATCHES:
            if j > jmax:
                continue
            target.truncate(n - 1 - jmax)
            target.eval(context[n - jmax - 1 : n - j], logits="none")  # the cache ends j tokens early
            gaps.append(gap(target.eval(context[n - j :], logits="all")[-1]))
    target.reset()
    return min(gaps)


def top_two_gap(row: np.ndarray) -> float:
    """Difference between the best and the second-best logit."""
    top = np.partition(np.asarray(row, dtype=np.float32), -2)[-2:]
    return float(top[1] - top[0])


def mean_logprob(target, prompt: Sequence[int], generated: Sequence[int]) -> float | None:
    """The target's own mean log-likelihood per token of `generated` after `prompt`, at temperature 1.

    What a lossy mode costs in quality: the target scores the text it was given, in one pass
    over prompt + generated, and the mean of log p(token | everything before it) is compared
    with that of the target alone's own text (the gap; exp(-gap) is the perplexity ratio).
    None for an empty text.
    """
    if not generated or not prompt:
        return None
    target.reset()
    target.sync(list(prompt)[:-1], logits="none")
    rows = target.eval([prompt[-1], *generated[:-1]], logits="all")
    target.reset()
    return float(-token_nll(rows, generated).mean())


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def sampling_note(settings: BenchSettings) -> str:
    sp = settings.sampling
    return (
        f"sampling (temp {sp.temperature:g}, top-k {sp.top_k}, top-p {sp.top_p:g}, base seed {settings.seed}): outputs are "
        "not compared with the target alone's, since equal text is not the test of losslessness under sampling; "
        "the distribution tests (tests/test_loop.py, tests/test_real_models.py) cover it"
    )
