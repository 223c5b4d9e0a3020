"""Drafting overlapped with verification (--overlap): the draft model drafts round r+1 while the
target verifies round r.

The draft cannot know what the target will make of round r, so it bets on the outcome that
leaves the most to reuse: every draft of round r accepted, followed by the token the draft
itself rates most likely after them (its guess of the target's own token). In a worker thread
it evaluates the last draft, takes that guess, and drafts the next round from
context + drafts + guess, exactly as the next round would. llama.cpp releases the GIL inside
its calls, so the target's pass and the draft's steps run at once; where the target runs on
other hardware (RPC servers, a GPU) the draft's time hides behind the target's.

The pre-draft is used only when the bet came true: the target's context after round r is
exactly the one it was drafted from. Otherwise it is thrown away, and the next round drafts
as usual; `Model.sync` cuts the draft cache back to the accepted context, so the wasted steps
leave nothing behind.

Why the output is unchanged. Greedy: drafts only decide how many tokens a pass can confirm;
the target picks every token. Sampled: the pre-drafted tokens are drawn from the draft's
distributions given the very context they are used in (their q is kept with them), with a
generator of their own, independent of the draws the target's verification makes. The event
"the bet came true" depends on round r and the target's draws only; given it, the pre-draft
is a draft drawn from q after that context, as a fresh one would be, so the acceptance rule
sees what it always sees and the target's distribution is kept. The guess is a function of
the draft's output only; it decides whether the pre-draft is used, never which token the
target emits.

--overlap auto measures. It leaves overlap off where the target and the draft share this
machine's processor (the two would only take turns on the same cores). Elsewhere it times
what a round's choice changes: the target's pass, the wait for the worker and the next round's
drafting, from the end of one proposal to the end of the next. It measures both ways in
alternation, then keeps the faster, overlapping only when it is clearly faster, and now and
then measures the other way again. What it learned is kept for the loaded pair, so later
generations (a chat's turns, the bench's runs) start from it.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .drafters.base import Proposal
from .drafters.model import ModelDrafter
from .errors import SpecError
from .sampling import SamplingParams

OFF, ON, AUTO = "off", "on", "auto"
OVERLAP_MODES = (OFF, ON, AUTO)
OFF_SHARED_CPU = "overlap auto: off (the target runs on the draft's processor; overlapping would only share its cores)"
# auto: rounds measured each way before it decides, alternating; the window of rounds it keeps per way
MIN_SAMPLES = 6
WINDOW = 32
# auto: overlap must take at least this much less time per round to be chosen ("never slower")
MARGIN = 0.03
# auto: every this many rounds, one round the other way, so a changed machine is noticed
PROBE_EVERY = 12


def parse_overlap(text: str | None) -> str:
    """--overlap: off, on or auto."""
    mode = (text or AUTO).strip().lower()
    if mode not in OVERLAP_MODES:
        raise SpecError(f"--overlap takes {', '.join(OVERLAP_MODES)}, got {text!r}")
    return mode


def separate_hardware(target, draft) -> bool:
    """Whether the target runs elsewhere than the draft: on RPC servers on another host, or on a GPU the
    draft is not on. Servers on this host's loopback share its cores with the draft: not elsewhere."""
    if target.rpc_servers and not draft.rpc_servers:
        return not all(_loopback(endpoint) for endpoint in target.rpc_servers)
    if target.n_gpu_layers != 0 and draft.n_gpu_layers == 0:
        from .llama import gpu_offload_supported

        return gpu_offload_supported()
    return False


def _loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0].strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def overlap_drafter(strategy) -> ModelDrafter | None:
    """The draft-model drafter a strategy drafts with, where overlapping can serve it (None: nowhere)."""
    if strategy is None:
        return None
    return next((d for d in strategy.drafters() if type(d) is ModelDrafter), None)


class OverlapChoice:
    """--overlap auto's measurements: seconds per round with and without a pre-draft, and the choice."""

    def __init__(self):
        self.seconds: dict[bool, deque[float]] = {True: deque(maxlen=WINDOW), False: deque(maxlen=WINDOW)}
        self.decided = 0  # rounds decided since the trial ended

    def want(self) -> bool:
        on, off = len(self.seconds[True]), len(self.seconds[False])
        if min(on, off) < MIN_SAMPLES:
            return off > on  # alternate, without overlap first
        self.decided += 1
        best = self.better()
        return (not best) if self.decided % PROBE_EVERY == 0 else best

    def better(self) -> bool:
        """Whether rounds with a pre-draft measured clearly faster than without."""
        on, off = self.seconds[True], self.seconds[False]
        if len(on) < MIN_SAMPLES or len(off) < MIN_SAMPLES:
            return False
        return float(np.mean(on)) < (1.0 - MARGIN) * float(np.mean(off))

    def record(self, overlapped: bool, seconds: float) -> None:
        self.seconds[overlapped].append(seconds)

    def describe(self) -> str:
        on, off = self.seconds[True], self.seconds[False]
        if not on or not off:
            return "not measured both ways yet"
        return (
            f"a round took {1000 * float(np.mean(on)):.1f} ms with a pre-draft and {1000 * float(np.mean(off)):.1f} ms "
            f"without (last {len(on)} and {len(off)} rounds); {'on' if self.better() else 'off'}"
        )


# What --overlap auto learned, per loaded target: {(draft, draft length, greedy): OverlapChoice}
_LEARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def learned_choice(target, draft, draft_len: int | None, greedy: bool) -> OverlapChoice:
    per_target = _LEARNED.setdefault(target, {})
    return per_target.setdefault((id(draft), draft_len, greedy), OverlapChoice())


@dataclass
class Ahead:
    """A pre-draft: the context it was drafted from, and the proposal."""

    context: list[int]
    prop: Proposal


class Pipeline:
    """The worker that drafts ahead, and the choice of the rounds in which it does."""

    def __init__(self, drafter: ModelDrafter, mode: str, seed: int, choice: OverlapChoice | None):
        """mode on or auto (off runs no pipeline); choice: auto's measurements (None under on)."""
        self.drafter = drafter
        self.mode = mode
        self.choice = choice
        # the pre-drafts' own draws, apart from the loop's generator (which verification uses meanwhile)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x0FF1A9]))
        self.started = self.used = 0
        self.t_wait = 0.0  # waiting for the worker after the target's pass
        self.t_hidden = 0.0  # the draft's passes the worker made
        self._thread: threading.Thread | None = None
        self._result: Ahead | None = None
        self._error: BaseException | None = None
        self._round: bool | None = None  # this round's choice while its sample is open
        self._t0 = 0.0

    # --- auto's measurement -----------------------------------------------------------

    def proposed(self) -> None:
        """A proposal is ready: the round whose choice was open ends here (its sample is complete)."""
        if self._round is not None and self.choice is not None:
            self.choice.record(self._round, time.perf_counter() - self._t0)
        self._round = None

    # --- the worker ---------------------------------------------------------------------

    def begin(
        self,
        context: Sequence[int],
        prop: Proposal,
        drafts: list[int],
        n_next: int,
        params: SamplingParams,
        is_eog: Callable[[int], bool],
    ) -> None:
        """Round r's drafts are final and about to be verified: pre-draft round r+1 if this round overlaps.

        n_next: how many tokens round r+1 would draft if every draft is accepted (0: none).
        """
        self._round = None
        if prop.source != self.drafter.name or prop.parents is not None or not drafts or n_next <= 0:
            return
        if any(is_eog(t) for t in drafts):
            return  # the text would end in this round
        overlap = self.mode == ON or self.choice is None or self.choice.want()
        self._round, self._t0 = overlap, time.perf_counter()
        if not overlap:
            return
        self.started += 1
        base = [*context, *drafts]
        self._thread = threading.Thread(target=self._work, args=(base, n_next, params, is_eog), name="spec-overlap", daemon=True)
        self._thread.start()

    def _work(self, base: list[int], n: int, params: SamplingParams, is_eog) -> None:
        try:
            d = self.drafter
            t0 = d.model.decode_seconds
            guess = d.guess(base, params)
            if is_eog(guess):
                return
            context = [*base, guess]
            prop = d.propose(context, n, params, self.rng)
            prop.source = d.name
            self.t_hidden += d.model.decode_seconds - t0
            self._result = Ahead(context, prop)
        except BaseException as e:  # handed to the loop's thread by join()
            self._error = e

    def join(self) -> None:
        """Wait for the worker (the draft model is the loop's again); give the drafter its pre-draft."""
        if self._thread is None:
            return
        t0 = time.perf_counter()
        self._thread.join()
        self.t_wait += time.perf_counter() - t0
        self._thread = None
        result, error, self._result, self._error = self._result, self._error, None, None
        if error is not None and not isinstance(error, SpecError):
            raise error
        # A SpecError (the draft's context full, say) costs only the pre-draft: the next round
        # drafts as usual, and reports the error if it meets it too.
        self.drafter.ahead = result

    def close(self) -> None:
        """The generation ends: wait for the worker and drop what it drafted."""
        try:
            self.join()
        finally:
            self.drafter.ahead = None

    def describe(self) -> list[str]:
        line = (
            f"overlap {self.mode}: {self.started} rounds pre-drafted during the target's pass, {self.used} of them used; "
            f"waited {1000 * self.t_wait:.0f} ms for the draft after the passes"
        )
        if self.mode == AUTO and self.choice is not None:
            line += f"; auto: {self.choice.describe()}"
        return [line]
