"""Running the bench: every configuration on every prompt, timed, from fresh caches.

`run_bench` takes the stages in order: check the settings and the prompts' length, set up
the peers (llama.cpp's reference, llama-cpp-python's prompt lookup; a broken one is noted
and left out), warm up, run the schedule (schedule.py), the greedy check (checks.py), the
summary and the recommendation (summary.py).

What it measures with is passed in, the real thing by default, so that tests can pass fakes:
a CostSource (the machine's cost curve, calibrate.py), a Runner (one spec generation through
decode.Engine), a Checker (checks.check_outputs) and the machine's facts (machine_info).

Before each generation both models' caches are cleared and the prompt is evaluated off the
clock, so no run profits from a cache that an earlier run left behind. The cost curve is
sampled before the runs and after every prompt's block, so that it sees the same machine as
the runs; its median and the measured acceptance predict each draft length's speedup
(speedup.py), printed beside the measured one.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ..calibrate import CostCurve, cached_costs, measure_costs
from ..decode import Engine, GenerateOptions
from ..errors import SpecError
from ..loading import LoadedPair, ModelChoice
from ..pipeline import overlap_drafter
from ..stats import Stats
from ..strategy import AUTO_MAX_DRAFT, AdaptiveStrategy, build_strategy
from . import reference as ref_mod
from .checks import TIE_TOLERANCE, check_outputs, first_difference, mean_logprob, sampling_note
from .schedule import Config, Run, configurations, schedule
from .settings import (
    AUTO,
    CONTROL,
    DRAFTERS,
    LLAMA_CPP,
    MODEL,
    NGRAM,
    SPEC,
    SPECULATIVE,
    TARGET,
    TREE,
    BenchSettings,
    run_seed,
)
from .suite import BenchPrompt, Suite
from .summary import ConfigSummary, best_predicted, recommend_overall, summarize

SCHEMA = "spec-bench/2"
COST_CURVE_MAX_K = 16
WARMUP_TOKENS = 8
BUSY_SHARE = 0.5  # other programs using more than this share of the CPUs at the start is worth a warning

Notify = Callable[[str], None]
Progress = Callable[[int, str], None]


class CostSource(Protocol):
    """Where the bench's cost curves come from (MachineCosts: this machine, calibrate.py)."""

    def sample(self, context: Sequence[int], max_k: int) -> CostCurve:
        """One sample of a target pass of 1..max_k tokens and of a draft step, after `context`."""
        ...

    def calibrated(self) -> CostCurve:
        """The cached calibration that `auto` decides from, as `spec run` reads it."""
        ...


class Runner(Protocol):
    """What decodes one spec configuration (EngineRunner: decode.Engine on the loaded pair)."""

    def run(self, prompt: Sequence[int], drafter: str, opts: GenerateOptions, auto_costs: CostCurve | None) -> Run:
        """One generation from fresh caches, as a Run (prompt_id, category, repeat and order left for the caller).

        `drafter` is one of settings.DRAFTERS; opts.draft_len 0 with a drafter other than
        auto is the target alone. `auto_costs` is the curve auto decides from (None without auto).
        """
        ...


# check(target, prompts, tokenized prompts, runs): sets every run's output_check (checks.check_outputs)
Checker = Callable[[object, Sequence[BenchPrompt], Sequence[Sequence[int]], list[Run]], None]
# machine(threads) -> the facts recorded under "machine" (machine_info)
MachineFacts = Callable[[int], dict]


@dataclass
class BenchResult:
    schema: str
    created: str
    suite: dict
    settings: dict
    machine: dict
    models: dict
    cost: CostCurve
    runs: list[Run]
    summary: list[ConfigSummary]
    recommendation: dict
    best_predicted: dict | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def run_bench(
    pair: LoadedPair,
    suite: Suite,
    settings: BenchSettings,
    *,
    costs: CostSource | None = None,
    runner: Runner | None = None,
    checker: Checker = check_outputs,
    machine: MachineFacts | None = None,
    progress: Progress = lambda total, label: None,
    notify: Notify = lambda s: None,
) -> BenchResult:
    """Run the whole benchmark. progress(total, label) is called once per step.

    costs, runner and machine default to the real ones: MachineCosts and EngineRunner on `pair`,
    machine_info.
    """
    costs = costs if costs is not None else MachineCosts(pair, notify)
    runner = runner if runner is not None else EngineRunner(pair)
    machine = machine if machine is not None else machine_info
    settings.check()
    notes: list[str] = []
    settings = _for_sampling(settings, notes, notify)
    _require_draft_model(pair, settings)
    prompts, tokenized = _tokenize(pair, suite, settings)
    facts = machine(pair.target.n_threads)
    notes += _busy_notes(facts)
    peers = _peers(pair, settings, tokenized, notes, notify)
    configs = configurations(settings, peers.reference, peers.lookup is not None, pair.draft is not None)
    auto_costs = costs.calibrated() if AUTO in settings.drafters else None  # before anything is timed
    bench = _Bench(runner, peers, settings, prompts, tokenized, auto_costs, notes, notify, progress)
    plan = schedule(len(prompts), configs, settings.repeats)
    warm = configs if settings.warmup else []
    bench.total = len(plan) + len(warm) + settings.repeats * len(prompts) + 1
    if settings.rollback_thresholds:  # the target scores the text of each of spec's runs afterwards
        bench.total += sum(1 for _, _, cfg in plan if cfg.engine == SPEC and cfg.drafter != CONTROL)
    try:
        bench.warm_up(warm)
        runs, cost = bench.measure(plan, costs, max(COST_CURVE_MAX_K, _longest_draft(settings) + 1))
    finally:
        peers.close()
    notes += _silent_prompt_notes(prompts, runs)
    if settings.sampling.greedy:
        checker(pair.target, prompts, tokenized, [r for r in runs if not r.rollback])
        _departures(runs)
    else:
        for run in runs:
            run.output_check = "not-checked"
    if settings.rollback_thresholds:
        _likelihoods(pair.target, prompts, tokenized, runs, lambda label: progress(bench.total, label))
    summary = summarize(runs, cost)
    notes += _mismatch_notes(summary)
    return BenchResult(
        schema=SCHEMA,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        suite={"name": suite.name, "version": suite.version, "prompts": [p.id for p in prompts]},
        settings=_settings_record(settings, pair, peers, auto_costs),
        machine=facts,
        models={"target": _file_info(pair.target_path), "draft": _file_info(pair.draft_path)},
        cost=cost,
        runs=runs,
        summary=summary,
        recommendation=recommend_overall(summary),
        best_predicted=best_predicted(summary),
        notes=notes,
    )


def describe(suite: Suite, settings: BenchSettings) -> str:
    """One line saying what the bench is about to measure."""
    n = min(len(suite.prompts), settings.limit or len(suite.prompts))
    sp = settings.sampling
    return (
        f"bench: {n} prompts from {suite.name}" + (f" (version {suite.version})" if suite.version is not None else "")
        + f", drafters {','.join(settings.drafters)}, draft lengths {','.join(map(str, settings.draft_lens))}, "
        f"{settings.repeats} repeats, {settings.max_tokens} tokens each, "
        + ("greedy" if sp.greedy else f"sampling at temp {sp.temperature:g}, top-k {sp.top_k}, top-p {sp.top_p:g}, base seed {settings.seed}")
    )  # fmt: skip


def require_lossless(result: BenchResult) -> None:
    """A greedy output that speculation changed beyond a near-tie is a bug: fail, so the exit status says so."""
    changed = sum(s.mismatches for s in result.summary if s.engine == SPEC)
    if changed and result.settings["greedy"]:
        raise SpecError(f"{changed} greedy output(s) changed under speculation beyond a near-tie; see the notes above")


# --- the stages of run_bench ----------------------------------------------------------------


def _for_sampling(settings: BenchSettings, notes: list[str], notify: Notify) -> BenchSettings:
    """Under sampling: say that outputs are not compared."""
    if not settings.sampling.greedy:
        notes.append(sampling_note(settings))
    return settings


def _require_draft_model(pair: LoadedPair, settings: BenchSettings) -> None:
    needs_model = [d for d in settings.drafters if d in (MODEL, TREE)]
    if pair.draft is None and needs_model:
        raise SpecError(f"--drafter {needs_model[0]} needs a draft model (pass --draft, or a preset with one)")


def _longest_draft(settings: BenchSettings) -> int:
    """The longest draft any configuration may verify in one pass."""
    g = max(settings.draft_lens) if any(d != AUTO for d in settings.drafters) else 0
    return max(g, AUTO_MAX_DRAFT) if AUTO in settings.drafters else g


def _tokenize(pair: LoadedPair, suite: Suite, settings: BenchSettings) -> tuple[list[BenchPrompt], list[list[int]]]:
    """The prompts to run and their tokens; a prompt that cannot fit its budget in the context is an error."""
    target = pair.target
    prompts = suite.prompts[: settings.limit] if settings.limit else list(suite.prompts)
    tokenized = [target.tokenize(p.text) for p in prompts]
    n_ctx = min(target.n_ctx, pair.draft.n_ctx) if pair.draft is not None else target.n_ctx
    for p, toks in zip(prompts, tokenized):
        need = len(toks) + settings.max_tokens + _longest_draft(settings) + 1
        if need > n_ctx:
            raise SpecError(
                f"prompt {p.id!r} is {len(toks)} tokens; with --max-tokens {settings.max_tokens} it needs a context of "
                f"{need} tokens, the models have {n_ctx}; use a larger --ctx"
            )
    return prompts, tokenized


def _busy_notes(facts: dict) -> list[str]:
    busy, cpus = facts.get("cpu_busy_share_at_start"), facts.get("logical_cpus") or 1
    if busy is None or busy < BUSY_SHARE:
        return []
    # llama.cpp's worker threads spin while they wait for each other: with the cores taken,
    # every figure gets slower and far noisier, not just a bit.
    return [
        f"the machine was busy when the bench started (other programs used {100 * busy:.0f} % of {cpus} CPUs); "
        "expect noisy figures"
    ]


def _silent_prompt_notes(prompts: Sequence[BenchPrompt], runs: Sequence[Run]) -> list[str]:
    """Prompts on which the target alone generated nothing: no rate there to compare."""
    target_only = [r for r in runs if r.config == Config(SPEC, TARGET)]
    silent = [p.id for p in prompts if not any(r.generated for r in target_only if r.prompt_id == p.id)]
    if not silent or not any(r.error is None for r in target_only):
        return []
    return [
        f"the target alone generated no token on {', '.join(silent)} (it ended the text at once); "
        "nothing was measured there, so it is left out of tok/s and speedups (an instruct model may need its chat "
        "format: spec chat, or your own --prompts)"
    ]  # fmt: skip


def _departures(runs: Sequence[Run]) -> None:
    """Lossy runs (a rollback threshold) are not checked but measured: where each parts from the target alone."""
    base = {r.prompt_id: r.tokens for r in runs if r.config == Config(SPEC, TARGET) and r.error is None and r.tokens is not None}
    for r in runs:
        if r.rollback and r.error is None and r.tokens is not None and r.prompt_id in base:
            r.output_check = "lossy"
            r.departs_at = first_difference(base[r.prompt_id], r.tokens)


def _likelihoods(target, prompts: Sequence[BenchPrompt], tokenized: Sequence[Sequence[int]], runs: Sequence[Run],
                 step: Callable[[str], None]) -> None:  # fmt: skip
    """With a rollback sweep: the target scores the text of each of spec's runs (what the lossy rows cost)."""
    tokens_of = {p.id: t for p, t in zip(prompts, tokenized)}
    scored: dict[tuple[str, tuple[int, ...]], float | None] = {}  # equal texts (greedy repeats) are scored once
    for r in runs:
        if r.engine == SPEC and r.drafter != CONTROL:
            step(f"the target scores {r.config.label} · {r.prompt_id}")
            if r.error is None and r.tokens:
                key = (r.prompt_id, tuple(r.tokens))
                if key not in scored:
                    scored[key] = mean_logprob(target, tokens_of[r.prompt_id], r.tokens)
                r.logprob = scored[key]


def _mismatch_notes(summary: Sequence[ConfigSummary]) -> list[str]:
    return [
        f"{s.label}: {s.mismatches} greedy output(s) differ from spec's target-only decoding where the "
        "target is not near a tie (see output_check in --json/--csv)"
        for s in summary
        if s.mismatches
    ]


def _settings_record(settings: BenchSettings, pair: LoadedPair, peers: _Peers, auto_costs: CostCurve | None) -> dict:
    """The settings as the JSON file records them."""
    greedy, sp, reference = settings.sampling.greedy, settings.sampling, peers.reference
    return {
        "draft_lens": list(settings.draft_lens), "repeats": settings.repeats, "max_tokens": settings.max_tokens,
        "warmup": settings.warmup, "greedy": greedy, "temp": sp.temperature, "top_k": sp.top_k, "top_p": sp.top_p,
        "seed": None if greedy else settings.seed, "tie_tolerance": TIE_TOLERANCE if greedy else None,
        "ctx": pair.target.n_ctx,
        "reference": str(reference.speculative) if reference else None,
        "reference_plain": str(reference.plain) if reference and reference.plain else None,
        "lookup": peers.lookup is not None,
        "lookup_num_pred_tokens": peers.lookup.num_pred_tokens if peers.lookup is not None else None,
        "drafters": list(settings.drafters), "auto_max_draft": AUTO_MAX_DRAFT, "control": settings.control,
        "auto_cost_curve": asdict(auto_costs) if auto_costs is not None else None,
        "rollback_thresholds": list(settings.rollback_thresholds),
        "lossy": any(settings.rollback_thresholds),
    }  # fmt: skip


# --- the peers ----------------------------------------------------------------------------------


@dataclass
class _Peers:
    reference: ref_mod.Reference | None = None
    ref_settings: ref_mod.ReferenceSettings | None = None
    lookup: object | None = None  # lookup_peer.LookupPeer, imported only when asked for

    def close(self) -> None:
        if self.lookup is not None:
            self.lookup.close()


def _peers(pair: LoadedPair, settings: BenchSettings, tokenized: list, notes: list[str], notify: Notify) -> _Peers:
    """llama.cpp's reference and llama-cpp-python's prompt lookup, where asked for.

    A problem with a peer is noted and the rest of the bench goes on without it.
    """
    peers = _Peers()
    try:
        peers.reference = ref_mod.locate(settings.reference)
    except ref_mod.ReferenceError as e:
        notes.append(f"reference skipped: {e}")
        notify(f"warning: {e}; the bench goes on without llama.cpp's reference")
    if peers.reference is not None:
        peers.ref_settings = _reference_settings(pair, settings, peers.reference, notes)
    if settings.lookup and not settings.sampling.greedy:
        notes.append("prompt-lookup peer skipped: it decodes greedily only (lookup_peer.py)")
        notify("warning: --lookup is greedy only; skipped under sampling")
    elif settings.lookup:
        try:
            from .lookup_peer import LookupPeer

            longest = max(len(t) for t in tokenized)
            peers.lookup = LookupPeer(
                pair.target_path, n_ctx=longest + settings.max_tokens + 64, n_threads=pair.target.n_threads,
                n_gpu_layers=pair.target.n_gpu_layers,
            )  # fmt: skip
        except SpecError as e:
            notes.append(f"prompt-lookup peer skipped: {e}")
            notify(f"warning: {e}")
    return peers


def _reference_settings(pair: LoadedPair, settings: BenchSettings, reference: ref_mod.Reference, notes: list[str]):
    target, draft = pair.target, pair.draft
    if draft is None:
        notes.append("llama.cpp's draft-model rows skipped: no draft model (its target-only and ngram-mod rows still run)")
    if not settings.sampling.greedy:
        notes.append(
            "llama.cpp's reference verifies by sampling the target and keeping drafts while they match, not by "
            "rejection sampling: under sampling its acceptance follows another rule and is not comparable with spec's"
        )
    if reference.plain is None:
        notes.append(f"{ref_mod.PLAIN_NAME} not found beside {reference.speculative}; no llama.cpp target-only figure")
    return ref_mod.ReferenceSettings(
        target=pair.target_path, draft=pair.draft_path if draft is not None else None, max_tokens=settings.max_tokens,
        ctx=target.n_ctx, threads=target.n_threads, ngl=target.n_gpu_layers,
        ngl_draft=draft.n_gpu_layers if draft is not None else 0,
        temp=settings.sampling.temperature, top_k=settings.sampling.top_k, top_p=settings.sampling.top_p,
    )  # fmt: skip


# --- one bench's runs ------------------------------------------------------------------------


class _Bench:
    """The runs of one bench: each configuration on each prompt, and what went wrong on the way."""

    def __init__(
        self, runner: Runner, peers: _Peers, settings: BenchSettings, prompts: Sequence[BenchPrompt],
        tokenized: Sequence[Sequence[int]], auto_costs: CostCurve | None, notes: list[str], notify: Notify,
        progress: Progress,
    ):  # fmt: skip
        self.runner, self.peers, self.settings = runner, peers, settings
        self.prompts, self.tokenized, self.auto_costs = prompts, tokenized, auto_costs
        self.notes, self.notify, self.progress = notes, notify, progress
        self.total = 0  # steps announced to progress
        self.dead: dict[str, str] = {}  # engine -> why it stopped being run
        self.overshot: set[str] = set()  # reference configurations already noted for running past the budget

    def warm_up(self, configs: Sequence[Config]) -> None:
        for cfg in configs:
            self.progress(self.total, f"warm-up: {cfg.label}")
            self.run(cfg, 0, min(WARMUP_TOKENS, self.settings.max_tokens), -1)

    def measure(self, plan: Sequence[tuple[int, int, Config]], costs: CostSource, max_k: int) -> tuple[list[Run], CostCurve]:
        """The schedule's runs, and the median of the cost curves sampled before them and after each prompt's block."""
        self.progress(self.total, "measuring the cost curve")
        curves = [costs.sample(self.tokenized[0], max_k)]
        runs: list[Run] = []
        for order, (r, i, cfg) in enumerate(plan):
            self.progress(self.total, f"{cfg.label} · {self.prompts[i].id} · repeat {r + 1}/{self.settings.repeats}")
            run = self.run(cfg, i, self.settings.max_tokens, r)
            run.repeat, run.order = r, order
            runs.append(run)
            if order + 1 == len(plan) or plan[order + 1][:2] != (r, i):
                self.progress(self.total, f"cost curve · {self.prompts[i].id}")
                curves.append(costs.sample(self.tokenized[i], max_k))
        return runs, median_curve(curves)

    def run(self, cfg: Config, i: int, max_tokens: int, repeat: int) -> Run:
        """Configuration cfg on prompt i; repeat -1 is the warm-up. A peer that fails is not run again."""
        prompt = self.prompts[i]
        seed = None if self.settings.sampling.greedy else run_seed(self.settings.seed, i, repeat)
        base = dict(engine=cfg.engine, mode=cfg.mode, draft_len=cfg.draft_len, prompt_id=prompt.id, category=prompt.category,
                    repeat=0, order=0, drafter=cfg.drafter, seed=seed)  # fmt: skip
        if cfg.engine in self.dead:
            return Run(**base, error=self.dead[cfg.engine])
        if cfg.engine == SPEC:
            return self._spec(cfg, i, max_tokens, seed)
        try:
            if cfg.engine == LLAMA_CPP:
                return self._reference(cfg, i, max_tokens, repeat, seed, base)
            r = self.peers.lookup.run("plain" if cfg.mode == TARGET else "lookup", self.tokenized[i], max_tokens)
            return Run(**base, generated=r.generated, seconds=r.seconds, tokens_per_second=r.tokens_per_second, tokens=r.tokens)
        except SpecError as e:
            self.dead[cfg.engine] = str(e)
            self.notes.append(f"{cfg.engine} stopped after an error: {e}")
            self.notify(f"warning: {cfg.engine}: {e}; the bench goes on without it")
            return Run(**base, error=str(e))

    def _spec(self, cfg: Config, i: int, max_tokens: int, seed: int | None) -> Run:
        drafter = cfg.drafter if cfg.drafter in DRAFTERS else MODEL  # "" and the control are the target alone
        opts = GenerateOptions(max_tokens=max_tokens, draft_len=cfg.draft_len, sampling=self.settings.sampling, seed=seed,
                               rollback_threshold=cfg.rollback or None)  # fmt: skip
        run = self.runner.run(self.tokenized[i], drafter, opts, self.auto_costs)
        run.prompt_id, run.category, run.drafter = self.prompts[i].id, self.prompts[i].category, cfg.drafter
        run.rollback = cfg.rollback
        return run

    def _reference(self, cfg: Config, i: int, max_tokens: int, repeat: int, seed: int | None, base: dict) -> Run:
        ref, s = self.peers.reference, self.peers.ref_settings
        s = replace(s, max_tokens=max_tokens, seed=seed if seed is not None else s.seed)
        text = self.prompts[i].text
        if cfg.mode == TARGET:
            r = ref_mod.run_plain(ref, s, text)
        elif cfg.drafter == NGRAM:
            r = ref_mod.run_ngram(ref, s, text)
        else:
            r = ref_mod.run_speculative(ref, s, text, cfg.draft_len)
        if repeat >= 0 and cfg.mode == SPECULATIVE and r.generated > 1.25 * max_tokens and cfg.label not in self.overshot:
            # llama-speculative-simple checks its budget only between passes, so one long accepted
            # draft can run far past it; its tok/s then covers text spec's runs never reach.
            self.overshot.add(cfg.label)
            self.notes.append(f"{cfg.label} decoded {r.generated} tokens for a budget of {max_tokens} (a long draft "
                              "accepted past it); its tok/s counts them all")  # fmt: skip
        return Run(**base, generated=r.generated, seconds=r.seconds, tokens_per_second=r.tokens_per_second,
                   drafted=r.drafted, accepted=r.accepted)  # fmt: skip


# --- the real collaborators ------------------------------------------------------------------


class MachineCosts:
    """Cost curves measured on the loaded pair (calibrate.py)."""

    def __init__(self, pair: LoadedPair, notify: Notify = lambda s: None):
        self.pair = pair
        self.notify = notify

    def sample(self, context: Sequence[int], max_k: int) -> CostCurve:
        return measure_costs(self.pair.target, self.pair.draft, context, max_k, samples=1)

    def calibrated(self) -> CostCurve:
        # read (or, the first time on this machine, measured) as `spec run` does
        return cached_costs(self.pair.target, self.pair.draft, AUTO_MAX_DRAFT + 1, self.notify)


class EngineRunner:
    """spec's own decoding of one configuration: a fresh strategy and decode.Engine on the loaded pair.

    Every run gets a new strategy, so neither a draft cache nor an acceptance history learnt
    on an earlier run carries over.
    """

    def __init__(self, pair: LoadedPair, overlap: str = "off"):
        self.pair = pair
        self.overlap = overlap  # --overlap for the rows with a draft model (pipeline.py)

    def run(self, prompt: Sequence[int], drafter: str, opts: GenerateOptions, auto_costs: CostCurve | None = None) -> Run:
        strategy = self._strategy(drafter, opts.draft_len, auto_costs)
        self.pair.target.reset()
        if self.pair.draft is not None:
            self.pair.draft.reset()
        # generate() has the draft read the prompt off the clock, as the target does: a
        # prefill is not what a draft length changes.
        overlap = self.overlap if overlap_drafter(strategy) is not None else "off"
        res = Engine(self.pair.target, strategy=strategy, overlap=overlap).generate(list(prompt), opts)
        return _spec_run(res.stats, list(res.tokens), strategy, drafter, opts)

    def _strategy(self, drafter: str, g: int, auto_costs: CostCurve | None):
        if drafter == AUTO:
            if auto_costs is None:
                raise ValueError("the auto drafter needs its cost curve (CostSource.calibrated)")
            return build_strategy(self.pair, ModelChoice(drafter=AUTO), None, costs=auto_costs)
        return build_strategy(self.pair, ModelChoice(drafter=drafter), g) if g > 0 else None


def _spec_run(s: Stats, tokens: list[int], strategy, drafter: str, opts: GenerateOptions) -> Run:
    """A spec generation's Run record; strategy None is the target alone."""
    g = opts.draft_len
    drafting = strategy is not None
    adaptive = isinstance(strategy, AdaptiveStrategy)
    return Run(
        engine=SPEC, mode=SPECULATIVE if drafting else TARGET, draft_len=g if drafting else 0,
        prompt_id="", category="", repeat=0, order=0,
        generated=s.generated, seconds=s.t_total, tokens_per_second=s.tokens_per_second,
        drafted=s.drafted, accepted=s.accepted, target_passes=s.target_passes,
        accept_hist=_pad(s.accept_hist, (AUTO_MAX_DRAFT if drafter == AUTO else g) + 1) if drafting else None,
        t_target_decode=s.t_target, t_draft=s.t_draft, t_draft_decode=s.t_draft_decode,
        t_outside_decode=max(0.0, s.t_total - s.t_target - s.t_draft_decode), stop_reason=s.stop_reason,
        tokens=tokens, drafter=drafter if drafting else "",
        rounds_by_drafter=dict(strategy.rounds) if drafting else None,
        lengths_used={int(k): int(v) for k, v in strategy.lengths.items()} if adaptive else None,
        strategy_notes=list(s.notes) if drafting else None,
        drafters_off=list(strategy.disabled) if adaptive else None,
        seed=opts.seed,
    )  # fmt: skip


def median_curve(curves: Sequence[CostCurve]) -> CostCurve:
    """Pointwise median of cost curves sampled at different moments of the run."""
    return CostCurve(
        target_ms=[float(x) for x in np.median([c.target_ms for c in curves], axis=0)],
        draft_ms=float(np.median([c.draft_ms for c in curves])),
        draft2_ms=float(np.median([c.draft2_ms for c in curves])),
    )


def _pad(hist: Sequence[int], n: int) -> list[int]:
    h = list(hist)[:n]
    return h + [0] * (n - len(h))


def cpu_busy_share(seconds: float = 0.5) -> float | None:
    """Share of all CPU time that was not idle over the next `seconds` (Linux; None elsewhere).

    Taken while spec itself waits, so it is what other programs use. The load average
    would lag by a minute and still count a program that has just finished.
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(x) for x in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return idle, sum(values[:8])

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else None


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        llama_version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        llama_version = None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "llama_cpp_python": llama_version,
        "load_average_1min_at_start": load,
        "cpu_busy_share_at_start": cpu_busy_share(),
    }


def _file_info(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    return {"path": str(path), "name": path.name, "bytes": size}
