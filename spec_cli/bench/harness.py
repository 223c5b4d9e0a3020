"""Running the bench: every configuration on every prompt, timed, from fresh caches.

`run_bench` takes the stages in order: check the settings and the prompts' length, set up
the peers (llama.cpp's reference, llama-cpp-python's prompt lookup; a broken one is noted
and left out), warm up, run the schedule (schedule.py), the greedy check (checks.py), the
summary and the recommendation (summary.py). Before each generation both models' caches
are cleared and the prompt is evaluated off the clock, so no run profits from a cache that
an earlier run left behind.

It also samples the machine's cost curve (one target llama_decode of k tokens, one draft
step; calibrate.py) once before the runs and once after every prompt's block of runs, so
that the curve sees the same machine as the runs; the median curve and the measured
acceptance predict each draft length's speedup (speedup.py), printed beside the measured one.
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

import numpy as np

from ..calibrate import CostCurve, cached_costs, measure_costs
from ..decode import Engine, GenerateOptions
from ..errors import SpecError
from ..sampling import SamplingParams
from ..session import AUTO_MAX_DRAFT, LoadedPair, ModelChoice, build_strategy
from . import reference as ref_mod
from .checks import TIE_TOLERANCE, check_outputs, sampling_note
from .schedule import Config, Run, configurations, schedule
from .settings import (
    AUTO,
    DRAFTERS,
    GREEDY,
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
from .suite import Suite
from .summary import ConfigSummary, best_predicted, recommend_overall, summarize

SCHEMA = "spec-bench/2"
COST_CURVE_MAX_K = 16
WARMUP_TOKENS = 8
BUSY_SHARE = 0.5  # other programs using more than this share of the CPUs at the start is worth a warning


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
    progress: Callable[[int, str], None] = lambda total, label: None,
    notify: Callable[[str], None] = lambda s: None,
) -> BenchResult:
    """Run the whole benchmark. progress(total, label) is called once per step."""
    settings.check()
    greedy = settings.sampling.greedy
    notes: list[str] = []
    if not greedy:
        notes.append(sampling_note(settings))
        if TREE in settings.drafters:
            # TreeDrafter drafts its plain chain under sampling: the draft model's rows, measured twice.
            drafters = tuple(dict.fromkeys(MODEL if d == TREE else d for d in settings.drafters))
            settings = replace(settings, drafters=drafters)
            why = ("tree not measured under sampling: token trees are verified greedily only, and when sampling, --drafter "
                   "tree drafts the draft model's plain chain, which the model rows measure")  # fmt: skip
            notes.append(why)
            notify(f"note: {why}")
    needs_model = [d for d in settings.drafters if d in (MODEL, TREE)]
    if pair.draft is None and needs_model:
        raise SpecError(f"--drafter {needs_model[0]} needs a draft model (pass --draft, or a preset with one)")
    h = _Harness(pair, notify)
    target = pair.target
    prompts = suite.prompts[: settings.limit] if settings.limit else list(suite.prompts)
    tokenized = [target.tokenize(p.text) for p in prompts]
    gmax = max(settings.draft_lens) if any(d != AUTO for d in settings.drafters) else 0
    if AUTO in settings.drafters:
        gmax = max(gmax, AUTO_MAX_DRAFT)
    n_ctx = min(target.n_ctx, pair.draft.n_ctx) if pair.draft is not None else target.n_ctx
    for p, toks in zip(prompts, tokenized):
        need = len(toks) + settings.max_tokens + gmax + 1
        if need > n_ctx:
            raise SpecError(
                f"prompt {p.id!r} is {len(toks)} tokens; with --max-tokens {settings.max_tokens} it needs a context of "
                f"{need} tokens, the models have {n_ctx}; use a larger --ctx"
            )
    machine = machine_info(target.n_threads)
    busy, cpus = machine["cpu_busy_share_at_start"], machine["logical_cpus"] or 1
    if busy is not None and busy >= BUSY_SHARE:
        # llama.cpp's worker threads spin while they wait for each other, so when other
        # programs hold the cores every figure gets slower and far noisier, not just a bit.
        notes.append(
            f"the machine was busy when the bench started (other programs used {100 * busy:.0f} % of {cpus} CPUs); "
            "expect noisy figures"
        )

    reference, ref_settings, peer = _peers(pair, settings, tokenized, notes, notify)
    configs = configurations(settings, reference, peer is not None, pair.draft is not None)
    plan = schedule(len(prompts), configs, settings.repeats)
    warm = configs if settings.warmup else []
    n_blocks = settings.repeats * len(prompts)
    total = len(plan) + len(warm) + n_blocks + 1
    max_k = max(COST_CURVE_MAX_K, gmax + 1)
    dead: dict[str, str] = {}  # engine -> why it stopped being run
    overshot: set[str] = set()  # reference configurations already noted for running past the token budget

    def run_one(cfg: Config, i: int, max_tokens: int, repeat: int) -> Run:
        prompt, toks = prompts[i], tokenized[i]
        seed = None if greedy else run_seed(settings.seed, i, repeat)
        base = dict(engine=cfg.engine, mode=cfg.mode, draft_len=cfg.draft_len, prompt_id=prompt.id, category=prompt.category,
                    repeat=0, order=0, drafter=cfg.drafter, seed=seed)  # fmt: skip
        if cfg.engine in dead:
            return Run(**base, error=dead[cfg.engine])
        if cfg.engine == SPEC:
            drafter = cfg.drafter if cfg.drafter in DRAFTERS else MODEL
            run = h.run_spec(toks, cfg.draft_len, max_tokens, drafter, settings.sampling, seed)
            run.prompt_id, run.category, run.drafter = prompt.id, prompt.category, cfg.drafter
            return run
        try:
            if cfg.engine == LLAMA_CPP:
                s = replace(ref_settings, max_tokens=max_tokens, seed=seed if seed is not None else ref_settings.seed)
                if cfg.mode == TARGET:
                    r = ref_mod.run_plain(reference, s, prompt.text)
                elif cfg.drafter == NGRAM:
                    r = ref_mod.run_ngram(reference, s, prompt.text)
                else:
                    r = ref_mod.run_speculative(reference, s, prompt.text, cfg.draft_len)
                if repeat >= 0 and cfg.mode == SPECULATIVE and r.generated > 1.25 * max_tokens and cfg.label not in overshot:
                    # llama-speculative-simple checks its budget only between passes, so one long accepted
                    # draft can run far past it; its tok/s then covers text spec's runs never reach.
                    overshot.add(cfg.label)
                    notes.append(f"{cfg.label} decoded {r.generated} tokens for a budget of {max_tokens} (a long draft "
                                 "accepted past it); its tok/s counts them all")  # fmt: skip
                return Run(**base, generated=r.generated, seconds=r.seconds, tokens_per_second=r.tokens_per_second,
                           drafted=r.drafted, accepted=r.accepted)  # fmt: skip
            r = peer.run("plain" if cfg.mode == TARGET else "lookup", toks, max_tokens)
            return Run(**base, generated=r.generated, seconds=r.seconds, tokens_per_second=r.tokens_per_second, tokens=r.tokens)
        except SpecError as e:
            dead[cfg.engine] = str(e)
            notes.append(f"{cfg.engine} stopped after an error: {e}")
            notify(f"warning: {cfg.engine}: {e}; the bench goes on without it")
            return Run(**base, error=str(e))

    if AUTO in settings.drafters:
        h.auto_costs()  # read (or, the first time on this machine, measure) before anything is timed
    for cfg in warm:
        progress(total, f"warm-up: {cfg.label}")
        run_one(cfg, 0, min(WARMUP_TOKENS, settings.max_tokens), -1)

    progress(total, "measuring the cost curve")
    curves = [measure_costs(target, pair.draft, tokenized[0], max_k, samples=1)]
    runs: list[Run] = []
    for order, (r, i, cfg) in enumerate(plan):
        progress(total, f"{cfg.label} · {prompts[i].id} · repeat {r + 1}/{settings.repeats}")
        run = run_one(cfg, i, settings.max_tokens, r)
        run.repeat, run.order = r, order
        runs.append(run)
        if order + 1 == len(plan) or plan[order + 1][:2] != (r, i):
            # End of this prompt's block: one more sample of the cost curve, in this prompt's context.
            progress(total, f"cost curve · {prompts[i].id}")
            curves.append(measure_costs(target, pair.draft, tokenized[i], max_k, samples=1))
    cost = median_curve(curves)
    if peer is not None:
        peer.close()
    silent = [p.id for p in prompts if not any(r.generated for r in runs if r.prompt_id == p.id and r.config == Config(SPEC, TARGET))]
    if silent and any(r.config == Config(SPEC, TARGET) and r.error is None for r in runs):
        notes.append(
            f"the target alone generated no token on {', '.join(silent)} (it ended the text at once); "
            "nothing was measured there, so it is left out of tok/s and speedups (an instruct model may need its chat "
            "format: spec chat, or your own --prompts)"
        )  # fmt: skip

    if greedy:
        check_outputs(target, prompts, tokenized, runs)
    else:
        for run in runs:
            run.output_check = "not-checked"
    summary = summarize(runs, cost, settings.draft_lens)
    recommendation = recommend_overall(summary)
    for s in summary:
        if s.mismatches:
            notes.append(
                f"{s.label}: {s.mismatches} greedy output(s) differ from spec's target-only decoding where the "
                "target is not near a tie (see output_check in --json/--csv)"
            )
    return BenchResult(
        schema=SCHEMA,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        suite={"name": suite.name, "version": suite.version, "prompts": [p.id for p in prompts]},
        settings={
            "draft_lens": list(settings.draft_lens), "repeats": settings.repeats, "max_tokens": settings.max_tokens,
            "warmup": settings.warmup, "greedy": greedy, "temp": settings.sampling.temperature,
            "top_k": settings.sampling.top_k, "top_p": settings.sampling.top_p, "seed": None if greedy else settings.seed,
            "tie_tolerance": TIE_TOLERANCE if greedy else None, "ctx": target.n_ctx,
            "reference": str(reference.speculative) if reference else None,
            "reference_plain": str(reference.plain) if reference and reference.plain else None,
            "lookup": peer is not None, "lookup_num_pred_tokens": getattr(peer, "num_pred_tokens", None),
            "drafters": list(settings.drafters), "auto_max_draft": AUTO_MAX_DRAFT, "control": settings.control,
            "auto_cost_curve": asdict(h._auto_costs) if h._auto_costs is not None else None,
        },  # fmt: skip
        machine=machine,
        models={"target": _file_info(pair.target_path), "draft": _file_info(pair.draft_path)},
        cost=cost,
        runs=runs,
        summary=summary,
        recommendation=recommendation,
        best_predicted=best_predicted(summary),
        notes=notes,
    )


def _peers(pair: LoadedPair, settings: BenchSettings, tokenized: list, notes: list[str], notify: Callable[[str], None]):
    """llama.cpp's reference and llama-cpp-python's prompt lookup, where asked for.

    A problem with a peer is noted and the rest of the bench goes on without it.
    """
    greedy = settings.sampling.greedy
    target = pair.target
    reference = None
    ref_settings = None
    try:
        reference = ref_mod.locate(settings.reference)
    except ref_mod.ReferenceError as e:
        notes.append(f"reference skipped: {e}")
        notify(f"warning: {e}; the bench goes on without llama.cpp's reference")
    if reference is not None and pair.draft is None:
        notes.append("llama.cpp's draft-model rows skipped: no draft model (its target-only and ngram-mod rows still run)")
    if reference is not None:
        ref_settings = ref_mod.ReferenceSettings(
            target=pair.target_path, draft=pair.draft_path if pair.draft is not None else None, max_tokens=settings.max_tokens,
            ctx=target.n_ctx, threads=target.n_threads, ngl=target.n_gpu_layers,
            ngl_draft=pair.draft.n_gpu_layers if pair.draft is not None else 0,
            temp=settings.sampling.temperature, top_k=settings.sampling.top_k, top_p=settings.sampling.top_p,
        )  # fmt: skip
        if not greedy:
            notes.append(
                "llama.cpp's reference verifies by sampling the target and keeping drafts while they match, not by "
                "rejection sampling: under sampling its acceptance follows another rule and is not comparable with spec's"
            )
        if reference.plain is None:
            notes.append(f"{ref_mod.PLAIN_NAME} not found beside {reference.speculative}; no llama.cpp target-only figure")
    peer = None
    if settings.lookup and not greedy:
        notes.append("prompt-lookup peer skipped: it decodes greedily only (lookup_peer.py)")
        notify("warning: --lookup is greedy only; skipped under sampling")
    elif settings.lookup:
        try:
            from .lookup_peer import LookupPeer

            longest = max(len(t) for t in tokenized)
            peer = LookupPeer(
                pair.target_path, n_ctx=longest + settings.max_tokens + 64, n_threads=target.n_threads,
                n_gpu_layers=target.n_gpu_layers,
            )  # fmt: skip
        except SpecError as e:
            notes.append(f"prompt-lookup peer skipped: {e}")
            notify(f"warning: {e}")
    return reference, ref_settings, peer


class _Harness:
    def __init__(self, pair: LoadedPair, notify: Callable[[str], None]):
        self.pair = pair
        self.notify = notify
        self._auto_costs: CostCurve | None = None

    def auto_costs(self) -> CostCurve:
        """The cost curve `auto` decides from: the cached calibration `spec run` uses, read once."""
        if self._auto_costs is None:
            self._auto_costs = cached_costs(self.pair.target, self.pair.draft, AUTO_MAX_DRAFT + 1, self.notify)
        return self._auto_costs

    def run_spec(
        self, prompt: Sequence[int], g: int, max_tokens: int, drafter: str = MODEL,
        sampling: SamplingParams = GREEDY, seed: int | None = None,
    ) -> Run:  # fmt: skip
        """One generation from fresh caches; g = 0 with a drafter other than auto is the target alone.

        Every run gets a new strategy, so neither a draft cache nor an acceptance
        history learnt on an earlier run carries over.
        """
        target, draft = self.pair.target, self.pair.draft
        strategy = None
        if drafter == AUTO:
            costs = self.auto_costs()
            strategy = build_strategy(self.pair, ModelChoice(drafter=AUTO), None, costs=costs)
        elif g > 0:
            strategy = build_strategy(self.pair, ModelChoice(drafter=drafter), g)
        target.reset()
        if draft is not None:
            draft.reset()
        # generate() has the draft read the prompt off the clock, as the target does: a
        # prefill is not what a draft length changes.
        engine = Engine(target, strategy=strategy)
        opts = GenerateOptions(max_tokens=max_tokens, draft_len=g, sampling=sampling, seed=seed)
        res = engine.generate(list(prompt), opts)
        s = res.stats
        t_draft_decode = s.t_draft_decode
        hist_len = (AUTO_MAX_DRAFT if drafter == AUTO else g) + 1
        lengths = getattr(strategy, "lengths", None)
        run = Run(
            engine=SPEC, mode=SPECULATIVE if strategy is not None else TARGET, draft_len=g if strategy is not None else 0,
            prompt_id="", category="", repeat=0, order=0,
            generated=s.generated, seconds=s.t_total, tokens_per_second=s.tokens_per_second,
            drafted=s.drafted, accepted=s.accepted, target_passes=s.target_passes,
            accept_hist=_pad(s.accept_hist, hist_len) if strategy is not None else None,
            t_target_decode=s.t_target, t_draft=s.t_draft, t_draft_decode=t_draft_decode,
            t_outside_decode=max(0.0, s.t_total - s.t_target - t_draft_decode), stop_reason=s.stop_reason,
            tokens=list(res.tokens), drafter=drafter if strategy is not None else "",
            rounds_by_drafter=dict(strategy.rounds) if strategy is not None else None,
            lengths_used={int(k): int(v) for k, v in lengths.items()} if lengths is not None else None,
            strategy_notes=list(s.notes) if strategy is not None else None,
            seed=seed,
        )  # fmt: skip
        return run


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
