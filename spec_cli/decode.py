"""The speculative loop: draft, verify in one target pass, accept, roll back.

Invariant between rounds: `context` is prompt + output so far, and the target's
KV cache holds context[:-1]. The last token is always fed again as the first
row of the next verification batch, because its output is needed to judge the
first draft. After a round that accepts a drafts, the cache is cut back to
len(context) + a, dropping the rejected drafts, and the target's own token
becomes the new last token. With no drafts the same loop is plain decoding,
which is what --no-spec runs, so both modes share one code path.

A round has three steps: propose (the strategy's drafter), verify (a chain, or a
token tree whose branches the target evaluates in the same single pass; both
greedy and sampled, lossless either way), emit
(the accepted drafts and the target's own token, up to a stop condition).
Verification only asks the target for what the acceptance rule reads: a token
id per row under greedy decoding, the top-k candidates per row under top-k
sampling (llama.cpp's backend sampling where it has it), full rows otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .drafters.base import Proposal, RoundOutcome
from .errors import SpecError
from .limits import MAX_DRAFT_LEN, check_prompt_fits, check_seed
from .llama import Model
from .pipeline import AUTO, OFF, OFF_SHARED_CPU, ON, Pipeline, learned_choice, overlap_drafter, parse_overlap, separate_hardware
from .sampling import Dist, SamplingParams, sample_top_k, shape, shape_top_k
from .stats import Stats
from .strategy import Strategy
from .textstream import TextStream
from .tokentree import accept_tree_greedy, accept_tree_sampled, prune_nodes
from .verify import accept_greedy, accept_greedy_rollback, accept_sampled, accept_sampled_rollback, token_nll

# Where an emitted token came from: a draft the target accepted, or the target's own pick.
DRAFT, TARGET = "draft", "target"


@dataclass
class GenerateOptions:
    max_tokens: int = 128
    draft_len: int = 4  # as asked for (bounds checked here); the Engine's strategy is what drafts
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop: Sequence[str] = ()
    # BiLD's rollback (verify.py): keep a draft the target would reject while -log p(draft) is at
    # most this. None (the default) is the lossless rule; any value makes the output lossy.
    rollback_threshold: float | None = None

    def check(self) -> None:
        if self.max_tokens < 1:
            raise SpecError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.draft_len <= MAX_DRAFT_LEN:
            raise SpecError(f"--draft-len must be between 0 and {MAX_DRAFT_LEN}, got {self.draft_len}")
        check_seed(self.seed)
        rb = self.rollback_threshold
        if rb is not None and not (np.isfinite(rb) and rb >= 0):
            raise SpecError(f"--rollback-threshold must be a number >= 0, got {rb}")
        try:
            self.sampling.check()
        except ValueError as e:
            raise SpecError(str(e)) from None


@dataclass
class Generation:
    text: str
    tokens: list[int]
    stats: Stats
    origins: list[str] = field(default_factory=list)  # per token: DRAFT or TARGET
    # prompt tokens the strategy's prepare had a draft model evaluate (None: no draft model prepared)
    draft_evaluated: int | None = None


@dataclass
class Verdict:
    """What one verification pass decided."""

    accepted: list[int]  # the drafts the target kept, in order
    extra: int  # the target's own token after them (correction or bonus)
    path: list[int] | None = None  # for a token tree: the accepted nodes, root down


def target_dists(target: Model, tokens: Sequence[int], params: SamplingParams) -> list[Dist]:
    """The target's sampling distribution after each of `tokens`, evaluating them in one pass."""
    if 0 < params.top_k < target.n_vocab:
        return [shape_top_k(ids, z, params) for ids, z in target.eval_top_k(tokens, params.top_k)]
    return [shape(row, params) for row in target.eval(tokens, logits="all")]


def target_sample(target: Model, tokens: Sequence[int], params: SamplingParams, rng: np.random.Generator) -> int:
    """Evaluate `tokens` and draw the next token from the target's distribution after the last one."""
    if 0 < params.top_k < target.n_vocab:
        ids, z = target.eval_top_k(tokens, params.top_k, rows="last")[0]
    else:
        z = target.eval(tokens, logits="last")[0]
        ids = np.arange(len(z))
    return sample_top_k(ids, z, params, rng)


def verify_chain(
    target: Model,
    context: Sequence[int],
    drafts: list[int],
    q: list[Dist],
    params: SamplingParams,
    rng: np.random.Generator,
    rollback: float | None = None,
) -> Verdict:
    """Evaluate [last token, *drafts] in one pass and apply the acceptance rule; cut the rejected drafts.

    `rollback` (a threshold) applies BiLD's lossy rule instead; under greedy decoding it reads the
    target's full rows, since its distance needs the target's probability of each draft.
    """  # fmt: skip
    tokens = [context[-1], *drafts]
    if params.greedy and rollback is not None and drafts:
        rows = target.eval(tokens, logits="all")
        n_acc, extra = accept_greedy_rollback(drafts, rows.argmax(axis=1), token_nll(rows, drafts), rollback)
    elif params.greedy:
        n_acc, extra = accept_greedy(drafts, target.eval_argmax(tokens))
    elif not drafts:
        # Nothing to judge: one draw from the target's distribution, as accept_sampled would make it.
        n_acc, extra = 0, target_sample(target, tokens, params, rng)
    elif rollback is not None:
        n_acc, extra = accept_sampled_rollback(drafts, q[: len(drafts)], target_dists(target, tokens, params), rng, rollback)
    else:
        n_acc, extra = accept_sampled(drafts, q[: len(drafts)], target_dists(target, tokens, params), rng)
    target.truncate(len(context) + n_acc)
    return Verdict(drafts[:n_acc], extra)


def verify_tree(
    target: Model,
    context: Sequence[int],
    drafts: list[int],
    parents: list[int],
    q: list[Dist] | None = None,
    params: SamplingParams | None = None,
    rng: np.random.Generator | None = None,
) -> Verdict:
    """Evaluate the last token with a tree of drafts below it in one pass and walk the accepted branch.

    Greedy (no params, or temperature 0): the branch of the target's argmax. Under sampling,
    tokentree's lossless rule, with q[i] the draft distribution node i was drawn from and the
    target's rows shaped by `params` only where the walk reaches them.
    """
    rows = target.eval_tree(context[-1], drafts, parents)
    if params is None or params.greedy:
        path, extra = accept_tree_greedy(drafts, parents, rows.argmax(axis=1))
    else:
        assert q is not None and rng is not None, "a sampled tree needs its draft distributions and an rng"
        path, extra = accept_tree_sampled(drafts, parents, q, lambda node: shape(rows[node + 1], params), rng)
    target.keep_branch(path)  # seq 0 continues along the accepted branch; the others are dropped
    return Verdict([drafts[i] for i in path], extra, path)


@dataclass
class _Run:
    """The state of one generation, passed between the steps of a round."""

    opts: GenerateOptions
    rng: np.random.Generator
    strategy: Strategy | None
    stats: Stats
    context: list[int]
    stream: TextStream
    out: list[int] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    drafted: int = 0  # drafts the target verified this round
    done: bool = False
    draft_evaluated: int | None = None


class Engine:
    """Generation with the target, speculating through a strategy.

    Engine(target) is plain decoding; Engine(target, FixedStrategy(drafter, k)) drafts k
    tokens every round; Engine(target, AdaptiveStrategy(...)) lets the strategy choose the
    drafter and the length round by round.
    """

    def __init__(self, target: Model, strategy: Strategy | None = None, overlap: str = OFF):
        """overlap: --overlap (pipeline.py): draft the next round while the target verifies (on),
        not (off), or as measured (auto)."""
        self.target = target
        self.strategy = strategy
        self.overlap = parse_overlap(overlap)
        if self.overlap == ON and strategy is not None and overlap_drafter(strategy) is None:
            raise SpecError(
                "--overlap on drafts ahead with a draft model of the target's vocabulary: use --drafter model or auto with one"
            )

    def _pipeline(self, run: _Run) -> Pipeline | None:
        """The worker that drafts ahead, where --overlap may use it; None where it may not."""
        drafter = overlap_drafter(run.strategy)
        if self.overlap == OFF or drafter is None:
            return None
        run.stats.overlap = self.overlap
        if self.overlap == AUTO and not separate_hardware(self.target, drafter.model):
            run.stats.notes.append(OFF_SHARED_CPU)  # the two would only take turns on the same cores
            return None
        greedy = run.opts.sampling.greedy
        choice = learned_choice(self.target, drafter.model, run.strategy.draft_len, greedy) if self.overlap == AUTO else None
        return Pipeline(drafter, self.overlap, run.stats.seed or 0, choice)

    def _ahead(self, run: _Run, pipe: Pipeline, prop: Proposal, cap: int) -> None:
        """Have the pipeline draft the round after this one, as it would be if all of this round is accepted."""
        if prop.ahead:
            pipe.used += 1
        drafts = prop.tokens[: max(cap, 0)] if prop.parents is None else []
        after = len(run.context) + len(drafts) + 1  # the context then, and the output
        out_after = len(run.out) + len(drafts) + 1
        n_next = 0
        if out_after < run.opts.max_tokens:
            g = run.strategy.draft_len or len(prop.tokens)
            n_next = min(g, self.target.n_ctx - after, run.opts.max_tokens - out_after - 1)
        pipe.begin(run.context, prop, drafts, n_next, run.opts.sampling, self.target.is_eog)

    def generate(
        self,
        prompt: Sequence[int],
        opts: GenerateOptions,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_span: Callable[[str, str], None] | None = None,
    ) -> Generation:
        """Generate up to opts.max_tokens after `prompt`.

        on_text(text) receives the text as it can be shown; on_span(text, origin), if
        given instead, receives it in runs of one origin (DRAFT or TARGET).
        """
        run = self._start(prompt, opts)
        target = self.target
        pipe = self._pipeline(run)
        t_start, target_t0 = time.perf_counter(), target.decode_seconds
        try:
            while not run.done:
                if should_stop is not None and should_stop():
                    run.stats.stop_reason = "interrupted"
                    break
                room = target.n_ctx - len(run.context)  # drafts that still fit beside the last token
                if room < 0:
                    run.stats.stop_reason = "context"
                    run.stats.notes.append(f"stopped: the context of {target.n_ctx} tokens is full")
                    break
                cap = min(room, opts.max_tokens - len(run.out) - 1)
                prop, t_draft = self._propose(run, cap)
                if pipe is not None:
                    pipe.proposed()
                    self._ahead(run, pipe, prop, cap)
                t_pass, t0 = target.decode_seconds, time.perf_counter()
                verdict = self._verify(run, prop, cap, room)
                t_pass = target.decode_seconds - t_pass
                t1 = time.perf_counter()
                run.stats.t_verify_other += t1 - t0 - t_pass
                if pipe is not None:
                    waited = pipe.t_wait
                    pipe.join()  # the draft model is the loop's again
                    waited = pipe.t_wait - waited
                    t_draft += waited
                    run.stats.t_draft += waited
                    run.stats.t_draft_decode += waited
                self._observe(run, prop, verdict, t_pass, t_draft)
                t2 = time.perf_counter()
                self._emit(run, verdict, on_text, on_span)
                run.stats.t_emit += time.perf_counter() - t2
        finally:
            if pipe is not None:
                pipe.close()
        self._release(run, run.stream.flush(), on_text, on_span)
        stats = run.stats
        if pipe is not None:
            stats.overlap_rounds, stats.overlap_used = pipe.started, pipe.used
            stats.t_overlap_wait, stats.t_overlap_hidden = pipe.t_wait, pipe.t_hidden
            stats.notes.extend(pipe.describe())
        stats.t_total = time.perf_counter() - t_start
        stats.t_target = target.decode_seconds - target_t0
        stats.generated = len(run.out)
        if run.strategy is not None:
            stats.notes.extend(run.strategy.describe())
        return Generation(
            text=run.stream.released, tokens=run.out, stats=stats, origins=run.origins, draft_evaluated=run.draft_evaluated
        )

    def _start(self, prompt: Sequence[int], opts: GenerateOptions) -> _Run:
        """Check the request, then prefill: the target (and a draft model) read the prompt but its last token."""
        opts.check()
        target = self.target
        if not prompt:
            raise SpecError("the prompt is empty")
        check_prompt_fits(len(prompt), target.n_ctx)
        seed = opts.seed if opts.seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        strategy = self.strategy
        stats = Stats(
            drafter=strategy.name if strategy is not None else "none",
            draft_len=(strategy.draft_len or 0) if strategy is not None else 0,
            prompt_tokens=len(prompt),
            seed=seed,
            rollback_threshold=opts.rollback_threshold,
        )
        run = _Run(opts, np.random.default_rng(seed), strategy, stats, list(prompt), TextStream(opts.stop))
        t0 = time.perf_counter()
        stats.prompt_tokens_evaluated, _ = target.sync(run.context[:-1], logits="none")
        if strategy is not None:
            # A draft model reads the prompt here too, so that its first round is not
            # charged with prompt processing (and drafting does not look dear because of it).
            run.draft_evaluated = strategy.prepare(run.context[:-1])
        stats.t_prefill = time.perf_counter() - t0
        return run

    def _propose(self, run: _Run, cap: int) -> tuple[Proposal, float]:
        if run.strategy is None or cap <= 0:
            return Proposal(), 0.0
        t0 = time.perf_counter()
        prop = run.strategy.propose(run.context, cap, run.opts.sampling, run.rng)
        t_draft = time.perf_counter() - t0
        run.stats.t_draft += t_draft
        if not prop.ahead:  # a proposal drafted ahead spent its passes beside the target's (Stats.t_overlap_hidden)
            run.stats.t_draft_decode += prop.decode_seconds
        return prop, t_draft

    def _verify(self, run: _Run, prop: Proposal, cap: int, room: int) -> Verdict:
        if prop.parents is not None and prop.tokens:
            sampling = run.opts.sampling
            if run.opts.rollback_threshold:
                raise SpecError("--rollback-threshold applies to a chain of drafts, not to a token tree (--drafter tree)")
            if not sampling.greedy and (prop.q is None or len(prop.q) != len(prop.tokens)):
                raise SpecError("a token tree under sampling needs the draft distribution of every node")
            # A tree takes one cache cell per node, so its size is bounded by the room left.
            kept, parents = prune_nodes(prop.parents, max(cap, 0), max(room, 0))
            if kept:
                drafts = [prop.tokens[i] for i in kept]
                q = None if sampling.greedy else [prop.q[i] for i in kept]
                run.drafted = len(drafts)
                return verify_tree(self.target, run.context, drafts, parents, q, sampling, run.rng)
            run.drafted = 0
            return verify_chain(self.target, run.context, [], [], run.opts.sampling, run.rng)
        drafts = prop.tokens[: max(cap, 0)]
        run.drafted = len(drafts)
        opts = run.opts
        rollback = opts.rollback_threshold or None  # 0 is the lossless rule: take its own path
        return verify_chain(self.target, run.context, drafts, prop.q_dists(), opts.sampling, run.rng, rollback)

    def _observe(self, run: _Run, prop: Proposal, verdict: Verdict, t_pass: float, t_draft: float) -> None:
        n_acc = len(verdict.accepted)
        run.stats.record_round(run.drafted, n_acc)
        if run.strategy is not None:
            tokens = [*verdict.accepted, verdict.extra]
            outcome = RoundOutcome(run.drafted, n_acc, tokens, run.drafted + 1, t_pass, t_draft, verdict.path)
            run.strategy.observe(prop, outcome)

    def _emit(self, run: _Run, verdict: Verdict, on_text, on_span) -> None:
        """Append the round's tokens to the output until a stop condition; keep the cache invariant."""
        target, stats = self.target, run.stats
        tokens = [*verdict.accepted, verdict.extra]
        for i, tok in enumerate(tokens):
            if target.is_eog(tok):
                stats.stop_reason = "eos"
                run.done = True
                break
            origin = DRAFT if i < len(verdict.accepted) else TARGET
            run.context.append(tok)
            run.out.append(tok)
            run.origins.append(origin)
            self._release(run, run.stream.feed(target.piece(tok), origin), on_text, on_span)
            if run.stream.stopped:
                stats.stop_reason = "stop"
                run.done = True
                break
            if len(run.out) >= run.opts.max_tokens:
                stats.stop_reason = "max_tokens"
                run.done = True
                break
        if run.done and len(target.tokens) > len(run.context) - 1:
            # A stop inside the accepted run: keep the invariant cache == context[:-1].
            target.truncate(len(run.context) - 1)

    @staticmethod
    def _release(run: _Run, text: str, on_text, on_span) -> None:
        if not text:
            return
        if on_span is not None:
            for span, origin in run.stream.last_spans:
                on_span(span, origin)
        elif on_text is not None:
            on_text(text)
