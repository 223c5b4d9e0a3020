"""From command-line choices to loaded models: shared by run, chat and bench."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .llama import Model, check_compatible, gpu_offload_supported
from .drafters.crossvocab import check_cross_vocab
from .errors import SpecError
from .presets import Notify, load_catalog, pair, pair_rpc, resolve
from .rpc import parse_endpoints

DRAFTERS = ("auto", "model", "ngram", "tree")

# --drafter tree: the target verifies up to this many branches at once, each in its own
# llama.cpp sequence beside seq 0; and the tree's depth when --draft-len is auto.
TREE_BRANCHES = 4
TREE_DEPTH = 4


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
            raise SpecError(f"--drafter must be one of {', '.join(DRAFTERS)}, got {self.drafter!r}")


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
    if choice.no_spec or choice.drafter == "ngram":
        return target, None  # the n-gram drafter needs no draft model
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
    target.rpc_servers = tuple(servers)  # part of the calibration cache's key
    if servers:
        # Over RPC, backend sampling costs round trips per row (the ids are read row by row
        # from the servers): verifying 8 tokens took 239 ms with it and 127 ms without at 5 ms
        # of round-trip time (docs/benchmark-log.md, issue 12). Full logit rows come back in one read.
        target.use_backend_sampling(False)
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


def parse_draft_len(text: str | int | None) -> int | None:
    """--draft-len: a number of tokens, or "auto" (None) for the adaptive controller."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        n = int(str(text))
    except ValueError:
        raise SpecError(f"--draft-len takes a number of tokens or 'auto', got {text!r}") from None
    if not 0 <= n <= 64:
        raise SpecError(f"--draft-len must be between 0 and 64, or 'auto', got {n}")
    return n


AUTO_MAX_DRAFT = 8
NGRAM_PRIOR_WEIGHT = 4.0
# A draft model that shares the target's tokenizer agrees with it on most tokens (0.6-0.9
# in the literature and in docs/benchmark-log.md), so its controller starts from 0.7, not a coin
# flip, and forgets more slowly than the lookup's: its acceptance does not jump with the
# text the way an n-gram's does, and a 32-token run has few rounds to relearn it in.
MODEL_PRIOR = 0.7
MODEL_DECAY = 0.98
# A draft from another model family (issue 11) agrees with the target less often (0.6 to 0.67
# per token for SmolLM2-135M drafting for Gemma-3-270M, docs/benchmark-log.md), and a target token costs
# it more than one draft step: its tokens are shorter, one more step shows the last token
# complete, and each round re-reads the end of the accepted text (1.64 SmolLM2 tokens evaluated
# per Gemma token proposed at g=2, 1.44 at g=3).
XVOCAB_PRIOR = 0.6
XVOCAB_STEPS = 1.6
# Its probes cost more than a same-family draft's (a longer draft per target token, and a
# catch-up on the text it sat out) for less expected gain, so it probes half as often and
# drafts at most 2 tokens. At its acceptance (0.6-0.7 greedy, less under sampling, where a
# point mass is kept with the target's own probability) 2 was the best length on this CPU
# (docs/benchmark-log.md, issue 11), and a probe of 4 that finds nothing costs ~5 % of a 32-token
# run, against ~1 % for a probe of 2.
XVOCAB_PROBE_EVERY = 16
XVOCAB_MAX_DRAFT = 2
# And it must promise a clear gain before auto turns it on: near break-even (as on this CPU)
# a lucky probe turned it on, the next rounds off again, and each such cycle re-probed two
# rounds later and paid the draft's catch-up, 0.85-0.93x on prose prompts in all.
XVOCAB_MIN_GAIN = 1.15


def build_strategy(
    pair: LoadedPair,
    choice: ModelChoice,
    draft_len: int | None,
    notify: Notify = lambda s: None,
    draft_min_p: float = 0.0,
    costs=None,
):
    """The speculation strategy for these models and options; None means the target alone.

    `costs` (a CostCurve) stands in for the cached calibration under --draft-len auto;
    `spec bench` reads the cache once and builds a fresh strategy for every run.
    """
    import numpy as np

    from .adaptive import AdaptiveDraftLength
    from .calibrate import cached_costs, forget_costs
    from .drafters import ModelDrafter
    from .drafters.combined import CombinedDrafter
    from .drafters.crossvocab import CrossVocabDrafter
    from .drafters.ngram import NgramDrafter
    from .drafters.tree import TreeDrafter
    from .strategy import AdaptiveStrategy, FixedStrategy

    if choice.no_spec or draft_len == 0:
        return None
    if not 0.0 <= draft_min_p < 1.0:
        raise SpecError(f"--draft-min-p must be in [0, 1), got {draft_min_p}")
    model = None
    if pair.draft is not None and pair.cross_vocab:
        if choice.drafter == "tree":
            raise SpecError("--drafter tree needs a draft with the target's vocabulary; use --drafter model or auto")
        model = CrossVocabDrafter(pair.target, pair.draft, min_confidence=draft_min_p)
    elif pair.draft is not None:
        model = ModelDrafter(pair.draft, min_confidence=draft_min_p)
    ngram = NgramDrafter(max_ngram=4, min_ngram=2)
    if choice.drafter in ("model", "tree") and model is None:
        raise SpecError(f"--drafter {choice.drafter} needs a draft model; pass --draft MODEL")
    if choice.drafter == "tree":
        if pair.target.n_seq_max < TREE_BRANCHES + 1:
            raise SpecError("--drafter tree needs a target loaded with several sequences (load_pair does that for 'tree')")
        tree = TreeDrafter(pair.draft, max_branches=TREE_BRANCHES)
        if draft_len is None:
            # The adaptive controller sizes chains from a chain's cost curve; trees keep a fixed depth.
            notify(f"--drafter tree: tree depth {TREE_DEPTH} (--draft-len auto does not size trees)")
            draft_len = TREE_DEPTH
        return FixedStrategy(tree, draft_len)
    if draft_len is not None:
        chosen = {"model": model, "ngram": ngram, "auto": CombinedDrafter(ngram, model) if model else ngram}[choice.drafter]
        return FixedStrategy(chosen, draft_len)
    on_curve_off = None
    if costs is None:
        draft = pair.draft if choice.drafter != "ngram" else None
        costs = cached_costs(pair.target, draft, AUTO_MAX_DRAFT + 1, notify)

        def on_curve_off(ratio: float) -> None:
            forget_costs(pair.target, draft, AUTO_MAX_DRAFT + 1)
    cost = np.array(costs.target_ms) / 1000.0
    sources = []
    if choice.drafter in ("auto", "ngram"):
        # Its guesses are checked for free in every round (shadow evidence), so it needs no probes.
        # The prior counts as NGRAM_PRIOR_WEIGHT guesses at a coin flip, so a couple of lucky
        # matches are not enough to start drafting: on text that does not repeat itself one
        # rejected 3-token draft already costs ~2 % of a 64-token run on this CPU (docs/benchmark-log.md).
        ngram_ctl = AdaptiveDraftLength(cost, 0.0, AUTO_MAX_DRAFT, probe_every=0, prior_weight=NGRAM_PRIOR_WEIGHT)
        sources.append((ngram, ngram_ctl, True))
    if choice.drafter in ("auto", "model") and model is not None:
        catch_up = costs.draft2_ms - costs.draft_ms if np.isfinite(costs.draft2_ms) else 0.0
        if pair.cross_vocab:
            steps, g_max = XVOCAB_STEPS, XVOCAB_MAX_DRAFT
            more = dict(prior=XVOCAB_PRIOR, probe_every=XVOCAB_PROBE_EVERY, min_gain=XVOCAB_MIN_GAIN)
        else:
            steps, g_max, more = 1.0, AUTO_MAX_DRAFT, dict(prior=MODEL_PRIOR)
        ctl = AdaptiveDraftLength(
            cost, steps * costs.draft_ms / 1000.0, g_max, catch_up=max(0.0, catch_up) / 1000.0, decay=MODEL_DECAY, **more,
        )  # fmt: skip
        sources.append((model, ctl, False))
    return AdaptiveStrategy(sources, on_curve_off=on_curve_off)
