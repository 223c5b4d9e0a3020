"""From command-line choices to loaded models: shared by run, chat and bench."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .drafters.crossvocab import check_cross_vocab
from .errors import SpecError
from .limits import DRAFTERS, TREE_BRANCHES
from .llama import Model, check_compatible, gpu_offload_supported
from .presets import Notify, load_catalog, pair, pair_rpc, resolve
from .rpc import parse_endpoints


@dataclass
class ModelChoice:
    target: str | None = None
    draft: str | None = None
    preset: str | None = None
    no_spec: bool = False
    ctx: int = 4096
    threads: int | None = None
    ngl: int | None = None  # None: 0, or every layer when the target runs over RPC
    ngl_draft: int | None = None  # None: the same as ngl
    drafter: str = "auto"  # auto | model | ngram | tree
    rpc: str | list[str] | None = None  # llama.cpp rpc-servers for the target (None: the preset's, if any)
    rpc_draft: bool = False  # the draft over the same servers too

    def check(self) -> None:
        if self.ctx < 16:
            raise SpecError(f"--ctx must be at least 16 tokens, got {self.ctx}")
        if self.threads is not None and self.threads < 1:
            raise SpecError(f"--threads must be at least 1, got {self.threads}")
        if (self.ngl is not None and self.ngl < -1) or (self.ngl_draft is not None and self.ngl_draft < -1):
            raise SpecError("--ngl and --ngl-draft take a layer count, or -1 for all layers")
        if self.drafter not in DRAFTERS:
            raise SpecError(f"--drafter must be one of {', '.join(sorted(DRAFTERS))}, got {self.drafter!r}")


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
    if choice.no_spec or choice.drafter in ("ngram", "self"):
        return target, None  # the n-gram drafter needs no draft model; self cuts one from the target
    if draft is None and choice.drafter == "auto" and choice.target is not None:
        return target, None  # auto without a draft model: n-gram lookup only
    if draft is None:
        raise SpecError(f"no draft model for target {target!r}; pass --draft MODEL, or --no-spec for the target alone")
    return target, draft


@dataclass
class LoadedPair:
    target: Model
    draft: Model | None
    target_path: Path
    draft_path: Path | None
    # The draft's vocabulary differs from the target's: it drafts text (drafters/crossvocab.py).
    cross_vocab: bool = False

    def close(self) -> None:
        self.target.close()
        if self.draft is not None:
            self.draft.close()


def load_pair(choice: ModelChoice, default_preset: str = "default", notify: Notify = lambda s: None) -> LoadedPair:
    choice.check()
    target_ref, draft_ref = resolve_refs(choice, default_preset)
    target_path = resolve(target_ref, notify)
    draft_path = resolve(draft_ref, notify) if draft_ref else None
    # Only a token tree needs the target to hold several sequences.
    n_seq = TREE_BRANCHES + 1 if choice.drafter == "tree" else 1
    servers = rpc_servers(choice, default_preset)
    if choice.rpc_draft and not servers:
        raise SpecError("--rpc-draft needs RPC servers (--rpc HOST:PORT,...)")
    ngl = choice.ngl if choice.ngl is not None else (-1 if servers else 0)
    devices = None
    if servers:
        from .rpc import connect

        devices = connect(servers)
    target = Model(
        target_path, n_ctx=choice.ctx, n_threads=choice.threads, n_gpu_layers=ngl, n_seq_max=n_seq, label="target",
        devices=devices,
    )  # fmt: skip
    target.rpc_servers = tuple(servers)
    if servers:
        # Over RPC, backend sampling costs a round trip per row (the ids are read row by row from
        # the servers), full logit rows one read: verifying 8 tokens at 5 ms of round-trip time,
        # 239 ms against 127 ms (docs/benchmark-log.md).
        target.use_backend_sampling(False)
    if choice.drafter == "self" or (choice.drafter == "auto" and draft_path is None and not choice.no_spec):
        try:
            draft_path = _self_draft(target, target_path, choice.drafter == "self", notify)
        except BaseException:
            target.close()
            raise
    draft = None
    cross_vocab = False
    if draft_path is not None:
        try:
            ngl_draft = ngl if choice.ngl_draft is None else choice.ngl_draft
            warning = offload_warning(ngl, ngl_draft, gpu_offload_supported() and not servers)
            if warning:
                notify(warning)
            # Without --rpc-draft the draft keeps to this machine (devices None: the local ones).
            draft = Model(
                draft_path, n_ctx=choice.ctx, n_threads=choice.threads, n_gpu_layers=ngl_draft, label="draft",
                devices=devices if choice.rpc_draft else None,
            )  # fmt: skip
            draft.rpc_servers = tuple(servers) if choice.rpc_draft else ()
            if choice.rpc_draft:
                draft.use_backend_sampling(False)
            try:
                check_compatible(target, draft)
            except SpecError as refusal:
                # Another family's draft: its text is re-tokenized for the target, where it can be.
                check_cross_vocab(target, draft, refusal)
                cross_vocab = True
                notify(
                    f"the draft {draft_path.name} has another vocabulary than the target {target_path.name}: "
                    "its drafts are turned into text and re-tokenized for the target"
                )
        except BaseException:
            target.close()
            if draft is not None:
                draft.close()
            raise
    return LoadedPair(target, draft, target_path, draft_path, cross_vocab=cross_vocab)


def _self_draft(target: Model, target_path: Path, search: bool, notify: Notify) -> Path | None:
    """--drafter self: the draft cut from the target (searched once); auto: one only where a cached search found it pays."""
    from . import selfdraft

    return selfdraft.choose(target, target_path, notify)[0] if search else selfdraft.cached_choice(target, target_path)


def rpc_servers(choice: ModelChoice, default_preset: str) -> list[str]:
    """The RPC servers for the target: --rpc, else the `rpc` key of the pair in use."""
    if choice.rpc is not None:
        return parse_endpoints(choice.rpc)
    name = choice.preset or (default_preset if choice.target is None else None)
    return parse_endpoints(pair_rpc(name)) if name else []


def offload_warning(ngl: int, ngl_draft: int, gpu: bool) -> str | None:
    """A warning when the target is offloaded to the GPU and the draft is left (mostly) on the CPU.

    That is the most common cause of slow speculation reported by llama.cpp and LM Studio
    users: every draft step then runs at CPU speed beside a GPU-speed target.
    """
    if gpu and ngl != 0 and ngl_draft == 0:
        return (
            f"warning: the target is offloaded to the GPU (--ngl {ngl}) but the draft is not (--ngl-draft 0): "
            "its draft steps run on the CPU and can make speculation slower than the target alone; "
            "leave --ngl-draft out to offload the draft like the target"
        )
    return None
