"""`spec run`: generate a continuation of one prompt, with or without speculation."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from typing import Annotated

from .. import ui
from ..decode import Engine, GenerateOptions
from ..errors import SpecError
from ..sampling import SamplingParams
from ..limits import check_prompt_fits
from ..loading import load_pair
from ..strategy import build_strategy, parse_draft_len
from . import app, user_text
from .options import (
    Ctx, Draft, Drafter, DraftLen, DraftMinP, MaxTokens, Ngl, NglDraft, NoSpec, Preset, Rpc, RpcDraft, Seed, ShowDrafts, Stop, Target, Temp, Threads, TopK, TopP,
    model_choice,
)


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
    no_spec: NoSpec = False,
    show_drafts: ShowDrafts = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the text, token ids and statistics.")] = False,
) -> None:
    """Continue PROMPT with the target model, drafting with the draft model."""
    fixed_len = parse_draft_len(draft_len)
    opts = GenerateOptions(
        max_tokens=max_tokens,
        draft_len=fixed_len or 0,
        sampling=SamplingParams(temperature=temp, top_k=top_k, top_p=top_p),
        seed=seed,
        stop=tuple(check_stop(s) for s in stop or ()),
    )
    opts.check()
    text = read_prompt(prompt)
    choice = model_choice(target, draft, preset, no_spec, ctx, threads, ngl, ngl_draft, drafter, rpc, rpc_draft)
    choice.check()
    if max_tokens > ctx:
        raise SpecError(
            f"--max-tokens {max_tokens} is more than the context holds (--ctx {ctx} tokens, prompt included); "
            "ask for fewer tokens or give a larger --ctx"
        )
    with ui.status("loading models"):
        pair = load_pair(choice, "default", notify=ui.info)
    try:
        prompt_tokens = pair.target.tokenize(text)
        check_prompt_fits(len(prompt_tokens), pair.target.n_ctx)  # said before measuring anything for a run that cannot start
        with ui.status("preparing"):
            strategy = build_strategy(pair, choice, fixed_len, notify=ui.info, draft_min_p=draft_min_p)
        engine = Engine(pair.target, strategy=strategy)
        try:
            if as_json:
                result = engine.generate(prompt_tokens, opts)
            elif show_drafts:
                result = engine.generate(prompt_tokens, opts, on_span=ui.write_span)
            else:
                result = engine.generate(prompt_tokens, opts, on_text=ui.write_text)
        except KeyboardInterrupt:
            ui.write_text("\n")
            raise
        if as_json:
            payload = {
                "prompt": text,
                "text": result.text,
                "tokens": result.tokens,
                # per token: "draft" (a draft the target accepted) or "target" (its own pick)
                "origins": result.origins,
                "target": str(pair.target_path),
                "draft": str(pair.draft_path) if pair.draft_path else None,
                "stats": result.stats.to_dict(),
            }
            ui.write_text(json.dumps(payload) + "\n")
        else:
            ui.write_text("\n")
            if show_drafts:
                ui.draft_legend(result.origins)
            ui.print_summary(result.stats)
    finally:
        pair.close()
