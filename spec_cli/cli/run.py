"""`spec run`: generate a continuation of one prompt, with or without speculation."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from .. import ui
from ..decode import Engine, GenerateOptions, Generation
from ..errors import SpecError
from ..limits import check_prompt_fits
from ..llama import Model
from ..pipeline import parse_overlap
from . import app, user_text
from .options import (
    Ctx,
    Draft,
    Drafter,
    DraftLen,
    DraftMinP,
    MaxTokens,
    Ngl,
    NglDraft,
    NoSpec,
    Overlap,
    Preset,
    RollbackThreshold,
    Rpc,
    RpcDraft,
    Seed,
    ShowDrafts,
    Stop,
    Target,
    Temp,
    Threads,
    TopK,
    TopP,
)
from .setup import ModelOptions, Models, generate_options, open_models


def read_prompt(prompt: Optional[str]) -> str:
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            raise SpecError('no prompt given; pass it as an argument (spec run "text") or pipe it in')
        # Bytes, decoded here: a text stdin would fail or smuggle surrogates in, by locale.
        stdin = getattr(sys.stdin, "buffer", sys.stdin)
        text = user_text(stdin.read(), "the prompt")
    else:
        text = user_text(prompt, "the prompt")
    if not text.strip():
        raise SpecError("the prompt is empty")
    return text


def check_stop(text: str) -> str:
    text = user_text(text, "--stop")
    if not text:
        raise SpecError("--stop needs some text to stop at, got an empty string (an unset shell variable?)")
    return text


@app.command("run")
def run_cmd(
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt; '-' or a pipe reads it from stdin.")] = None,
    target: Target = None,
    draft: Draft = None,
    preset: Preset = None,
    max_tokens: MaxTokens = 128,
    draft_len: DraftLen = "auto",
    drafter: Drafter = "auto",
    draft_min_p: DraftMinP = 0.0,
    temp: Temp = 0.0,
    top_k: TopK = 40,
    top_p: TopP = 1.0,
    seed: Seed = None,
    ctx: Ctx = 4096,
    threads: Threads = None,
    ngl: Ngl = None,
    ngl_draft: NglDraft = None,
    rpc: Rpc = None,
    rpc_draft: RpcDraft = False,
    stop: Stop = None,
    rollback_threshold: RollbackThreshold = None,
    overlap: Overlap = "auto",
    no_spec: NoSpec = False,
    show_drafts: ShowDrafts = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with the text, token ids and statistics.")
    ] = False,
) -> None:
    """Continue PROMPT with the target model, drafting with the draft model."""
    options = ModelOptions(
        target=target, draft=draft, preset=preset, no_spec=no_spec, ctx=ctx, threads=threads, ngl=ngl, ngl_draft=ngl_draft,
        drafter=drafter, rpc=rpc, rpc_draft=rpc_draft, draft_len=draft_len, draft_min_p=draft_min_p,
    )  # fmt: skip
    first_len = options.first_draft_len()
    overlap = parse_overlap(overlap)
    opts = generate_options(
        max_tokens,
        temp,
        top_k,
        top_p,
        seed,
        first_len,
        stop=[check_stop(s) for s in stop or ()],
        rollback_threshold=rollback_threshold,
    )
    text = read_prompt(prompt)
    options.check()
    check_room(max_tokens, ctx)
    with open_models(options, "default") as models:
        prompt_tokens = tokenize_prompt(models.pair.target, text)
        with ui.status("preparing"):
            engine = Engine(models.pair.target, strategy=models.strategy(first_len), overlap=overlap)
        result = generate(engine, prompt_tokens, opts, as_json, show_drafts)
        if as_json:
            ui.write_text(json.dumps(json_payload(text, result, models)) + "\n")
        else:
            print_result(result, show_drafts)


def check_room(max_tokens: int, ctx: int) -> None:
    if max_tokens > ctx:
        raise SpecError(
            f"--max-tokens {max_tokens} is more than the context holds (--ctx {ctx} tokens, prompt included); "
            "ask for fewer tokens or give a larger --ctx"
        )


def tokenize_prompt(target: Model, text: str) -> list[int]:
    """The prompt's tokens, refused before anything is measured if they leave no room to generate."""
    tokens = target.tokenize(text)
    check_prompt_fits(len(tokens), target.n_ctx)
    return tokens


def generate(engine: Engine, prompt: list[int], opts: GenerateOptions, as_json: bool, show_drafts: bool) -> Generation:
    """Generate, streaming the text unless the output is JSON."""
    try:
        if as_json:
            return engine.generate(prompt, opts)
        if show_drafts:
            return engine.generate(prompt, opts, on_span=ui.write_span)
        return engine.generate(prompt, opts, on_text=ui.write_text)
    except KeyboardInterrupt:
        ui.write_text("\n")
        raise


def json_payload(prompt: str, result: Generation, models: Models) -> dict:
    pair = models.pair
    return {
        "prompt": prompt,
        "text": result.text,
        "tokens": result.tokens,
        # per token: "draft" (a draft the target accepted) or "target" (its own pick)
        "origins": result.origins,
        "target": str(pair.target_path),
        "draft": str(pair.draft_path) if pair.draft_path else None,
        "stats": result.stats.to_dict(),
    }


def print_result(result: Generation, show_drafts: bool) -> None:
    ui.write_text("\n")
    if show_drafts:
        ui.draft_legend(result.origins)
    ui.print_summary(result.stats)
