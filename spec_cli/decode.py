"""The speculative loop: draft, verify in one target pass, accept, roll back.

Invariant between rounds: `context` is prompt + output so far, and the target's
KV cache holds context[:-1]. The last token is always fed again as the first
row of the next verification batch, because its logits are needed to judge the
first draft. After a round that accepts a drafts, the cache is cut back to
len(context) + a, dropping the rejected drafts, and the target's own token
becomes the new last token. With no drafts the same loop is plain decoding,
which is what --no-spec runs, so both modes share one code path.

A proposal may also be a token tree (greedy only): the target evaluates all its
branches in the same single pass (Model.eval_tree), the longest accepted branch
is kept (Model.keep_branch) and the same invariant holds afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .backend import Model
from .drafters.base import Drafter, Proposal
from .errors import SpecError
from .sampling import SamplingParams, shape
from .stats import Stats
from .strategy import FixedStrategy, RoundOutcome
from .textstream import TextStream
from .tokentree import accept_tree_greedy, prune
from .verify import accept_greedy, accept_sampled


@dataclass
class GenerateOptions:
    max_tokens: int = 128
    draft_len: int = 4
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop: Sequence[str] = ()

    def check(self) -> None:
        if self.max_tokens < 1:
            raise SpecError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if self.draft_len < 0 or self.draft_len > 64:
            raise SpecError(f"--draft-len must be between 0 and 64, got {self.draft_len}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise SpecError(f"--seed must be a whole number from 0 up, got {self.seed}")
        try:
            self.sampling.check()
        except ValueError as e:
            raise SpecError(str(e)) from None


@dataclass
class Generation:
    text: str
    tokens: list[int]
    stats: Stats


class Engine:
    """Generation with the target, speculating through a strategy (or a drafter at a fixed draft length).

    Engine(target) or a draft length of 0 is plain decoding; Engine(target, drafter)
    drafts opts.draft_len tokens every round; Engine(target, strategy=...) lets the
    strategy choose the drafter and the length round by round.
    """

    def __init__(self, target: Model, drafter: Drafter | None = None, strategy=None):
        self.target = target
        self.drafter = drafter
        self.strategy = strategy

    def generate(
        self,
        prompt: Sequence[int],
        opts: GenerateOptions,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generation:
        opts.check()
        target = self.target
        if not prompt:
            raise SpecError("the prompt is empty")
        if len(prompt) >= target.n_ctx:
            raise SpecError(
                f"the prompt is {len(prompt)} tokens but the context holds {target.n_ctx}; "
                "use a larger --ctx or a shorter prompt"
            )
        seed = opts.seed if opts.seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        rng = np.random.default_rng(seed)
        params = opts.sampling
        strategy = self.strategy
        if strategy is None and self.drafter is not None and opts.draft_len > 0:
            strategy = FixedStrategy(self.drafter, opts.draft_len)
        stats = Stats(
            drafter=strategy.name if strategy is not None else "none",
            draft_len=getattr(strategy, "draft_len", 0) if strategy is not None else 0,
            prompt_tokens=len(prompt),
            seed=seed,
        )
        stream = TextStream(opts.stop)
        out_tokens: list[int] = []
        context = list(prompt)

        t0 = time.perf_counter()
        target.sync(context[:-1], logits=False)
        stats.prompt_tokens_evaluated = target.last_sync_evaluated
        if strategy is not None and hasattr(strategy, "prepare"):
            # A draft model reads the prompt here too, so that its first round is not
            # charged with prompt processing (and drafting does not look dear because of it).
            strategy.prepare(context[:-1])
        stats.t_prefill = time.perf_counter() - t0

        t_start = time.perf_counter()
        target_t0 = target.decode_seconds
        done = False
        while not done:
            if should_stop is not None and should_stop():
                stats.stop_reason = "interrupted"
                break
            room = target.n_ctx - len(context)  # drafts that still fit beside the last token
            if room < 0:
                stats.stop_reason = "context"
                stats.notes.append(f"stopped: the context of {target.n_ctx} tokens is full")
                break
            cap = min(room, opts.max_tokens - len(out_tokens) - 1)
            prop, t_draft = Proposal(), 0.0
            if strategy is not None and cap > 0:
                td = time.perf_counter()
                prop = strategy.propose(context, cap, params, rng)
                t_draft = time.perf_counter() - td
                stats.t_draft += t_draft
                stats.t_draft_decode += prop.decode_seconds
            path = None  # the accepted nodes, when the proposal is a token tree
            tree = prop.parents is not None and bool(prop.tokens)
            if tree:
                if not params.greedy:
                    raise SpecError("token trees are verified greedily only; draft a chain when sampling")
                # A tree takes one cache cell per node, so its size is bounded by the room left.
                drafts, parents = prune(prop.tokens, prop.parents, max(cap, 0), max(room, 0))
            else:
                drafts = prop.tokens[: max(cap, 0)]

            t_pass = target.decode_seconds
            if tree and drafts:
                rows = target.eval_tree(context[-1], drafts, parents)
                path, extra = accept_tree_greedy(drafts, parents, rows.argmax(axis=1))
                # Seq 0 continues along the accepted branch; the other branches are dropped.
                target.keep_branch(path)
                accepted = [drafts[i] for i in path]
            else:
                rows = target.eval([context[-1], *drafts], logits="all")
                if params.greedy:
                    n_acc, extra = accept_greedy(drafts, rows.argmax(axis=1))
                else:
                    p = [shape(row, params) for row in rows]
                    n_acc, extra = accept_sampled(drafts, prop.q_dists()[: len(drafts)], p, rng)
                # Drop the rejected drafts from the target cache; keep last token + accepted ones.
                target.truncate(len(context) + n_acc)
                accepted = drafts[:n_acc]
            t_pass = target.decode_seconds - t_pass
            n_acc = len(accepted)
            stats.record_round(len(drafts), n_acc)
            if strategy is not None:
                target_next = accepted[0] if n_acc > 0 else extra
                strategy.observe(
                    prop, RoundOutcome(len(drafts), n_acc, target_next, len(drafts) + 1, t_pass, t_draft, path)
                )

            for tok in (*accepted, extra):
                if target.is_eog(tok):
                    stats.stop_reason = "eos"
                    done = True
                    break
                context.append(tok)
                out_tokens.append(tok)
                piece = stream.feed(target.piece(tok))
                if piece and on_text is not None:
                    on_text(piece)
                if stream.stopped:
                    stats.stop_reason = "stop"
                    done = True
                    break
                if len(out_tokens) >= opts.max_tokens:
                    stats.stop_reason = "max_tokens"
                    done = True
                    break
            if done and len(target.tokens) > len(context) - 1:
                # A stop inside the accepted run: keep the invariant cache == context[:-1].
                target.truncate(len(context) - 1)

        tail = stream.flush()
        if tail and on_text is not None:
            on_text(tail)
        stats.t_total = time.perf_counter() - t_start
        stats.t_target = target.decode_seconds - target_t0
        stats.generated = len(out_tokens)
        if strategy is not None:
            stats.notes.extend(strategy.describe())
        return Generation(text=stream.released, tokens=out_tokens, stats=stats)
