"""What a bench measures: the names of its engines, modes and drafters, and its settings.

The names are the words of the JSON and CSV files (engine, mode, drafter), so they do not
change lightly. Everything here is checked before a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SpecError
from ..limits import AUTO, DRAFTERS, MAX_DRAFT_LEN, MODEL, NGRAM, TREE, check_seed
from ..sampling import SamplingParams

DEFAULT_DRAFT_LENS = (1, 2, 3, 4, 6, 8)
GREEDY = SamplingParams(temperature=0.0)

SPEC, LLAMA_CPP, LLAMA_CPP_PYTHON = "spec", "llama.cpp", "llama-cpp-python"
TARGET, SPECULATIVE, LOOKUP = "target", "speculative", "lookup"
# --drafter (limits.DRAFTERS): model, ngram and tree are swept over the draft lengths; auto
# runs once, as `spec run` does by default (drafter and length chosen round by round).
DEFAULT_DRAFTERS = (MODEL, NGRAM, AUTO)
# --control: the target alone a second time, as its own configuration. Its "speedup" over
# the first is pure measurement noise, the yardstick for every other ratio in the table.
CONTROL = "control"


@dataclass
class BenchSettings:
    draft_lens: tuple[int, ...] = DEFAULT_DRAFT_LENS
    repeats: int = 2
    max_tokens: int = 32
    warmup: bool = True
    limit: int | None = None  # use the first N prompts
    reference: str | None = None  # path to llama-speculative-simple (or $SPEC_REFERENCE)
    lookup: bool = False  # llama-cpp-python's prompt lookup against its plain decoding
    drafters: tuple[str, ...] = DEFAULT_DRAFTERS
    control: bool = True  # also run the target alone twice, to show the noise floor
    sampling: SamplingParams = GREEDY  # greedy unless --temp > 0
    seed: int = 0  # base seed under sampling; each (prompt, repeat) gets its own from it (run_seed)
    # --rollback-threshold: every spec speculative configuration runs once per threshold (BiLD's
    # lossy rollback, 0 = the lossless rule); empty, the default, is the lossless rule only
    rollback_thresholds: tuple[float, ...] = ()

    def check(self) -> None:
        try:
            self.sampling.check()
        except ValueError as e:
            raise SpecError(str(e)) from None  # the words `spec run` uses
        check_seed(self.seed)
        if not self.drafters:
            raise SpecError("--drafter needs at least one of " + ", ".join(DRAFTERS))
        for d in self.drafters:
            if d not in DRAFTERS:
                raise SpecError(f"--drafter takes {', '.join(DRAFTERS)} (comma-separated), got {d!r}")
        if self.repeats < 1:
            raise SpecError(f"--repeats must be at least 1, got {self.repeats}")
        if self.max_tokens < 1:
            raise SpecError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if self.limit is not None and self.limit < 1:
            raise SpecError(f"--limit must be at least 1, got {self.limit}")
        if not self.draft_lens:
            raise SpecError("--draft-lens needs at least one draft length")
        for rb in self.rollback_thresholds:
            if not (np.isfinite(rb) and rb >= 0):
                raise SpecError(f"--rollback-threshold must be a number >= 0, got {rb}")
        if any(self.rollback_thresholds) and TREE in self.drafters:
            raise SpecError("--rollback-threshold applies to a chain of drafts, not to a token tree (--drafter tree)")
        for g in self.draft_lens:
            if not 1 <= g <= MAX_DRAFT_LEN:
                raise SpecError(f"draft lengths must be between 1 and {MAX_DRAFT_LEN}, got {g}")


def load_as(drafters: tuple[str, ...]) -> str:
    """The drafter the pair is loaded for: a tree needs the target with several sequences; ngram alone needs no draft model."""
    return next((d for d in (TREE, MODEL, AUTO) if d in drafters), NGRAM)


def run_seed(base: int, prompt_index: int, repeat: int) -> int:
    """The sampling seed of one (prompt, repeat): fixed by the base seed, different for each.

    Every configuration of the same prompt and repeat shares it (the warm-up is repeat -1),
    so a bench with the same --seed samples the same way again.
    """
    return int(np.random.SeedSequence([base, prompt_index, repeat + 1]).generate_state(1)[0] >> 1)


def parse_drafters(text: str) -> tuple[str, ...]:
    """--drafter model,ngram,auto: the drafters to measure, in the order given, each once."""
    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    for d in names:
        if d not in DRAFTERS:
            raise SpecError(f"--drafter takes {', '.join(DRAFTERS)} (comma-separated), got {d!r}")
    if not names:
        raise SpecError("--drafter needs at least one of " + ", ".join(DRAFTERS))
    return tuple(dict.fromkeys(names))


def parse_draft_lens(text: str) -> tuple[int, ...]:
    try:
        values = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError:
        raise SpecError(f"--draft-lens takes comma-separated integers such as 1,2,4,8, got {text!r}") from None
    if not values:
        raise SpecError("--draft-lens needs at least one draft length")
    return tuple(values)


def parse_thresholds(text: str | None) -> tuple[float, ...]:
    """--rollback-threshold 0,0.5,2: the thresholds to sweep, in the order given (0: the lossless rule)."""
    if text is None:
        return ()
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise SpecError(f"--rollback-threshold takes comma-separated numbers such as 0,0.5,2, got {text!r}") from None
    if not values:
        raise SpecError("--rollback-threshold needs at least one number")
    return tuple(dict.fromkeys(values))
