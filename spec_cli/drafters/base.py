"""The drafter protocol: propose(context, n) -> up to n tokens, with their draft probabilities.

Also what passes between a drafter and the loop each round: the Proposal, and the RoundOutcome
the target made of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..sampling import Dist, SamplingParams

if TYPE_CHECKING:
    from ..llama import Model


@dataclass
class Proposal:
    tokens: list[int] = field(default_factory=list)
    # q[i] is the distribution tokens[i] was drawn from (for a tree: the draft's at the
    # node's parent, before its earlier siblings were taken out). None means the drafter is
    # deterministic (greedy draft, n-gram lookup): each q[i] is a point mass on tokens[i],
    # which the acceptance rule handles without loss.
    q: list[Dist] | None = None
    # why drafting stopped before n tokens, for the stats ("confidence", "no-match", ...)
    stopped: str | None = None
    # which drafter made it (set by the strategy; a combined drafter has several)
    source: str | None = None
    # None for a chain. For a token tree (see tokentree): parents[i] is the node that
    # tokens[i] follows, -1 for the root (the context's last token).
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
    # drafted ahead, while the target verified the previous round (pipeline.py): its costs were
    # paid beside that pass
    ahead: bool = False

    def q_dists(self) -> list[Dist]:
        return self.q if self.q is not None else [Dist.point(t) for t in self.tokens]


@dataclass
class RoundOutcome:
    """What the target did with a round's proposal, as the loop tells the strategy and its drafter."""

    drafted: int
    accepted: int
    # every token the target put after the context this round: the accepted drafts, then its own
    target_tokens: list[int]
    pass_tokens: int  # rows in the verification batch
    pass_seconds: float
    draft_seconds: float  # wall time of the proposal, catch-up included
    path: list[int] | None = None  # for a token tree: the accepted nodes, from the root down


class Drafter(Protocol):
    """Everything a strategy (and through it the loop) may ask of a drafter.

    DrafterBase gives the optional parts a default, so an implementation states only what it does.
    """

    name: str
    # The drafter behind the last proposal where one drafter holds several (CombinedDrafter);
    # None means `name`.
    last_source: str | None
    # The draft model whose cache this drafter keeps, None for one without (the n-gram lookup).
    model: Model | None

    def propose(self, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        """Propose up to n tokens that continue `context` (prompt and output so far)."""
        ...

    def prepare(self, tokens: Sequence[int]) -> int | None:
        """Read the prompt into the draft cache before the first round (as the target does).

        Returns the tokens the draft model evaluated; None for a drafter without a draft model.
        """
        ...

    def observe(self, prop: Proposal, outcome: RoundOutcome) -> None:
        """What the target did with the last proposal (for the drafter's own statistics)."""
        ...

    def describe(self) -> list[str]:
        """Lines for the run's notes."""
        ...

    @property
    def guess_kind(self) -> str | None:
        """The kind of the last guess ("long" or "short" for the lookup's matches); None: no kinds."""
        ...

    def reset(self) -> None:
        """Forget any state carried between calls (KV cache, statistics)."""
        ...


class DrafterBase:
    """The Drafter protocol's optional parts, as a drafter without a cache or notes has them."""

    last_source: str | None = None
    model: Model | None = None
    guess_kind: str | None = None

    def prepare(self, tokens: Sequence[int]) -> int | None:
        return None

    def observe(self, prop: Proposal, outcome: RoundOutcome) -> None:
        pass

    def describe(self) -> list[str]:
        return []

    def reset(self) -> None:
        pass


def round_seconds(drafting: float, sync_seconds: float, evaluated: int, usual: int) -> float:
    """The seconds a round of drafting is charged, for the measured rates (Proposal.round_seconds).

    `drafting` is all the round spent; its first pass, a sync of the draft cache that took
    `sync_seconds` over `evaluated` tokens, usually reads at most `usual` of them. More is a
    catch-up on rounds the drafter sat out: real time, but a debt of those rounds, so this round
    is charged one token's share of it.
    """
    if evaluated > usual:
        return drafting + sync_seconds / evaluated - sync_seconds
    return drafting
