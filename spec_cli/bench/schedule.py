"""What runs, in which order, and what each run leaves behind.

A configuration is one engine in one mode (target alone, speculative with a drafter and a
draft length, a peer's lookup). One block of the schedule runs every configuration on one
prompt, back to back, so that machine drift hits them alike; the order within a block
rotates. A Run records one measured generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .reference import Reference
from .settings import (
    AUTO,
    CONTROL,
    LLAMA_CPP,
    LLAMA_CPP_PYTHON,
    LOOKUP,
    MODEL,
    NGRAM,
    SPEC,
    SPECULATIVE,
    TARGET,
    TREE,
    BenchSettings,
)


@dataclass(frozen=True)
class Config:
    engine: str  # spec | llama.cpp | llama-cpp-python
    mode: str  # target | speculative | lookup
    draft_len: int = 0  # 0 for target only, and for auto (which chooses it round by round)
    drafter: str = ""  # speculative: model | ngram | tree | auto ("" means model)
    rollback: float = 0.0  # BiLD's rollback threshold; above 0 the output is lossy

    @property
    def kind(self) -> str:
        return (self.drafter or MODEL) if self.mode == SPECULATIVE else ""

    @property
    def label(self) -> str:
        if self.mode == TARGET and self.drafter == CONTROL:
            what = "target only, again (noise control)"
        elif self.mode == TARGET:
            what = "target only"
        elif self.mode == LOOKUP:
            what = "prompt lookup"
        elif self.kind == AUTO:
            what = "auto"
        elif self.kind == NGRAM and self.engine == LLAMA_CPP:
            what = "ngram-mod"
        elif self.kind == NGRAM:
            what = f"n-gram, draft length {self.draft_len}"
        elif self.kind == TREE:
            what = f"tree, depth {self.draft_len}"
        else:
            what = f"draft length {self.draft_len}"
        if self.rollback > 0:
            what += f", rollback {self.rollback:g} (lossy)"
        return f"{self.engine}: {what}"

    @property
    def baseline(self) -> Config:
        """The configuration this one's speedup is measured against (same engine, no drafts)."""
        return Config(self.engine, TARGET, 0)


# llama-speculative-simple --spec-type ngram-mod, with its own draft lengths
REF_NGRAM = Config(LLAMA_CPP, SPECULATIVE, 0, NGRAM)


@dataclass
class Run:
    """One measured generation (one prompt, one configuration, one repeat)."""

    engine: str
    mode: str
    draft_len: int
    prompt_id: str
    category: str
    repeat: int
    order: int  # position in the interleaved schedule
    generated: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    drafted: int | None = None
    accepted: int | None = None
    target_passes: int | None = None
    accept_hist: list[int] | None = None
    t_target_decode: float | None = None
    t_draft: float | None = None
    t_draft_decode: float | None = None
    t_outside_decode: float | None = None
    stop_reason: str = ""
    output_check: str = ""  # baseline | same | near-tie | MISMATCH | not-checked (always, under sampling)
    tie_gap: float | None = None
    error: str | None = None
    tokens: list[int] | None = None
    drafter: str = ""  # see Config.drafter
    rounds_by_drafter: dict[str, int] | None = None  # target passes by the drafter that proposed ("none": no draft)
    lengths_used: dict[int, int] | None = None  # target passes by draft length (spec only)
    strategy_notes: list[str] | None = None  # the strategy's own account: what it chose and why
    seed: int | None = None  # the sampling seed (None: greedy)
    drafters_off: list[str] | None = None  # auto only: why it left a drafter out (also among strategy_notes)
    rollback: float = 0.0  # see Config.rollback
    # lossy runs under greedy decoding: the first token where the output parts from the target
    # alone's (None: the same text); output_check is then "lossy"
    departs_at: int | None = None
    # with a rollback sweep, spec's runs: the target's mean log-likelihood per token of the text
    # (checks.mean_logprob), to compare a lossy row's text with the target alone's
    logprob: float | None = None

    @property
    def config(self) -> Config:
        return Config(self.engine, self.mode, self.draft_len, self.drafter, self.rollback)


def configurations(settings: BenchSettings, reference: Reference | None, lookup: bool, draft_model: bool = True) -> list[Config]:
    """One block's configurations: spec's target alone and drafters, then the peers that are there.

    llama.cpp's draft-model rows need a draft model; its ngram-mod row (no draft length: its
    defaults) runs where spec's n-gram or auto drafter does.
    """
    configs = [Config(SPEC, TARGET)]
    for d in settings.drafters:
        if d == AUTO:
            configs.append(Config(SPEC, SPECULATIVE, 0, AUTO))
        else:
            configs += [Config(SPEC, SPECULATIVE, g, d) for g in settings.draft_lens]
    if settings.rollback_thresholds:
        configs = [
            replace(c, rollback=rb) if c.mode == SPECULATIVE else c
            for c in configs
            for rb in (settings.rollback_thresholds if c.mode == SPECULATIVE else (0.0,))
        ]
    if reference is not None:
        if reference.plain is not None:
            configs.append(Config(LLAMA_CPP, TARGET))
        if draft_model:
            configs += [Config(LLAMA_CPP, SPECULATIVE, g) for g in settings.draft_lens]
        if NGRAM in settings.drafters or AUTO in settings.drafters:
            configs.append(REF_NGRAM)
    if lookup:
        configs += [Config(LLAMA_CPP_PYTHON, TARGET), Config(LLAMA_CPP_PYTHON, LOOKUP)]
    if settings.control:
        # Halfway round the rotation from the target: as far from it in time as a
        # configuration gets, so its ratio shows the drift that the others live with too.
        # Next to the target it would only show the noise between neighbours.
        configs.insert((len(configs) + 1) // 2, Config(SPEC, TARGET, 0, CONTROL))
    return configs


def schedule(n_prompts: int, configs: Sequence[Config], repeats: int) -> list[tuple[int, int, Config]]:
    """(repeat, prompt index, config) in the order to run them.

    Every configuration runs on a prompt before the next prompt starts (A B C A B C,
    never all A then all B), and the order within a block rotates so that no
    configuration always runs first, right after the models were idle.
    """
    out = []
    n = len(configs)
    for r in range(repeats):
        for p in range(n_prompts):
            shift = (r * n_prompts + p) % n
            for c in list(configs[shift:]) + list(configs[:shift]):
                out.append((r, p, c))
    return out
