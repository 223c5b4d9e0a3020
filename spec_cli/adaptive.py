"""Choose the draft length each round so that speculation never costs more than it earns.

Model (Leviathan et al. 2023, section 3): each drafted token is accepted with
probability a, independently, and drafting stops at the first rejection. A round
that drafts g tokens then yields on average

    E(g) = 1 + a + ... + a^g = (1 - a^(g+1)) / (1 - a)

tokens (the accepted drafts plus the target's own token) and takes
g * draft_step + cost(g + 1) seconds, where cost(K) is one target pass over K
tokens. g = 0 is plain decoding: one token per cost(1). The controller picks the
g with the most tokens per second, and g = 0 unless some g > 0 beats it by
`min_gain`. On a GPU cost(K) is nearly flat and long drafts win; on the CPU in
docs/machine-notes.md cost(2) is already 1.9 x cost(1) and a weak drafter loses.

While speculation is off nothing is drafted, so the acceptance estimate gets no
evidence. Every so often the controller asks for a probe draft (after
`probe_every` rounds off; twice as long after each probe that lowered the
estimate, up to `probe_max` rounds), and speculation comes back only when fresh
evidence says it pays. Old evidence fades round by round, so after a long pause
a probe is judged against the prior rather than against stale history. A loop
whose drafter is nearly free (n-gram) can also feed `update` with shadow
evidence: the draft it would have made, compared with the token the target then
produced.

Predictions rest on the independence model and on costs measured before the
run; where the gain is small either can be off by more than the gain (bursty
acceptance, a pass that costs more in the loop than in calibration). So each
round a drafter drafted is also measured: the tokens it yielded and the time it
took (`observe_round`). The gain that decides on/off, and which drafter goes
first, is the prediction blended with that measured rate relative to a plain
pass, the measurement taking over as rounds accumulate. The draft length itself
still comes from the prediction, which knows how the gain moves with g.

Trying is bounded: a probe, or turning speculation on again after a pause, is a guess
that may lose, and near break-even the guesses can add up to 5-20 % of a short run. What
a drafter's measured rounds lost against plain decoding, all told (a draft model's
catch-up on the rounds it sat out included), may reach half a plain pass plus a share
of the run: 2 %, or a tenth of what drafting would save at full acceptance if that is
more; past that it tries nothing new until the run has grown enough (`_may_try`). A
probe does not count what the first round drafted lost, and a catch-up still to pay
counts as one plain pass at most. Each drafter has its own budget, so the lookup's
losses do not hold back a draft model that pays (docs/benchmark-log.md).

The cost curve is a prior: each K the run measures corrects it by the measured /
calibrated ratio, and the K it has not measured by their measured neighbours' ratios
(`observe_pass`), so the curve keeps its shape.

numpy only; no model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def expected_tokens(a: float, g_max: int) -> np.ndarray:
    """E(g) for g = 0..g_max: tokens one round yields with g drafts at acceptance rate a."""
    return np.cumsum(float(a) ** np.arange(g_max + 1))


def predicted_speedups(
    a: float,
    cost: Sequence[float],
    draft_step: float = 0.0,
    g_max: int | None = None,
    round_overhead: float = 0.0,
    catch_up: float = 0.0,
) -> np.ndarray:
    """Tokens per second with g drafts relative to plain decoding, for g = 0..g_max.

    cost[K - 1] is the time of one target pass over K tokens; g_max is capped at
    len(cost) - 1. round_overhead is time every round pays whatever g is
    (sampling, Python), in the same unit as cost. catch_up is what a draft model
    pays on top of a step after a round that accepted all g drafts (it then
    evaluates two tokens, the last draft and the target's bonus token), which
    happens with probability a^g.
    """
    cost = np.asarray(cost, dtype=np.float64)
    g_top = len(cost) - 1 if g_max is None else min(g_max, len(cost) - 1)
    g = np.arange(g_top + 1)
    extra = np.where(g > 0, float(a) ** g * catch_up, 0.0)
    rate = expected_tokens(a, g_top) / (g * draft_step + cost[: g_top + 1] + round_overhead + extra)
    return rate / rate[0]


# Pseudo-acceptances added to the estimate when sizing a probe (see _probe_length).
PROBE_OPTIMISM = 2.0
# Rounds off before the first probe after speculation turned itself off.
RECHECK_AFTER = 2
# What trying a drafter may cost (see AdaptiveDraftLength._may_try): the time its measured
# rounds lost against plain decoding may reach EXPLORE_ALLOWANCE plain passes plus
# EXPLORE_SHARE of the plain passes the run has had so far.
EXPLORE_ALLOWANCE = 0.5
EXPLORE_SHARE = 0.02
# A measured pass, draft step or round more than STALL times what the controller expects is a
# stall (pages of a model file read from disk, another program on the cores), not the cost of
# drafting, and is left out; one such round, priced at 16x its cost, kept a paying draft model off
# for the rest of a run. The (MAX_STALLS + 1)th in a row is taken: the machine has slowed down.
STALL = 3.0
MAX_STALLS = 2
# ... or this share of what drafting would save per plain pass at full acceptance, if more.
STAKE_SHARE = 0.1


class AdaptiveDraftLength:
    """Picks g each round from the cost curve and an acceptance estimate it keeps up to date.

    Use, once per round:
        g = ctl.choose()              # 0 = plain decoding this round; ctl.reason says why
        ... draft up to g tokens, verify ...
        ctl.update(drafted, accepted) # call every round, also when drafted == 0

    The acceptance estimate: a round that drafted g and accepted n < g saw n
    acceptances and one rejection; n == g saw g acceptances and no rejection
    (the rest was never tested). a = acceptances / (acceptances + rejections) is
    the maximum-likelihood rate under the model above; dividing accepted by
    drafted instead would count untested positions as rejections. Both counts are
    multiplied by `decay` every round, and `prior_weight` pseudo-observations at
    rate `prior` keep the estimate defined when evidence is thin or stale.
    """

    def __init__(
        self,
        cost: Sequence[float],
        draft_step: float = 0.0,
        g_max: int = 8,
        *,
        prior: float = 0.5,
        prior_weight: float = 1.0,
        decay: float = 0.95,
        min_gain: float = 1.05,
        probe_every: int = 8,
        probe_max: int = 64,
        round_overhead: float = 0.0,
        cost_weight: float = 0.2,
        catch_up: float = 0.0,
        prediction_weight: float = 4.0,
    ):
        self.cost = np.array(cost, dtype=np.float64)
        if self.cost.ndim != 1 or len(self.cost) < 1 or not np.all(self.cost > 0):
            raise ValueError("cost must list the positive time of one target pass for K = 1, 2, ...")
        # The calibrated curve is a prior: the run's own passes correct it (observe_pass).
        self.prior_cost = self.cost.copy()
        self._ratio = np.full(len(self.cost), np.nan)  # per K: faded measured / calibrated cost
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.draft_step = float(draft_step)
        self.g_max = max(0, min(g_max, len(self.cost) - 1))
        self.prior, self.prior_weight = float(prior), float(prior_weight)
        self.decay = decay
        self.min_gain = min_gain
        self.probe_every, self.probe_max = probe_every, max(probe_max, probe_every)
        self.round_overhead = round_overhead
        self.cost_weight = cost_weight
        self.catch_up = max(0.0, float(catch_up))
        # How many measured rounds the prediction counts for in the blended gain.
        self.prediction_weight = prediction_weight
        self._m_tok = 0.0  # decayed tokens yielded by the rounds this drafter drafted
        self._m_sec = 0.0  # decayed seconds those rounds took
        self._m_rounds = 0.0  # decayed count of those rounds
        # Seconds the rounds this drafter drafted lost against plain decoding (negative: won),
        # never decayed, and the rounds this controller has been asked about.
        self._lost = 0.0
        self._first_loss: float | None = None  # what the first round drafted lost (None: none yet)
        self._judged = False  # whether a probe has been judged yet
        self._rounds = 0
        self._acc = 0.0  # decayed count of accepted drafts
        self._rej = 0.0  # decayed count of rejections
        # Once off, only fresh evidence (a probe, or shadow drafts fed to update) turns
        # speculation back on; the estimate fading towards the prior does not.
        self._on = True
        self._fresh = False
        self._interval = probe_every
        self._since = probe_every  # rounds off since the last probe; starts due, to get evidence early
        self._last = "off"  # what the last choose() decided, until update() has read it
        self._was_on = False  # whether the last choose() turned speculation on (kept past update)
        self._last_g = 0  # the length of the last round that drafted
        self._chosen = 0  # what the last choose() returned
        self._stalls: dict[str, int] = {}  # measurements left out in a row, by kind
        self.stalls = 0  # measurements left out as stalls, all told
        self.reason = ""
        self.predicted = 1.0  # predicted speedup of the last choice over plain decoding
        self.counts = {"on": 0, "off": 0, "probe": 0}  # rounds by decision, for the stats

    @property
    def acceptance(self) -> float:
        w = self._acc + self._rej + self.prior_weight
        return (self._acc + self.prior_weight * self.prior) / w if w > 0 else self.prior

    def speedups(self) -> np.ndarray:
        """Predicted speedup for g = 0..g_max at the current estimate."""
        return predicted_speedups(self.acceptance, self.cost, self.draft_step, self.g_max, self.round_overhead, self.catch_up)

    def _best(self) -> tuple[int, float]:
        s = self.speedups()
        if self.g_max == 0:
            return 0, 1.0
        g = int(np.argmax(s[1:])) + 1
        return g, float(s[g])

    def measured_speedup(self) -> float | None:
        """Tokens per second of the rounds this drafter drafted, over plain decoding's (None: no round yet)."""
        if self._m_rounds <= 0 or self._m_sec <= 0:
            return None
        return self._m_tok / self._m_sec * self.cost[0]

    def _gain(self) -> tuple[int, float]:
        """The best draft length by prediction, and the gain to decide by: the prediction
        blended with the measured speedup, weighted by the rounds measured."""
        g, best = self._best()
        measured = self.measured_speedup()
        if g > 0 and measured is not None:
            w = self._m_rounds
            best = (self.prediction_weight * best + w * measured) / (self.prediction_weight + w)
        return g, best

    def _measured_note(self) -> str:
        m = self.measured_speedup()
        return "" if m is None else f", measured {m:.2f}x over {self._m_rounds:.0f} rounds"

    def _probe_length(self) -> int:
        """A probe drafts the length that would be best if the drafter were as good as the
        evidence allows: the estimate with PROBE_OPTIMISM more acceptances. With little
        evidence that is a few tokens, not the one token a cautious prior picks (on a steep
        curve one token never pays, so a one-token probe could not show that more would);
        with much evidence it is the plain estimate's best length."""
        acc, rej = self._acc + self.prior_weight * self.prior, self._rej + self.prior_weight * (1 - self.prior)
        a = (acc + PROBE_OPTIMISM) / (acc + rej + PROBE_OPTIMISM)
        s = predicted_speedups(a, self.cost, self.draft_step, self.g_max, self.round_overhead, self.catch_up)
        return int(np.argmax(s[1:])) + 1

    def _may_try(self, pending: float = 0.0, probe: bool = False) -> bool:
        """Whether a probe, or turning speculation back on, fits the budget for trying.

        Neither is decided on evidence that it pays: a probe is a guess, and turning on
        again follows a few lucky rounds. Near break-even (a draft that pays on some text
        and not on other) each costs a little, and on a short run they can add up to 5-20 %
        (docs/benchmark-log.md). So the time they lose is bounded: what the measured
        rounds lost, all told, may be at most EXPLORE_ALLOWANCE plain passes plus
        EXPLORE_SHARE of the run so far. A drafter that has paid overall (nothing lost)
        is never held back; one that keeps losing gets a try every so often, so a change
        in the text is still found. `pending` is what the try costs before it drafts (a
        draft model catching up on the rounds it sat out), counted as lost up front.

        A probe does not count what the first round drafted lost: without that round there
        is no evidence at all, and whether it was lucky says little about the text after it
        (a few early misses would otherwise use up the budget and keep off a draft model that
        pays later in the text). Turning on counts it: that is a decision on evidence, and the
        first round is some."""
        budget = (EXPLORE_ALLOWANCE + self.explore_share() * self._rounds) * self.cost[0]
        lost = self._lost - ((self._first_loss or 0.0) if probe else 0.0)
        # The catch-up is counted up front as one plain pass at most (what it really cost joins
        # `lost` once paid): it grows a token per round off, about as fast as the budget, so
        # counted whole it would keep a drafter that had lost once off for the rest of the run.
        return lost + min(pending, self.cost[0]) <= budget

    def explore_share(self) -> float:
        """The share of the run trying may cost: EXPLORE_SHARE, or more for a drafter with more to
        win, STAKE_SHARE of what it would save if every draft were accepted. A draft model that
        could run 1.7x may spend ~4 % of the run finding out where it does; one near break-even
        keeps to 2 %."""
        top = float(
            predicted_speedups(1.0, self.cost, self.draft_step, self.g_max, self.round_overhead, self.catch_up)[1:].max(
                initial=1.0
            )
        )
        return max(EXPLORE_SHARE, STAKE_SHARE * (1.0 - 1.0 / top)) if top > 1.0 else EXPLORE_SHARE

    def best_speedup(self) -> float:
        """The gain of the best draft length now (prediction blended with measurement; no side effects)."""
        return self._gain()[1]

    def choose(self, pending: float = 0.0) -> int:
        """The draft length for this round; 0 means plain decoding. Sets reason and predicted.

        pending: seconds drafting would spend first, whatever it drafts (see _may_try)."""
        self._acc *= self.decay
        self._rej *= self.decay
        self._rounds += 1
        a = self.acceptance
        g, best = self._gain()
        # Hysteresis: turning on needs a clear gain (min_gain), staying on only a gain.
        # Noise in the estimate around min_gain would otherwise flip speculation off and
        # leave it off until the next probe, losing the gain it had.
        staying = self._was_on
        pays = g > 0 and best >= (1.0 if staying else self.min_gain)
        fresh, self._fresh = self._fresh, False
        held = pays and not staying and not self._may_try(pending)
        if pays and (self._on or fresh) and not held:
            if self._last_g:
                # Lengthen a draft one token a round: a long draft chosen on a few rounds of
                # evidence is the costliest way to learn the estimate was too high.
                g = min(g, self._last_g + 1)
            self._on, self._was_on, self._last, self._since = True, True, "on", 0
            self.reason, self.predicted = f"g={g}: predicted {best:.2f}x (a={a:.2f}{self._measured_note()})", best
            self.counts["on"] += 1
            self._chosen = g
            return g
        if staying:
            # Just turned off: one bad round can do that early in a run. Check again soon;
            # probes that confirm the drop double the wait from there.
            self._interval, self._since = min(self._interval, RECHECK_AFTER), 0
        self._on = self._was_on = False
        self._since += 1
        if g > 0 and self.probe_every > 0 and self._since >= self._interval and self._may_try(pending, probe=True):
            self._last = "probe"
            g = self._probe_length()
            self.reason, self.predicted = f"probe g={g}: predicted {best:.2f}x (a={a:.2f}{self._measured_note()})", best
            self.counts["probe"] += 1
            self._chosen = g
            return g
        self._last = "off"
        if g == 0:
            self.reason = "off: no room to draft"
        elif held:
            self.reason = (
                f"off: predicted {best:.2f}x (g={g}, a={a:.2f}{self._measured_note()}), but its rounds have lost "
                f"{self._lost / self.cost[0]:.1f} plain passes so far, and trying again costs "
                f"{pending / self.cost[0]:.1f} more: more than trying may cost"
            )
        else:
            self.reason = f"off: predicted {best:.2f}x at best (g={g}, a={a:.2f}{self._measured_note()})"
        self.predicted = 1.0
        self.counts["off"] += 1
        self._chosen = 0
        return 0

    def update(self, drafted: int, accepted: int) -> None:
        """Evidence from this round, or from a shadow draft that was never verified.

        Call it once per round after verification, also when nothing was drafted
        (a probe that found no n-gram match stays due for the next round).
        """
        if not 0 <= accepted <= drafted:
            raise ValueError(f"accepted {accepted} of {drafted} drafted")
        last, self._last = self._last, "off"
        if drafted == 0:
            return
        if last in ("on", "probe"):
            self._last_g = drafted
        before = self.acceptance
        self._acc += accepted
        self._rej += accepted < drafted
        self._fresh = True
        if last == "probe":
            # A probe that lowered the estimate, or left the measured rate below plain
            # decoding's, doubles the wait for the next one, so a drafter that stays bad
            # costs at most one probe per probe_max rounds; an inconclusive one (as many
            # acceptances as the estimate expected) does not.
            self._since = 0
            # (the first probe, like the first round in the budget, does not double the wait)
            self._judged, first = True, not self._judged
            measured = self.measured_speedup()
            if accepted == drafted:
                # Every draft landed: probe again next round, longer as the estimate grows. A
                # short probe on a steep curve measures below plain decoding even when all of it
                # is accepted; judged by that rate, the wait would double and a draft model that
                # pays at a longer length would come back many rounds late.
                self._interval = 1
            elif not first and (self.acceptance < before or (measured is not None and measured < 1.0)):
                self._interval = min(2 * self._interval, self.probe_max)
            elif self.acceptance > before and self._gain()[1] >= 1.0:
                # and one that raised it, to a gain within reach, halves the wait: a drafter
                # that was underrated at the start of a run is found in a few rounds.
                self._interval = max(1, self._interval // 2)
        elif last == "on" and self._gain()[1] >= self.min_gain:
            self._interval = self.probe_every  # speculation confirmed: probe eagerly next time

    def observe_pass(self, k: int, seconds: float) -> None:
        """Fold a measured target pass over k tokens into the cost curve (same unit as cost).

        Each K the run has measured keeps a faded ratio of measured to calibrated cost; the
        other K take the ratio of their measured neighbours (linear in between, the nearest
        beyond). Correcting only the K measured would skew the curve's shape: a curve priced
        too dear throughout, corrected at K = 1 by plain rounds alone, made every draft look
        dearer still against the cheaper plain pass, and kept speculation off for good."""
        if not (1 <= k <= len(self.cost) and seconds > 0):
            return
        if self._stall("pass", seconds, self.cost[k - 1]):
            return
        r = seconds / self.prior_cost[k - 1]
        old = self._ratio[k - 1]
        self._ratio[k - 1] = r if np.isnan(old) else old + self.cost_weight * (r - old)
        seen = np.flatnonzero(~np.isnan(self._ratio))
        self.cost = self.prior_cost * np.interp(np.arange(len(self.cost)), seen, self._ratio[seen])

    def cost_ratio(self) -> float | None:
        """How far the run's passes are from the calibrated curve: the measured / calibrated
        ratio of the K farthest from 1 (None before any pass)."""
        seen = self._ratio[~np.isnan(self._ratio)]
        if not seen.size:
            return None
        return float(seen[np.argmax(np.abs(np.log(seen)))])

    def observe_round(self, tokens: int, seconds: float, spent: float | None = None) -> None:
        """A round this drafter drafted: the tokens it yielded (accepted + the target's own)
        and the seconds it took (the target pass and the drafting). Old rounds fade by
        `decay` per measured round, not per round off, so the measurement survives a pause.

        spent (default: seconds) is the round's whole wall time, where `seconds` leaves out
        a draft model's catch-up on rounds it sat out: not a cost of drafting on, so not in
        the rate, but a cost of trying again after a pause, so in what trying has lost."""
        if tokens < 1 or seconds <= 0:
            return
        g = max(1, min(self._chosen, self.g_max))
        if self._stall("round", seconds, self.cost[g] + g * self.draft_step):
            return
        loss = (seconds if spent is None else max(spent, seconds)) - tokens * self.cost[0]
        self._lost += loss
        if self._first_loss is None:
            self._first_loss = max(0.0, loss)
        d = self.decay
        self._m_tok = d * self._m_tok + tokens
        self._m_sec = d * self._m_sec + seconds
        self._m_rounds = d * self._m_rounds + 1.0

    def observe_draft(self, n: int, seconds: float) -> None:
        """Fold a measured drafting time for n tokens into draft_step."""
        if n > 0 and seconds >= 0:
            if self.draft_step > 0 and self._stall("draft", seconds, n * self.draft_step):
                return
            self.draft_step += self.cost_weight * (seconds / n - self.draft_step)

    def _stall(self, kind: str, seconds: float, expected: float) -> bool:
        """Whether to leave this measurement out as a stall (see STALL)."""
        if seconds > STALL * expected and self._stalls.get(kind, 0) < MAX_STALLS:
            self._stalls[kind] = self._stalls.get(kind, 0) + 1
            self.stalls += 1
            return True
        self._stalls[kind] = 0
        return False
