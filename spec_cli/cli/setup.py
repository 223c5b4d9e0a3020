"""What run and chat do before their first token, in one place: the model options they share,
the loaded pair, and the strategies built on it (a server can use it as they do)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .. import ui
from ..decode import GenerateOptions
from ..errors import SpecError
from ..loading import LoadedPair, ModelChoice, load_pair
from ..sampling import SamplingParams
from ..strategy import build_strategy, parse_draft_len


@dataclass
class ModelOptions(ModelChoice):
    """The model and speculation options of a generating command, as the command line gave them:
    the models to load (ModelChoice) and how to draft with them."""

    draft_len: str = "auto"
    draft_min_p: float = 0.0

    def first_draft_len(self) -> int | None:
        """--draft-len as a number (None: auto); 0 under --no-spec, whatever --draft-len says."""
        n = parse_draft_len(self.draft_len)  # checked under --no-spec too: a typo is still refused
        return 0 if self.no_spec else n

    def choice(self) -> ModelChoice:
        """The models to load, checked."""
        fields = {f.name for f in dataclasses.fields(ModelChoice)}
        choice = ModelChoice(**{k: v for k, v in dataclasses.asdict(self).items() if k in fields})
        choice.check()
        return choice


def generate_options(
    max_tokens: int,
    temp: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    draft_len: int | None = 0,
    stop=(),
    rollback_threshold: float | None = None,
) -> GenerateOptions:
    """The generation settings, checked (draft_len None: auto, which the strategy decides)."""
    opts = GenerateOptions(
        max_tokens=max_tokens,
        draft_len=draft_len or 0,
        sampling=SamplingParams(temperature=temp, top_k=top_k, top_p=top_p),
        seed=seed,
        stop=tuple(stop),
        rollback_threshold=rollback_threshold,
    )
    opts.check()
    return opts


@dataclass
class Models:
    """A loaded pair and what builds its strategies."""

    pair: LoadedPair
    choice: ModelChoice
    draft_min_p: float = 0.0

    def strategy(self, draft_len: int | None, drafter: str | None = None):
        """The strategy `spec run` drafts with at this draft length (None: auto), with --drafter or
        `drafter`; None for the target alone. Warnings go to stderr."""
        if self.choice.no_spec and draft_len != 0:
            raise SpecError("no draft model is loaded (--no-spec); /draft-len can only be 0")
        choice = self.choice if drafter is None else dataclasses.replace(self.choice, drafter=drafter)
        return build_strategy(self.pair, choice, draft_len, notify=ui.info, draft_min_p=self.draft_min_p)


@contextmanager
def open_models(options: ModelOptions, default_preset: str) -> Iterator[Models]:
    """Load the pair (`default_preset` when no model is named) and close it on the way out."""
    choice = options.choice()
    with ui.status("loading models"):
        pair = load_pair(choice, default_preset, notify=ui.info)
    try:
        yield Models(pair, choice, options.draft_min_p)
    finally:
        pair.close()
