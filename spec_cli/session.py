"""From command-line choices to loaded models: shared by run, chat and bench."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .backend import Model, check_compatible
from .errors import SpecError
from .presets import Notify, load_catalog, pair, resolve


@dataclass
class ModelChoice:
    target: str | None = None
    draft: str | None = None
    preset: str | None = None
    no_spec: bool = False
    ctx: int = 4096
    threads: int | None = None
    ngl: int = 0
    ngl_draft: int = 0

    def check(self) -> None:
        if self.ctx < 16:
            raise SpecError(f"--ctx must be at least 16 tokens, got {self.ctx}")
        if self.threads is not None and self.threads < 1:
            raise SpecError(f"--threads must be at least 1, got {self.threads}")
        if self.ngl < -1 or self.ngl_draft < -1:
            raise SpecError("--ngl and --ngl-draft take a layer count, or -1 for all layers")


def resolve_refs(choice: ModelChoice, default_preset: str) -> tuple[str, str | None]:
    """Which target and draft references the user means."""
    catalog = load_catalog()
    target, draft = choice.target, choice.draft
    if target is None:
        p_target, p_draft = pair(choice.preset or default_preset, catalog)
        target = p_target
        draft = draft or p_draft
    elif choice.preset is not None:
        _, p_draft = pair(choice.preset, catalog)
        draft = draft or p_draft
    elif draft is None:
        # --target NAME alone: take the draft of the first pair built on that model
        for p in catalog.pairs.values():
            if p["target"] == target and p.get("draft"):
                draft = p["draft"]
                break
    if choice.no_spec:
        return target, None
    if draft is None:
        raise SpecError(f"no draft model for target {target!r}; pass --draft MODEL, or --no-spec for the target alone")
    return target, draft


@dataclass
class LoadedPair:
    target: Model
    draft: Model | None
    target_path: Path
    draft_path: Path | None

    def close(self) -> None:
        self.target.close()
        if self.draft is not None:
            self.draft.close()


def load_pair(choice: ModelChoice, default_preset: str = "default", notify: Notify = lambda s: None) -> LoadedPair:
    choice.check()
    target_ref, draft_ref = resolve_refs(choice, default_preset)
    target_path = resolve(target_ref, notify)
    draft_path = resolve(draft_ref, notify) if draft_ref else None
    notify(f"loading target {target_path.name}")
    target = Model(target_path, n_ctx=choice.ctx, n_threads=choice.threads, n_gpu_layers=choice.ngl, label="target")
    draft = None
    if draft_path is not None:
        notify(f"loading draft {draft_path.name}")
        try:
            draft = Model(draft_path, n_ctx=choice.ctx, n_threads=choice.threads, n_gpu_layers=choice.ngl_draft, label="draft")
            check_compatible(target, draft)
        except BaseException:
            target.close()
            if draft is not None:
                draft.close()
            raise
    return LoadedPair(target, draft, target_path, draft_path)
