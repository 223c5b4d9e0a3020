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
