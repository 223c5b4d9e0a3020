"""Counters for one generation: acceptance, passes, and where the time went."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Stats:
    drafter: str = "none"
    draft_len: int = 0
    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0  # prompt tokens not already in the target cache
    generated: int = 0
    target_passes: int = 0  # llama_decode calls that verify (or, without drafts, generate)
    drafted: int = 0
    accepted: int = 0
    # accept_hist[k]: rounds in which exactly k drafted tokens were accepted
    accept_hist: list[int] = field(default_factory=list)
    rounds_without_draft: int = 0
    t_prefill: float = 0.0
    t_target: float = 0.0  # inside the target's llama_decode, verification rounds
    t_draft: float = 0.0  # inside the drafter (its llama_decode and its Python)
    t_draft_decode: float = 0.0  # of which the draft model's own passes (waits included)
    t_total: float = 0.0  # prefill excluded
    # Time outside the passes, by where it goes (the rest of t_other is the loop itself):
    t_verify_other: float = 0.0  # verification beside the target's pass: batch, ids or rows, acceptance rule
    t_emit: float = 0.0  # pieces, the text stream, stop strings, the caller's printing
    stop_reason: str = ""
    seed: int | None = None
    # BiLD's rollback threshold (None: the lossless rule); with one the output is not the target's own
    rollback_threshold: float | None = None
    # --overlap (pipeline.py): the mode ("" where it did not apply), rounds drafted ahead during
    # the target's pass, how many of those were used, the wait for them after the passes, and
    # the draft's passes they took (beside the target's; not part of t_draft_decode)
    overlap: str = ""
    overlap_rounds: int = 0
    overlap_used: int = 0
    t_overlap_wait: float = 0.0
    t_overlap_hidden: float = 0.0
    notes: list[str] = field(default_factory=list)

    def record_round(self, drafted: int, accepted: int) -> None:
        self.target_passes += 1
        if drafted == 0:
            self.rounds_without_draft += 1
            return
        self.drafted += drafted
        self.accepted += accepted
        if len(self.accept_hist) <= accepted:
            self.accept_hist.extend([0] * (accepted + 1 - len(self.accept_hist)))
        self.accept_hist[accepted] += 1

    @property
    def lossy(self) -> bool:
        return self.rollback_threshold is not None and self.rollback_threshold > 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.generated / self.target_passes if self.target_passes else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.t_total if self.t_total > 0 else 0.0

    @property
    def t_other(self) -> float:
        """Time outside the two models' passes: Python, sampling, lookup, streaming."""
        return max(0.0, self.t_total - self.t_target - self.t_draft_decode)

    @property
    def t_drafter_other(self) -> float:
        """The drafter's own work beside its model's passes (lookup, choosing, syncing)."""
        return max(0.0, self.t_draft - self.t_draft_decode)

    @property
    def t_loop(self) -> float:
        """What t_other leaves after drafting, verification and emission: the loop's own bookkeeping."""
        return max(0.0, self.t_other - self.t_drafter_other - self.t_verify_other - self.t_emit)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            lossy=self.lossy,
            acceptance_rate=self.acceptance_rate,
            tokens_per_pass=self.tokens_per_pass,
            tokens_per_second=self.tokens_per_second,
            t_other=self.t_other,
            t_drafter_other=self.t_drafter_other,
            t_loop=self.t_loop,
        )
        return d
