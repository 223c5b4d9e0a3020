"""From the runs to what to use: one summary per configuration, and the recommendation.

Speedups are medians of ratios taken within a block of the schedule (each run against its
own engine's target-only run on the same prompt and repeat, which ran moments before or
after it), not ratios of pooled rates, so that drift over the minutes of a bench cancels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import speedup
from ..calibrate import CostCurve
from .schedule import REF_NGRAM, Config, Run
from .settings import AUTO, CONTROL, LLAMA_CPP, MODEL, NGRAM, SPEC, SPECULATIVE, TARGET, TREE

# `auto` must not lose: a prompt below this share of the target alone counts as a loss.
AUTO_FLOOR = 0.97


@dataclass
class ConfigSummary:
    engine: str
    mode: str
    draft_len: int
    label: str
    runs: int
    failed: int
    tokens_per_second: float  # median over runs
    speedup: float | None  # median over (prompt, repeat) of this run's tok/s over its own-engine baseline's
    predicted: float | None  # median over runs of the model's speedup at each run's acceptance (spec only)
    acceptance_rate: float | None  # accepted / drafted
    alpha: float | None  # per-token acceptance fitted to the histogram
    tokens_per_pass: float | None
    accept_hist: list[int] | None
    outside_decode: float | None  # share of wall time outside both models' passes, waits included (spec only)
    vs_reference: float | None  # spec tok/s / llama.cpp tok/s, same draft length, median over (prompt, repeat)
    mismatches: int = 0
    near_ties: int = 0
    drafter: str = ""
    by_prompt: dict[str, float] = field(default_factory=dict)  # prompt id -> median over repeats of the speedup
    worst_prompt: float | None = None  # the smallest of by_prompt
    rounds_by_drafter: dict[str, int] | None = None  # summed over runs (spec speculative only)
    lengths_used: dict[int, int] | None = None
    strategy_notes: list[str] = field(default_factory=list)  # distinct Run.drafters_off: why auto left a drafter out
    rollback: float = 0.0  # BiLD's rollback threshold (lossy above 0): never recommended
    departed: float | None = None  # lossy, greedy: share of the runs whose output parts from the target alone's
    first_departure: float | None = None  # and the median token position where those part
    # with a rollback sweep: the target's mean log-likelihood per token of this row's text, and
    # its mean difference from the target alone's on the same prompt and repeat (0 for lossless
    # greedy rows; below 0 where the text is one the target finds less likely: exp(-gap) is the
    # perplexity ratio)
    logprob: float | None = None
    logprob_gap: float | None = None


Rates = dict[tuple[str, int], list[float]]  # (prompt id, repeat) -> tok/s of the runs there


def summarize(runs: list[Run], cost: CostCurve) -> list[ConfigSummary]:
    """One summary per configuration, in the order the configurations first ran (the control under the target)."""
    return [_summarize(cfg, runs, cost) for cfg in _display_order(runs)]


def _display_order(runs: Sequence[Run]) -> list[Config]:
    order = list(dict.fromkeys(r.config for r in runs))
    control, target = Config(SPEC, TARGET, 0, CONTROL), Config(SPEC, TARGET)
    if control in order and target in order:  # shown right under the target, wherever it ran
        order.remove(control)
        order.insert(order.index(target) + 1, control)
    return order


def _rates(runs: Sequence[Run], cfg: Config) -> Rates:
    # Keyed by prompt and repeat: a run is compared with its baseline from the same block of
    # the schedule, which ran moments before or after it.
    out: Rates = {}
    for r in runs:
        if r.config == cfg and r.error is None and r.seconds > 0 and r.generated > 0:
            out.setdefault((r.prompt_id, r.repeat), []).append(r.tokens_per_second)
    return out


def _summarize(cfg: Config, runs: Sequence[Run], cost: CostCurve) -> ConfigSummary:
    mine = [r for r in runs if r.config == cfg and r.error is None]
    # A run that generated nothing (the model ended the text at once) has no rate to speak of.
    rates = [r.tokens_per_second for r in mine if r.generated > 0]
    here, base = _rates(runs, cfg), _rates(runs, cfg.baseline)
    by_prompt = _by_prompt(mine, here, base) if base and mine else {}
    drafted = sum(r.drafted or 0 for r in mine)
    hist = _accept_hist(mine) if cfg.engine == SPEC and cfg.mode == SPECULATIVE else None
    theirs = _reference_rates(runs, cfg) if cfg.engine == SPEC else {}
    return ConfigSummary(
        engine=cfg.engine, mode=cfg.mode, draft_len=cfg.draft_len, label=cfg.label, runs=len(mine),
        failed=sum(1 for r in runs if r.config == cfg and r.error is not None),
        tokens_per_second=speedup.median(rates) if rates else float("nan"),
        speedup=speedup.median_ratio(here, base) if base and mine else None,
        predicted=_prediction(cfg, mine, cost),
        acceptance_rate=sum(r.accepted or 0 for r in mine) / drafted if drafted else None,
        alpha=speedup.acceptance_from_hist(hist, cfg.draft_len) if hist and cfg.kind == MODEL else None,
        tokens_per_pass=_tokens_per_pass(mine) if cfg.engine == SPEC else None,
        accept_hist=[int(x) for x in hist] if hist is not None else None,
        outside_decode=_outside_share(mine) if cfg.engine == SPEC else None,
        vs_reference=speedup.median_ratio(here, theirs) if theirs and mine else None,
        mismatches=sum(1 for r in mine if r.output_check == "MISMATCH"),
        near_ties=sum(1 for r in mine if r.output_check == "near-tie"),
        drafter=cfg.drafter, by_prompt=by_prompt, worst_prompt=min(by_prompt.values()) if by_prompt else None,
        rounds_by_drafter=_sum_counts([r.rounds_by_drafter for r in mine]),
        lengths_used=_sum_counts([r.lengths_used for r in mine]),
        strategy_notes=list(dict.fromkeys(n for r in mine for n in (r.drafters_off or []))),
        rollback=cfg.rollback, **_departure(mine), **_likelihood(mine, runs, cfg),
    )  # fmt: skip


def _departure(mine: Sequence[Run]) -> dict:
    lossy = [r for r in mine if r.output_check == "lossy"]
    if not lossy:
        return {}
    parted = [r.departs_at for r in lossy if r.departs_at is not None]
    return {"departed": len(parted) / len(lossy), "first_departure": float(np.median(parted)) if parted else None}


def _likelihood(mine: Sequence[Run], runs: Sequence[Run], cfg: Config) -> dict:
    scored = [r for r in mine if r.logprob is not None]
    if not scored:
        return {}
    base = {(r.prompt_id, r.repeat): r.logprob for r in runs if r.config == cfg.baseline and r.logprob is not None}
    gaps = [r.logprob - base[r.prompt_id, r.repeat] for r in scored if (r.prompt_id, r.repeat) in base]
    return {"logprob": float(np.mean([r.logprob for r in scored])), "logprob_gap": float(np.mean(gaps)) if gaps else None}


def _by_prompt(mine: Sequence[Run], here: Rates, base: Rates) -> dict[str, float]:
    """Per prompt, the median over its repeats of the speedup."""
    out = {}
    for pid in dict.fromkeys(r.prompt_id for r in mine):
        x = speedup.median_ratio({k: v for k, v in here.items() if k[0] == pid}, base)
        if np.isfinite(x):
            out[pid] = x
    return out


def _accept_hist(mine: Sequence[Run]) -> list | None:
    return list(np.sum([r.accept_hist for r in mine if r.accept_hist], axis=0).astype(int)) if mine else None


def _tokens_per_pass(mine: Sequence[Run]) -> float | None:
    passes = sum(r.target_passes or 0 for r in mine)
    return sum(r.generated for r in mine) / passes if passes else None


def _outside_share(mine: Sequence[Run]) -> float | None:
    wall = sum(r.seconds for r in mine)
    return sum(r.t_outside_decode or 0.0 for r in mine) / wall if wall > 0 else None


def _prediction(cfg: Config, mine: Sequence[Run], cost: CostCurve) -> float | None:
    """spec's target alone is 1.0 by definition; of the drafters only the draft model fits the model.

    The Leviathan et al. model fits a draft model that always drafts g tokens; n-gram proposals
    stop where the match ends, and auto changes g every round.
    """
    if cfg.engine != SPEC:
        return None
    if cfg.mode != SPECULATIVE:
        return 1.0
    if cfg.kind != MODEL or not mine or not np.isfinite(cost.draft_ms) or cfg.draft_len + 1 > len(cost.target_ms):
        return None
    return _predicted(mine, cfg.draft_len, cost)


def _reference_rates(runs: Sequence[Run], cfg: Config) -> Rates:
    """The llama.cpp rates a spec configuration is held against ("vs ref"), if there is a counterpart."""
    if cfg.mode != SPECULATIVE:
        return _rates(runs, Config(LLAMA_CPP, TARGET))
    if cfg.kind == MODEL:
        return _rates(runs, Config(LLAMA_CPP, SPECULATIVE, cfg.draft_len))
    if cfg.kind == AUTO:
        return _rates(runs, REF_NGRAM)  # auto against llama.cpp's context drafter
    return {}


def _predicted(runs: Sequence[Run], g: int, cost: CostCurve) -> float | None:
    """The prediction built the way the measured speedup is: one value per run, then the median.

    Acceptance differs a lot from prompt to prompt (copying is easy, a story is not), and
    the median of per-run speedups is not the speedup at the pooled acceptance rate, so
    each run's acceptance goes through the model on its own.
    """
    preds = []
    for r in runs:
        a = speedup.acceptance_from_hist(r.accept_hist, g) if r.accept_hist else None
        if a is not None:
            preds.append(speedup.predicted_speedup(a, g, cost.target_ms, cost.draft_ms, cost.draft2_ms))
    return speedup.median(preds) if preds else None


def best_predicted(summary: Sequence[ConfigSummary]) -> dict | None:
    """How the prediction did on the draft-model rows: the length it ranks first (with its
    predicted and measured speedups) and its largest error. Only a check on the model: what to
    use comes from the measurements alone (recommend_overall)."""
    rows = [s for s in summary if s.engine == SPEC and s.mode == SPECULATIVE and (s.drafter or MODEL) == MODEL and not s.rollback
            and s.predicted is not None and s.speedup is not None and np.isfinite(s.speedup) and s.speedup > 0]  # fmt: skip
    if not rows:
        return None
    top = max(rows, key=lambda s: (s.predicted, -s.draft_len))
    worst = max(rows, key=lambda s: abs(s.predicted / s.speedup - 1.0))
    return {
        "draft_len": top.draft_len, "speedup": top.predicted, "measured": top.speedup,
        "worst_draft_len": worst.draft_len, "worst_error": worst.predicted / worst.speedup - 1.0,
    }  # fmt: skip


def best_per_drafter(summary: Sequence[ConfigSummary]) -> list[ConfigSummary]:
    """The control, then per drafter the spec configuration with the best median speedup (auto as it is)."""
    out = [s for s in summary if s.engine == SPEC and s.drafter == CONTROL]
    for kind in (MODEL, NGRAM, TREE, AUTO):
        rows = [s for s in summary if s.engine == SPEC and s.mode == SPECULATIVE and (s.drafter or MODEL) == kind
                and not s.rollback and s.speedup is not None and np.isfinite(s.speedup)]  # fmt: skip
        if rows:
            out.append(max(rows, key=lambda s: (s.speedup, -s.draft_len)))
    return out


def _sum_counts(counts: Sequence[dict | None]):
    total: dict = {}
    for c in counts:
        for k, v in (c or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return dict(sorted(total.items(), key=lambda kv: str(kv[0]))) if total else None


def _how(s: ConfigSummary) -> str:
    """The `spec run` options that reproduce a configuration."""
    if s.drafter == AUTO:
        return "--drafter auto"
    return f"--drafter {s.drafter or MODEL} --draft-len {s.draft_len}"


def recommend_overall(summary: Sequence[ConfigSummary]) -> dict:
    """What to use on this machine, from the measured speedups of every spec configuration.

    The draft-model sweep keeps its own verdict (`model`: the draft length to use, or
    that it does not pay). The overall pick is the fastest configuration, except that
    auto is preferred when it comes within AUTO_FLOOR of it: it adapts to the text, where
    a fixed choice was only best on these prompts.
    """
    spec_rows = [s for s in summary if s.engine == SPEC and s.mode == SPECULATIVE and not s.rollback]  # lossless only
    model = {s.draft_len: s.speedup for s in spec_rows if (s.drafter or MODEL) == MODEL}
    model_rec = speedup.recommend(model) if model else None
    cands = [s for s in spec_rows if s.speedup is not None and np.isfinite(s.speedup)]
    out = {
        "drafter": None, "draft_len": None, "speedup": float("nan"),
        "model_draft_len": model_rec.draft_len if model_rec else None,
        "model_message": model_rec.message if model_rec else None,
    }  # fmt: skip
    if not cands:
        out["message"] = "no speculative configuration produced a measurement"
        return out
    best = max(cands, key=lambda s: (s.speedup, s.drafter == AUTO, -s.draft_len))
    auto = next((s for s in cands if s.drafter == AUTO), None)
    if auto is not None and auto.speedup >= AUTO_FLOOR * best.speedup:
        best = auto

    def worst(s: ConfigSummary) -> str:
        return f", slowest prompt {s.worst_prompt:.2f}x" if s.worst_prompt is not None else ""

    if best.speedup < speedup.MIN_WORTHWHILE_SPEEDUP and best is auto and auto.speedup >= AUTO_FLOOR:
        # Little to gain on these prompts, but auto does not lose: it drafts only where
        # its guesses land, and a user's own text may repeat itself more than these.
        out.update(drafter=AUTO, draft_len=None, speedup=auto.speedup)
        out["message"] = (
            f"speculation gains little on these prompts with this pair: --drafter auto (the default) runs at "
            f"{auto.speedup:.2f}x the target alone{worst(auto)}, drafting only where its guesses land; "
            "no fixed configuration pays"
        )
        return out
    if best.speedup < speedup.MIN_WORTHWHILE_SPEEDUP:
        msg = (
            f"speculation does not pay on this machine with this pair: the best configuration ({_how(best)}) "
            f"runs at {best.speedup:.2f}x the target alone; use --no-spec"
        )
        if auto is not None and auto is not best:
            msg += f"; --drafter auto: {auto.speedup:.2f}x{worst(auto)}"
        out["message"] = msg
        out["speedup"] = best.speedup
        return out
    out.update(drafter=best.drafter or MODEL, draft_len=best.draft_len or None, speedup=best.speedup)
    msg = f"use {_how(best)}" + (" (the default)" if best.drafter == AUTO else "")
    msg += f": {best.speedup:.2f}x the target alone{worst(best)}"
    if auto is not None and auto is not best:
        msg += f"; --drafter auto: {auto.speedup:.2f}x{worst(auto)}"
    out["message"] = msg
    return out
