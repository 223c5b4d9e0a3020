"""The drafter protocol: propose(context, n) -> up to n tokens, with their draft probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ..sampling import Dist, SamplingParams


@dataclass
class Proposal:
    tokens: list[int] = field(default_factory=list)
    # q[i] is the distribution tokens[i] was drawn from. None means the drafter is
    # deterministic (greedy draft, n-gram lookup): each q[i] is a point mass on tokens[i],
    # which the acceptance rule handles without loss.
    q: list[Dist] | None = None
    # why drafting stopped before n tokens, for the stats ("confidence", "no-match", ...)
    stopped: str | None = None
    # which drafter made it (set by the strategy; a combined drafter has several)
    source: str | None = None
    # None for a chain. For a token tree (see tokentree): parents[i] is the node that
    # tokens[i] follows, -1 for the root (the context's last token). Greedy only.
    parents: list[int] | None = None
    # What making it cost a drafter that runs a model: `steps` one-token draft passes
    # that took `step_seconds` (the per-token price of drafting), and `decode_seconds`
    # for all of its passes, including catching up on context it had not seen.
    steps: int = 0
    step_seconds: float = 0.0
    decode_seconds: float = 0.0
    # the part of decode_seconds that this round's drafting cost, for measured rates: all of
    # it but a catch-up on context skipped while the drafter was not used
    round_seconds: float = 0.0

    def q_dists(self) -> list[Dist]:
        return self.q if self.q is not None else [Dist.point(t) for t in self.tokens]


class Drafter(Protocol):
    name: str

    def propose(
        self, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator
    ) -> Proposal:
        """Propose up to n tokens that continue `context` (prompt and output so far)."""
        ...

    def reset(self) -> None:
        """Forget any state carried between calls (KV cache, statistics)."""
        ...


def prepare(drafter: object, tokens: Sequence[int]) -> int | None:
    """Let a drafter that keeps a cache evaluate the prompt before the first round, if it has one.

    Returns the number of tokens its draft model evaluated, None where it has none to prepare.
    """
    fn = getattr(drafter, "prepare", None)
    return fn(tokens) if fn is not None else None
