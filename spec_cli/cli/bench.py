"""`spec bench`: measure whether speculative decoding pays with a pair of models on this machine."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import ui
from ..bench import (
    AUTO,
    CONTROL,
    DEFAULT_DRAFT_LENS,
    DEFAULT_DRAFTERS,
    LLAMA_CPP,
    MODEL,
    NGRAM,
    SPEC,
    SUITE_DEFAULT_LIMIT,
    TREE,
    BenchResult,
    BenchSettings,
    EngineRunner,
    MachineCosts,
    best_per_drafter,
    check_paths,
    default_limit,
    describe,
    load_as,
    load_prompts_file,
    load_suite,
    parse_draft_lens,
    parse_drafters,
    parse_thresholds,
    require_lossless,
    run_bench,
    write_outputs,
)  # fmt: skip
from ..bench.reference import ENV_VAR
from ..loading import ModelChoice, load_pair
from ..pipeline import parse_overlap
from ..sampling import SamplingParams
from . import app
from .options import (
    Ctx,
    Draft,
    MaxTokens,
    Ngl,
    NglDraft,
    Overlap,
    Preset,
    Rpc,
    RpcDraft,
    Seed,
    Target,
    Temp,
    Threads,
    TopK,
    TopP,
)
from .selfdraft import render_search


@app.command("bench")
def bench_cmd(
    target: Target = None,
    draft: Draft = None,
    preset: Preset = None,
    prompts: Annotated[
        Optional[Path], typer.Option("--prompts", help='Your own prompts: one per line, or JSON lines with a "prompt" field.')
    ] = None,
    limit: Annotated[
        Optional[int],
        typer.Option(
            "--limit",
            help=f"Use the first N prompts (default: {SUITE_DEFAULT_LIMIT} of the bundled suite, one of each kind; every prompt of a --prompts file). 0 = all.",
        ),
    ] = None,
    drafter: Annotated[
        str,
        typer.Option(
            "--drafter",
            help="Drafters to measure, comma-separated: model, ngram and tree (self: the model rows with a draft cut from the target) are swept over --draft-lens; auto (spec run's default) chooses drafter and length itself.",
        ),
    ] = ",".join(DEFAULT_DRAFTERS),
    draft_lens: Annotated[str, typer.Option("--draft-lens", help="Draft lengths to sweep, comma-separated.")] = ",".join(
        map(str, DEFAULT_DRAFT_LENS)
    ),
    repeats: Annotated[int, typer.Option("--repeats", "-r", help="Measured runs of every prompt in every configuration.")] = 2,
    max_tokens: MaxTokens = 32,
    temp: Temp = 0.0,
    top_k: TopK = 40,
    top_p: TopP = 1.0,
    seed: Seed = None,  # under sampling, the base of every run's seed (bench.run_seed); None means 0
    warmup: Annotated[
        bool, typer.Option("--warmup/--no-warmup", help="One short unmeasured run of every configuration first.")
    ] = True,
    reference: Annotated[
        Optional[str],
        typer.Option(
            "--reference",
            envvar=ENV_VAR,
            help="llama.cpp's llama-speculative-simple (scripts/build-reference.sh builds it); llama-completion is looked for beside it.",
        ),
    ] = None,
    control: Annotated[
        bool,
        typer.Option(
            "--control/--no-control",
            help="Also run the target alone a second time: its ratio to the first shows how far noise alone moves the figures.",
        ),
    ] = True,
    lookup: Annotated[
        bool, typer.Option("--lookup", help="Also run llama-cpp-python's prompt-lookup decoding against its plain decoding.")
    ] = False,
    json_path: Annotated[
        Optional[Path], typer.Option("--json", help="Write every run and the summary as JSON to this file.")
    ] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write one CSV row per measured run to this file.")] = None,
    plot_path: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Draw speedup by draft length and the acceptance histogram to this PNG (needs matplotlib)."),
    ] = None,
    ctx: Ctx = 2048,
    threads: Threads = None,
    ngl: Ngl = None,
    ngl_draft: NglDraft = None,
    rpc: Rpc = None,
    rpc_draft: RpcDraft = False,
    overlap: Overlap = "off",  # for the draft-model rows; off here, so that rows measure one thing
    rollback_threshold: Annotated[
        Optional[str],
        typer.Option(
            "--rollback-threshold",
            help="LOSSY, off by default: also sweep BiLD's rollback at these thresholds, comma-separated (0 = the lossless rule); each speculative row runs once per threshold, labelled rb=X, and reports how often its output departs from the target alone's.",
        ),
    ] = None,
) -> None:
    """Target alone against speculative decoding over a sweep of draft lengths, interleaved; greedy unless --temp > 0."""
    # self: the draft model rows, measured with the draft cut from the target (selfdraft.py)
    self_draft = "self" in [d.strip().lower() for d in drafter.split(",")]
    drafters = parse_drafters(",".join("model" if d.strip().lower() == "self" else d for d in drafter.split(",")))
    if reference is not None and rpc is not None:
        ui.info("--reference skipped: llama.cpp's programs would run the target on this machine, not over --rpc")
        reference = None
    settings = BenchSettings(
        draft_lens=parse_draft_lens(draft_lens), repeats=repeats, max_tokens=max_tokens, warmup=warmup,
        limit=default_limit(limit, prompts is None), reference=reference, lookup=lookup, drafters=drafters,
        control=control, sampling=SamplingParams(temperature=temp, top_k=top_k, top_p=top_p), seed=0 if seed is None else seed,
        rollback_thresholds=parse_thresholds(rollback_threshold),
    )  # fmt: skip
    settings.check()
    overlap = parse_overlap(overlap)
    suite = load_prompts_file(prompts) if prompts is not None else load_suite()
    check_paths(json_path, csv_path, plot_path)
    choice = ModelChoice(
        target=target, draft=draft, preset=preset, ctx=ctx, threads=threads, ngl=ngl, ngl_draft=ngl_draft,
        drafter="self" if self_draft else load_as(drafters), rpc=rpc, rpc_draft=rpc_draft,
    )  # fmt: skip
    with ui.status("loading models"):
        pair = load_pair(choice, "default", notify=ui.info)
    try:
        ui.info(describe(suite, settings))
        with ui.progress_bar() as step:
            result = run_bench(pair, suite, settings, costs=MachineCosts(pair, ui.note), runner=EngineRunner(pair, overlap),
                               progress=step, notify=ui.note)  # fmt: skip
    finally:
        pair.close()
    render(result)
    if self_draft:
        render_search(pair.target, pair.target_path)
    for path in write_outputs(result, json_path, csv_path, plot_path):
        ui.info(f"wrote {path}")
    require_lossless(result)


def _f(x: float | None, fmt: str, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt) + suffix


# Row names: spec's own rows carry no prefix; the peers' are marked. Short, so that the
# table fits an 80-column terminal.
_SHORT_ENGINE = {SPEC: "", LLAMA_CPP: "ref ", "llama-cpp-python": "lcp "}


def _short(s) -> str:
    if s.mode == "target" and s.drafter == CONTROL:
        what = "target again"
    elif s.mode == "target":
        what = "target"
    elif s.mode == "lookup":
        what = "lookup"
    elif s.drafter == AUTO:
        what = "auto"
    elif s.drafter == NGRAM and s.engine == LLAMA_CPP:
        what = "ngram-mod"
    elif s.drafter in (NGRAM, TREE):
        what = f"{s.drafter} g={s.draft_len}"
    else:
        what = f"g={s.draft_len}"
    if s.rollback:
        what += f" rb={s.rollback:g}"
    return f"{_SHORT_ENGINE.get(s.engine, s.engine + ' ')}{what}"


def render(result: BenchResult) -> None:
    has_ref = any(s.engine == LLAMA_CPP for s in result.summary)
    cols = ["config", "tok/s", "speedup", "pred.", "accept", "tok/pass", "outside"]
    if has_ref:
        cols.append("vs ref")
    rows, hists, checks = [], [], []
    for s in result.summary:
        name = _short(s)
        if s.failed:
            name += f" ({s.failed} failed)"
        if s.mismatches:
            name += " ✗"  # spelled out in the notes
        elif s.near_ties:
            checks.append(f"{_short(s)}: {s.near_ties} output(s) part from the target alone at a near-tie (allowed)")
        if s.accept_hist and (s.drafter or MODEL) == MODEL:
            hists.append(f"g={s.draft_len}: " + " ".join(str(x) for x in s.accept_hist))
        row = [
            name,
            _f(s.tokens_per_second, ".1f"),
            _f(s.speedup, ".2f", "x"),
            _f(s.predicted, ".2f", "x") if s.engine == SPEC else "",
            _f(100 * s.acceptance_rate if s.acceptance_rate is not None else None, ".0f", "%"),
            _f(s.tokens_per_pass, ".2f"),
            _f(100 * s.outside_decode if s.outside_decode is not None else None, ".1f", "%"),
        ]
        if has_ref:
            row.append(_f(s.vs_reference, ".2f", "x") if s.engine == SPEC else "")
        rows.append(row)
    c = result.cost
    d = result.models.get("draft")
    ui.table(f"spec bench: {result.models['target']['name']} + " + (f"draft {d['name']}" if d else "no draft model"), cols, rows)
    ui.line(
        "tok/s: median over runs · speedup: median over prompts and repeats of tok/s over the same engine's target-only run"
        " · pred.: from the cost curve and acceptance (draft model) · accept: drafted tokens accepted · outside: wall time"
        " outside the two models' passes (llama_decode and the wait for its results)"
        + (
            " · ref: llama.cpp's llama-speculative-simple (llama-completion for the target)"
            " · vs ref: spec tok/s over llama.cpp's at the same draft length (auto: over its ngram-mod)"
            if has_ref
            else ""
        )
        + (
            " · lcp: llama-cpp-python's Llama, plain and with prompt lookup"
            if any(s.engine != SPEC and s.engine != LLAMA_CPP for s in result.summary)
            else ""
        )
    )
    if hists:
        ui.line("rounds that accepted 0, 1, .. g drafts: " + " · ".join(hists))
    curve = " ".join(f"{k}:{ms:.1f}" for k, ms in enumerate(c.target_ms, 1))
    ui.line(f"cost curve, one target llama_decode of k tokens (ms): {curve}")
    if math.isfinite(c.draft_ms):
        catch_up = f"; a two-token draft pass (the catch-up after a fully accepted round): {c.draft2_ms:.1f} ms"
        ui.line(f"one draft step: {c.draft_ms:.1f} ms" + (catch_up if math.isfinite(c.draft2_ms) else ""))
    if result.best_predicted:
        b = result.best_predicted
        ui.line(
            f"prediction, draft model: g={b['draft_len']} ranked first ({b['speedup']:.2f}x predicted, "
            f"{b['measured']:.2f}x measured); largest error {100 * b['worst_error']:+.0f}% at g={b['worst_draft_len']}"
        )
    _render_by_prompt(result)
    for s in result.summary:
        if s.drafter == CONTROL and s.by_prompt:
            lo, hi = min(s.by_prompt.values()), max(s.by_prompt.values())
            ui.line(
                f"noise: the target alone against itself, {_f(s.speedup, '.2f', 'x')} overall, {lo:.2f}x to {hi:.2f}x"
                " prompt by prompt; differences of that size between configurations are not evidence"
            )
    for s in result.summary:
        if s.engine == SPEC and s.drafter == AUTO and s.rounds_by_drafter:
            used = ", ".join(f"{k} {v}" for k, v in s.rounds_by_drafter.items())
            lengths = ", ".join(f"{k}: {v}" for k, v in (s.lengths_used or {}).items())
            ui.line(f"auto: target passes by drafter: {used} · by draft length: {lengths}")
            for n in s.strategy_notes:
                ui.line(f"auto: {n}")
    for line in checks:
        ui.line(f"greedy check: {line}")
    _render_lossy(result)
    for note in result.notes:
        ui.line(f"note: {note}")
    rec = result.recommendation
    if rec.get("model_message"):
        ui.line(f"draft model: {rec['model_message']}")
    ui.line(rec["message"], style="bold")


def _render_by_prompt(result: BenchResult) -> None:
    heads = best_per_drafter(result.summary)
    if not heads or len(result.suite["prompts"]) < 2:
        return
    base = next((s for s in result.summary if s.engine == SPEC and s.mode == "target" and s.drafter != CONTROL), None)
    cats = {r.prompt_id: r.category for r in result.runs}
    base_tps: dict[str, list[float]] = {}
    if base is not None:
        for r in result.runs:
            if r.engine == SPEC and r.mode == "target" and r.drafter != CONTROL and r.error is None and r.generated > 0:
                base_tps.setdefault(r.prompt_id, []).append(r.tokens_per_second)
    cols = ["prompt", "kind", "target tok/s"] + [_short(s) for s in heads]
    rows = []
    for pid in result.suite["prompts"]:
        t = base_tps.get(pid)
        row = [pid, cats.get(pid, ""), _f(statistics.median(t) if t else None, ".1f")]
        row += [_f(s.by_prompt.get(pid), ".2f", "x") for s in heads]
        rows.append(row)
    rows.append(["slowest", "", ""] + [_f(s.worst_prompt, ".2f", "x") for s in heads])
    ui.table("speedup by prompt (median over repeats; the best draft length of each drafter)", cols, rows, right_from=2)


def _render_lossy(result: BenchResult) -> None:
    """The rows with a rollback threshold: lossy, so say how far their text strays from the target alone's."""
    lossy = [s for s in result.summary if s.rollback]
    if not lossy:
        return
    ui.line("rb=X: BiLD's rollback at threshold X, LOSSY (the text is no longer the target's own; never recommended)")
    for s in lossy:
        if s.departed is None:
            departs = "outputs not compared token by token with the target alone's (sampling)"
        else:
            at = f", first at token {s.first_departure:g} (median)" if s.first_departure is not None else ""
            departs = f"{100 * s.departed:.0f}% of outputs depart from the target alone's{at}"
        likelihood = _likelihood_text(s)
        ui.line(f"lossy {_short(s)}: {departs}" + (f"; {likelihood}" if likelihood else ""))
    lossless = [s for s in result.summary if not s.rollback and s.logprob_gap is not None and s.mode != "target"]
    for s in lossless:  # the same measure on the lossless rows: the yardstick (0 under greedy decoding)
        ui.line(f"lossless {_short(s)}: {_likelihood_text(s)}")


def _likelihood_text(s) -> str:
    if s.logprob is None or s.logprob_gap is None:
        return ""
    return (
        f"the target's mean log-likelihood per token {s.logprob:.3f}, {s.logprob_gap:+.3f} against the target alone's "
        f"text (perplexity x{math.exp(-s.logprob_gap):.2f})"
    )
