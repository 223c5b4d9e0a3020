"""The acceptance rule: which drafted tokens the target keeps. numpy only.

Both functions take the draft tokens d_1..d_g and what the target said at the
g + 1 positions it evaluated ([last token] + drafts), and return
(number of drafts accepted, the token the target adds after them). The added
token is the correction at the first rejection, or the bonus token when every
draft was accepted, so each verification pass yields at least one token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .sampling import Dist, residual


def accept_greedy(drafts: Sequence[int], target_argmax: Sequence[int]) -> tuple[int, int]:
    """Greedy decoding: keep drafts while they equal the target's argmax."""
    assert len(target_argmax) == len(drafts) + 1
    for i, d in enumerate(drafts):
        if int(target_argmax[i]) != int(d):
            return i, int(target_argmax[i])
    return len(drafts), int(target_argmax[len(drafts)])


def accept_sampled(
    drafts: Sequence[int],
    q: Sequence[Dist],
    p: Sequence[Dist],
    rng: np.random.Generator,
) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023, Chen et al. 2023).

    Draft token x, drawn from q, is kept with probability min(1, p(x) / q(x));
    at the first rejection the replacement is drawn from normalize(max(p - q, 0)).
    The emitted tokens are then distributed exactly as sampling from p alone.
    A deterministic drafter (n-gram lookup, greedy draft) passes q = point mass.
    """
    assert len(q) == len(drafts) and len(p) == len(drafts) + 1
    for i, x in enumerate(drafts):
        px = p[i].prob(x)
        qx = q[i].prob(x)
        if qx > 0 and rng.random() * qx < px:  # u < p/q without dividing
            continue
        return i, residual(p[i], q[i]).sample(rng)
    return len(drafts), p[len(drafts)].sample(rng)


# --- BiLD's rollback: an opt-in, lossy relaxation of the two rules above ------------------------


def rollback_distance(p: Dist, token: int) -> float:
    """BiLD's distance between the draft's and the target's prediction at one position.

    Kim et al. (2023, "Speculative Decoding with Big Little Decoder") measure it as the
    cross-entropy between the small model's hard label and the large model's soft label:
    d = -log p(x), the target's surprise at the drafted token x. Only the token is read from
    the draft, so a drafter without probabilities (the n-gram lookup, a greedy draft) is
    judged like any other: its q is the point mass BiLD's hard label is anyway.
    0 when the target is certain of x; infinite where p gives x nothing (outside top-k).
    """
    px = p.prob(token)
    return float(-np.log(px)) if px > 0 else float("inf")


def token_nll(rows: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """-log softmax(row)[token] for each row and token: rollback_distance on raw logit rows.

    Greedy verification reads no distribution (its p is a point mass on the argmax, which would
    put every rejected token at an infinite distance), so under greedy decoding the distance is
    taken on the target's own softmax at temperature 1.
    """
    rows = np.asarray(rows[: len(tokens)], dtype=np.float64)
    top = rows.max(axis=1)
    lse = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
    return lse - rows[np.arange(len(tokens)), np.asarray(tokens, dtype=np.int64)]


def accept_greedy_rollback(
    drafts: Sequence[int], target_argmax: Sequence[int], distances: Sequence[float], threshold: float
) -> tuple[int, int]:
    """accept_greedy, but a draft the target would reject is kept while its distance <= threshold.

    The round rolls back at the first draft that differs from the target's argmax AND lies
    further than `threshold` from it (distances[i] = rollback_distance of drafts[i]); that draft
    is replaced by the argmax, as in accept_greedy. A draft equal to the argmax is always kept,
    so the rule never keeps fewer drafts than the lossless one. Threshold 0 is accept_greedy
    exactly: a token that is not the argmax has p < 1, so a distance > 0.
    """
    assert len(target_argmax) == len(drafts) + 1 and len(distances) >= len(drafts)
    for i, d in enumerate(drafts):
        if int(target_argmax[i]) != int(d) and not distances[i] <= threshold:
            return i, int(target_argmax[i])
    return len(drafts), int(target_argmax[len(drafts)])


def accept_sampled_rollback(
    drafts: Sequence[int],
    q: Sequence[Dist],
    p: Sequence[Dist],
    rng: np.random.Generator,
    threshold: float,
) -> tuple[int, int]:
    """accept_sampled, but a draft the rejection test refuses is kept while its distance <= threshold.

    Each draft x still takes the test u < p(x)/q(x) with one uniform from rng; a refused x is
    kept anyway when rollback_distance(p, x) <= threshold, and the round rolls back at the
    first refused x further than that, drawing the replacement from the residual as
    accept_sampled does. The output is then no longer distributed as p alone. Threshold 0 is
    accept_sampled exactly, uniform for uniform: a refused x has p(x) < 1, so a distance > 0.
    """
    assert len(q) == len(drafts) and len(p) == len(drafts) + 1
    for i, x in enumerate(drafts):
        px = p[i].prob(x)
        qx = q[i].prob(x)
        if qx > 0 and rng.random() * qx < px:
            continue
        if rollback_distance(p[i], x) <= threshold:
            continue
        return i, residual(p[i], q[i]).sample(rng)
    return len(drafts), p[len(drafts)].sample(rng)
