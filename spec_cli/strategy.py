"""How to speculate each round: which drafter, how many tokens, or not at all.

The loop asks a strategy for a proposal (`propose`) and tells it what the target
did with it (`observe`). A FixedStrategy always drafts the same length with one
drafter (`--draft-len N`). An AdaptiveStrategy (`--draft-len auto`) keeps, for
each drafter it may use, an AdaptiveDraftLength controller fed with the
measured cost curve and that drafter's acceptance history, and drafts only when
the prediction says it beats plain decoding.

In `auto`, each round the drafters are asked in order of their predicted gain
(tokens per second over plain decoding at their current acceptance estimate and
measured costs), so the n-gram lookup goes first on text that repeats and the
draft model first where the lookup's guesses do not land. The lookup costs
microseconds, so its guess is always made: when it is not the one drafted, or
its controller has switched it off, the guess is still checked against the
tokens the target produced ("shadow" evidence) at no cost, and it comes back when
its guesses start landing.

Each round also tells the drafter that drafted it what it measured: tokens
yielded and seconds taken (the target pass and the drafting), which the
controller blends into its prediction (adaptive.py), so a drafter that measures
better than predicted is kept and one that measures worse is dropped.

Only the draft model's one-token passes are booked as its price per drafted
token (Proposal.steps, step_seconds). A pass that catches the draft cache up on
several tokens (the prompt, rounds in which something else drafted or nothing
was drafted, the two tokens after a fully accepted round) is real time but not
a cost of drafting one more token; booked per token, it would make the draft model
look several times dearer than it is and switch it off where it pays.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .adaptive import AdaptiveDraftLength, predicted_speedups
from .drafters.base import Drafter, Proposal, RoundOutcome
from .drafters.combined import CombinedDrafter
from .drafters.crossvocab import CrossVocabDrafter
from .drafters.model import ModelDrafter
from .drafters.ngram import NgramDrafter
from .drafters.tree import TreeDrafter
from .errors import SpecError
from .limits import AUTO, MAX_DRAFT_LEN, MODEL, NGRAM, TREE, TREE_BRANCHES, TREE_DEPTH
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .calibrate import CostCurve
    from .loading import LoadedPair, ModelChoice
    from .presets import Notify

# How much better another drafter's gain must be to take over from the last one's.
STICKY = 1.1
# Context tokens a draft model reads in a round after one it drafted (the accepted drafts and the
# target's token); more is a catch-up on rounds it sat out.
CATCH_UP_FROM = 3
# Proposal.stopped values that mean the drafter's first guess was wrong although it proposed no token.
WRONG_FIRST_GUESS = ("draft-eos", "mismatch")
# A free drafter's acceptance per kind of guess (NgramDrafter.guess_kind) is pulled towards its
# overall estimate with this many pseudo-observations, and its evidence fades by KIND_DECAY.
KIND_PRIOR_WEIGHT = 4.0
KIND_DECAY = 0.95
# After this many passes, a run whose passes cost more than CURVE_OFF times the calibrated curve
# at some K (or less than 1 / CURVE_OFF of it) says the cached curve is wrong for this machine now.
CURVE_CHECK_AFTER = 16
CURVE_OFF = 1.4


class Strategy(Protocol):
    """Everything decode.Engine may call on a strategy."""

    name: str
    # The draft length of every round; None where the strategy chooses it round by round.
    draft_len: int | None
    rounds: Counter  # rounds by the drafter that drafted them ("none": no draft)

    def prepare(self, tokens: Sequence[int]) -> int | None:
        """Before the first round, once the target has read `tokens`: let the draft model read them too.

        Returns the tokens the draft model evaluated; None where no draft model read them.
        """
        ...

    def propose(self, context: Sequence[int], cap: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        """This round's proposal, at most `cap` tokens (none: the target decodes one token alone)."""
        ...

    def observe(self, prop: Proposal, outcome: RoundOutcome) -> None:
        """What the target did with the proposal."""
        ...

    def describe(self) -> list[str]:
        """Lines for the run's notes."""
        ...

    def drafters(self) -> list[Drafter]:
        """The drafters it may draft with."""
        ...


class FixedStrategy:
    """One drafter, the same draft length every round."""

    def __init__(self, drafter: Drafter, draft_len: int):
        self.drafter = drafter
        self.draft_len = draft_len
        self.name = drafter.name
        self.rounds: Counter = Counter()

    def propose(self, context: Sequence[int], cap: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        g = min(self.draft_len, cap)
        if g <= 0:
            return Proposal()
        prop = self.drafter.propose(context, g, params, rng)
        prop.source = self.drafter.last_source or self.drafter.name
        return prop

    def prepare(self, tokens: Sequence[int]) -> int | None:
        return self.drafter.prepare(tokens)

    def observe(self, prop: Proposal, outcome: RoundOutcome) -> None:
        self.rounds[prop.source if prop.tokens else "none"] += 1
        self.drafter.observe(prop, outcome)

    def drafters(self) -> list[Drafter]:
        return [self.drafter]

    def describe(self) -> list[str]:
        return [f"fixed draft length {self.draft_len}; rounds by drafter: {_fmt(self.rounds)}", *self.drafter.describe()]


@dataclass
class _Source:
    drafter: Drafter
    ctl: AdaptiveDraftLength
    free: bool  # drafting costs (next to) nothing: its guesses can be checked in every round
    shadow: list[int] = field(default_factory=list)
    # A draft model's cache: the context length it last read, and seconds per context token
    # when it reads several at once (measured on the prompt, then on each catch-up).
    synced: int = 0
    catch_up: float = 0.0
    # A free drafter whose guesses come in kinds (the lookup's long and short matches): the kind
    # of this round's guess, and per kind the faded counts of accepted and rejected drafts.
    kind: str | None = None
    kinds: dict[str, list[float]] = field(default_factory=dict)

    def order_gain(self) -> float:
        """The gain that decides which drafter goes first this round.

        For a drafter with kinds of guesses: its gain with the acceptance of this kind in place of
        its overall estimate. The controller's one estimate mixes the lookup's long matches (first
        guess right ~0.9 of the time on the bench suite) with its short ones (~0.5-0.7); by it alone
        a draft model with a steadier estimate would go first also in rounds where a long match
        drafts for free. Only the order uses it: the draft length and whether to draft at all come
        from the controller, which learns from every kind at once, faster than one per kind would
        on short runs (docs/benchmark-log.md).
        """
        gain = self.ctl.best_speedup()
        if self.kind is None:
            return gain
        c = self.ctl
        best = predicted_speedups(c.acceptance, c.cost, c.draft_step, c.g_max)[1:].max(initial=0.0)
        best_kind = predicted_speedups(self.kind_acceptance(self.kind), c.cost, c.draft_step, c.g_max)[1:].max(initial=0.0)
        return gain * best_kind / best if best > 0 else gain

    def kind_acceptance(self, kind: str) -> float:
        """The acceptance of this kind of guess, pulled towards the overall estimate while its evidence is thin."""
        acc, rej = self.kinds.get(kind, (0.0, 0.0))
        return (acc + KIND_PRIOR_WEIGHT * self.ctl.acceptance) / (acc + rej + KIND_PRIOR_WEIGHT)

    def kind_evidence(self, drafted: int, accepted: int) -> None:
        if self.kind is None or drafted <= 0:
            return
        for counts in self.kinds.values():
            counts[0] *= KIND_DECAY
            counts[1] *= KIND_DECAY
        counts = self.kinds.setdefault(self.kind, [0.0, 0.0])
        counts[0] += accepted
        counts[1] += accepted < drafted

    def pending(self, context_len: int) -> float:
        """What drafting now would spend catching up before it drafts (0 for a free drafter)."""
        lag = context_len - self.synced
        return lag * self.catch_up if not self.free and lag > CATCH_UP_FROM else 0.0


class AdaptiveStrategy:
    """Drafters in order of preference, each with its own draft-length controller."""

    def __init__(
        self,
        sources: Sequence[tuple[Drafter, AdaptiveDraftLength, bool]],
        on_curve_off: Callable[[float], None] | None = None,
    ):
        """on_curve_off(ratio) is called once when the run's passes contradict the calibrated
        curve (measured / calibrated beyond CURVE_OFF at some K): the caller drops the cached curve."""
        self.sources = []
        self.disabled: list[str] = []
        self.on_curve_off = on_curve_off
        self.curve_note: str | None = None
        self._passes = 0
        for d, c, free in sources:
            # A drafter that loses even if every draft were accepted can never pay on this
            # machine: leave it out instead of probing it now and then.
            best = float(predicted_speedups(1.0, c.cost, c.draft_step, c.g_max, catch_up=c.catch_up)[1:].max(initial=0.0))
            if not free and best < c.min_gain:
                self.disabled.append(
                    f"{d.name} drafter off: even with every draft accepted it is predicted at {best:.2f}x "
                    "of plain decoding on this machine (draft step too slow next to the target pass)"
                )
                continue
            self.sources.append(_Source(d, c, free))
        self.name = "auto(" + "+".join(s.drafter.name for s in self.sources) + ")" if self.sources else "auto(none)"
        self.draft_len = None  # chosen round by round
        self.rounds: Counter = Counter()
        self.lengths: Counter = Counter()
        self._consulted: list[_Source] = []
        self._used: _Source | None = None
        self._previous: _Source | None = None  # the last drafter that drafted
        self._lag = self._ctx_len = 0  # the drafter used this round: its catch-up, the context length

    def prepare(self, tokens: Sequence[int]) -> int | None:
        """Prepare each drafter with a draft model; returns the tokens the last of them evaluated (None: none)."""
        last = None
        for src in self.sources:
            if not src.free:
                t0 = time.perf_counter()
                done = src.drafter.prepare(tokens)
                seconds = time.perf_counter() - t0
                last = done if done is not None else last
                # Per context token: per draft token evaluated, times draft tokens per context token
                # (another family's tokenizer splits the text differently). A prepare that found the
                # cache mostly in place (a chat's later turns: the earlier ones are cached) says nothing.
                model = src.drafter.model
                evaluated = done if model is not None else len(tokens)
                cached = model.n_past if model is not None else len(tokens)
                if evaluated > CATCH_UP_FROM and tokens:
                    src.catch_up = seconds / evaluated * cached / len(tokens)
                src.synced = len(tokens) + 1
        return last

    def propose(self, context: Sequence[int], cap: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        self._consulted, self._used = [], None
        for src in self.sources:
            src.shadow, src.kind = [], None
        if cap <= 0:
            return Proposal()
        guesses: dict[int, Proposal] = {}
        candidates = []
        for i, src in enumerate(self.sources):
            if src.free:
                guess = src.drafter.propose(context, cap, params, rng)
                if not guess.tokens:
                    continue  # no match: nothing to decide, nothing to learn
                guesses[i] = guess
                src.kind = src.drafter.guess_kind
            candidates.append(i)
        # The best gain goes first; ties keep the configured order. The drafter of the last
        # round keeps its turn unless another is clearly better: switching has a price the
        # gains do not show (the draft model catching up on what the lookup drafted).
        last = self._previous
        if len(candidates) > 1:
            # (a gain costs ~20-60 µs of numpy to predict: not worth it with nothing to order,
            # as with the lookup alone on every round it has a guess)
            candidates.sort(key=lambda i: -self.sources[i].order_gain() * (STICKY if self.sources[i] is last else 1.0))
        chosen = None
        for i in candidates:
            src = self.sources[i]
            self._consulted.append(src)
            if chosen is None:
                g = min(src.ctl.choose(src.pending(len(context))), cap)
                if g > 0:
                    chosen = i, g
                    continue
            if i in guesses:
                src.shadow = guesses[i].tokens[: src.ctl.g_max]
        if chosen is None:
            return Proposal()
        i, g = chosen
        src = self.sources[i]
        self._lag, self._ctx_len = len(context) - src.synced, len(context)
        if i in guesses:
            prop = guesses[i]
            prop.tokens = prop.tokens[:g]
            prop.q = prop.q[:g] if prop.q is not None else None
        else:
            prop = src.drafter.propose(context, g, params, rng)
        return self._use(src, prop)

    def _use(self, src: _Source, prop: Proposal) -> Proposal:
        self._used = self._previous = src
        prop.source = src.drafter.name
        return prop

    def observe(self, prop: Proposal, outcome: RoundOutcome) -> None:
        self.rounds[prop.source if prop.tokens else "none"] += 1
        self.lengths[len(prop.tokens)] += 1
        for src in self.sources:
            src.ctl.observe_pass(outcome.pass_tokens, outcome.pass_seconds)
        self._passes += 1
        if self.curve_note is None and self.sources and self._passes >= CURVE_CHECK_AFTER:
            self._check_curve()
        for src in self._consulted:
            if src is self._used:
                drafted = outcome.drafted
                if not drafted and not src.free and prop.stopped in WRONG_FIRST_GUESS:
                    # A draft model that proposed nothing because its first guess was already
                    # wrong (it ended the text, or contradicted it: drafters/crossvocab.py) spent
                    # its time all the same: a round with one rejected draft. Counted as nothing,
                    # a probe would stay due and be paid for again every round.
                    drafted = 1
                if not src.free:
                    if self._lag > CATCH_UP_FROM:
                        # the part of the round's drafting that round_seconds leaves out
                        extra = max(0.0, outcome.draft_seconds - prop.round_seconds) / self._lag
                        src.catch_up += 0.3 * (extra - src.catch_up) if src.catch_up else extra
                    # its cache now holds the context and the drafts it evaluated (all but the last)
                    src.synced = self._ctx_len + min(outcome.accepted, max(len(prop.tokens) - 1, 0))
                if drafted:
                    drafting = outcome.draft_seconds if src.free else prop.round_seconds
                    src.ctl.observe_round(
                        outcome.accepted + 1, outcome.pass_seconds + drafting, spent=outcome.pass_seconds + outcome.draft_seconds
                    )
                src.ctl.update(drafted, outcome.accepted)
                src.kind_evidence(drafted, outcome.accepted)
                if not src.free and prop.steps:
                    src.ctl.observe_draft(prop.steps, prop.step_seconds)
            else:
                src.ctl.update(0, 0)
                if src.shadow:
                    # The guess nobody verified, checked against what the target produced: the
                    # evidence a draft as long as the tokens known would have given, at no cost.
                    drafted, accepted = shadow_evidence(src.shadow, outcome.target_tokens)
                    src.ctl.update(drafted, accepted)
                    src.kind_evidence(drafted, accepted)

    def _check_curve(self) -> None:
        ratio = self.sources[0].ctl.cost_ratio()  # every controller sees the same passes
        if ratio is None or 1.0 / CURVE_OFF <= ratio <= CURVE_OFF:
            return
        self.curve_note = f"the target's passes cost {ratio:.2f}x the calibrated curve here; auto corrected it as it went" + (
            ", and the cached curve will be measured again next run" if self.on_curve_off is not None else ""
        )
        if self.on_curve_off is not None:
            self.on_curve_off(ratio)

    def drafters(self) -> list[Drafter]:
        return [src.drafter for src in self.sources]

    def describe(self) -> list[str]:
        lines = [f"rounds by drafter: {_fmt(self.rounds)}; draft lengths used: {_fmt(self.lengths)}"]
        lines.extend(self.disabled)
        if self.curve_note:
            lines.append(self.curve_note)
        for src in self.sources:
            c = src.ctl
            by_kind = ", ".join(f"{k} {src.kind_acceptance(k):.2f}" for k in sorted(src.kinds))
            lines.append(
                f"{src.drafter.name}: acceptance estimate {c.acceptance:.2f}" + (f" (by kind of match: {by_kind})" if by_kind else "")
                + f", decisions {_fmt(c.counts)}; last: {c.reason or '-'}"
            )  # fmt: skip
            lines.extend(src.drafter.describe())
        return lines


def shadow_evidence(guess: Sequence[int], truth: Sequence[int]) -> tuple[int, int]:
    """(drafted, accepted) that drafting `guess` would have shown, where `truth` is what the target produced.

    Only as many positions as the target produced tokens can be judged: a round where another
    drafter had 7 drafts accepted shows the lookup's first 8 guesses right or wrong. Judged the
    way a drafted round is (adaptive.py): right up to a first miss at j is j acceptances and one
    rejection; right all through is acceptances only. Under sampling a deterministic guess equal
    to the target's sampled token is as likely as its acceptance (probability p of that token),
    so the evidence means the same there.
    """
    n = min(len(guess), len(truth))
    for j in range(n):
        if guess[j] != truth[j]:
            return j + 1, j
    return n, n


def _fmt(counter) -> str:
    items = sorted(counter.items(), key=lambda kv: str(kv[0]))
    return ", ".join(f"{k}: {v}" for k, v in items) or "-"


# --- building a strategy from the command-line choices ----------------------------------------

# --draft-len auto: the longest draft any controller may choose.
AUTO_MAX_DRAFT = 8
# The lookup's prior counts as this many guesses at a coin flip, so a couple of lucky matches
# do not start it drafting: on text that does not repeat itself one rejected 3-token draft costs
# ~2 % of a 64-token run on a CPU (docs/benchmark-log.md).
NGRAM_PRIOR_WEIGHT = 4.0
# A draft model that shares the target's tokenizer agrees with it on most tokens (0.6-0.9 in the
# literature and in docs/benchmark-log.md), so its controller starts from 0.7, not a coin flip,
# and forgets more slowly than the lookup's: its acceptance does not jump with the text, and a
# short run has few rounds to relearn it in.
MODEL_PRIOR = 0.7
MODEL_DECAY = 0.98
# A draft from another model family agrees less often (0.6-0.67 per token for SmolLM2-135M
# drafting for Gemma-3-270M), and a target token costs it more than one draft step: its tokens
# are shorter, one more step shows the last token complete, and each round re-reads the end of
# the accepted text (1.44-1.64 draft tokens per target token; docs/benchmark-log.md).
XVOCAB_PRIOR = 0.6
XVOCAB_STEPS = 1.6
# Its probes cost more for less expected gain, so it probes half as often and drafts at most 2
# tokens, the best length at its acceptance on a CPU (docs/benchmark-log.md).
XVOCAB_PROBE_EVERY = 16
XVOCAB_MAX_DRAFT = 2
# It must promise a clear gain before auto turns it on: near break-even, a lucky probe turns it
# on and the next rounds off again, each cycle paying the draft's catch-up.
XVOCAB_MIN_GAIN = 1.15


def parse_draft_len(text: str | int | None) -> int | None:
    """--draft-len: a number of tokens, or "auto" (None) for the adaptive controller."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        n = int(str(text))
    except ValueError:
        raise SpecError(f"--draft-len takes a number of tokens or 'auto', got {text!r}") from None
    if not 0 <= n <= MAX_DRAFT_LEN:
        raise SpecError(f"--draft-len must be between 0 and {MAX_DRAFT_LEN}, or 'auto', got {n}")
    return n


def build_strategy(
    pair: LoadedPair,
    choice: ModelChoice,
    draft_len: int | None,
    notify: Notify = lambda s: None,
    draft_min_p: float = 0.0,
    costs: CostCurve | None = None,
) -> Strategy | None:
    """The speculation strategy for these models and options; None means the target alone.

    `costs` (a CostCurve) stands in for the cached calibration under --draft-len auto;
    `spec bench` reads the cache once and builds a fresh strategy for every run.
    """
    from .calibrate import cached_costs, forget_costs  # looked up when called (tests script it)

    if choice.no_spec or draft_len == 0:
        return None
    if choice.drafter == "self":
        choice = dataclasses.replace(choice, drafter="model")  # the cut draft is a draft model of the target's vocabulary
    if not 0.0 <= draft_min_p < 1.0:
        raise SpecError(f"--draft-min-p must be in [0, 1), got {draft_min_p}")
    model = None
    if pair.draft is not None and pair.cross_vocab:
        if choice.drafter == TREE:
            raise SpecError("--drafter tree needs a draft with the target's vocabulary; use --drafter model or auto")
        model = CrossVocabDrafter(pair.target, pair.draft, min_confidence=draft_min_p)
    elif pair.draft is not None:
        model = ModelDrafter(pair.draft, min_confidence=draft_min_p)
    ngram = NgramDrafter(max_ngram=4, min_ngram=2)
    if choice.drafter in (MODEL, TREE) and model is None:
        raise SpecError(f"--drafter {choice.drafter} needs a draft model; pass --draft MODEL")
    if choice.drafter == TREE:
        if pair.target.n_seq_max < TREE_BRANCHES + 1:
            raise SpecError("--drafter tree needs a target loaded with several sequences (load_pair does that for 'tree')")
        tree = TreeDrafter(pair.draft, max_branches=TREE_BRANCHES)
        if draft_len is None:
            # The adaptive controller sizes chains from a chain's cost curve; trees keep a fixed depth.
            notify(f"--drafter tree: tree depth {TREE_DEPTH} (--draft-len auto does not size trees)")
            draft_len = TREE_DEPTH
        return FixedStrategy(tree, draft_len)
    if draft_len is not None:
        chosen = {MODEL: model, NGRAM: ngram, AUTO: CombinedDrafter(ngram, model) if model else ngram}[choice.drafter]
        return FixedStrategy(chosen, draft_len)
    on_curve_off = None
    if costs is None:
        draft = pair.draft if choice.drafter != NGRAM else None
        costs = cached_costs(pair.target, draft, AUTO_MAX_DRAFT + 1, notify)

        def on_curve_off(ratio: float) -> None:
            forget_costs(pair.target, draft, AUTO_MAX_DRAFT + 1)

    cost = np.array(costs.target_ms) / 1000.0
    sources = []
    if choice.drafter in (AUTO, NGRAM):
        # Its guesses are checked for free in every round (shadow evidence), so it needs no probes.
        ngram_ctl = AdaptiveDraftLength(cost, 0.0, AUTO_MAX_DRAFT, probe_every=0, prior_weight=NGRAM_PRIOR_WEIGHT)
        sources.append((ngram, ngram_ctl, True))
    if choice.drafter in (AUTO, MODEL) and model is not None:
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
