"""Options shared by run, chat and bench, declared once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Target = Annotated[
    Optional[str],
    typer.Option("--target", "-t", help="Target model: a .gguf path, a name from models.toml, or owner/repo:file.gguf."),
]
Draft = Annotated[
    Optional[str],
    typer.Option(
        "--draft",
        "-d",
        help="Draft model, same forms as --target; one from another model family drafts text that is re-tokenized for the target.",
    ),
]
Preset = Annotated[
    Optional[str], typer.Option("--preset", "-p", help="A target/draft pair from models.toml (see `spec models`).")
]
NoSpec = Annotated[bool, typer.Option("--no-spec", help="The target alone, through the same loop and settings: the baseline.")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
DraftLen = Annotated[
    str,
    typer.Option(
        "--draft-len",
        "-k",
        help="Tokens drafted per round (gamma), or 'auto' to choose each round from the measured costs and acceptance.",
    ),
]
DraftMinP = Annotated[
    float,
    typer.Option(
        "--draft-min-p", help="Stop drafting when the draft model's probability for its next token is below this (0 = never)."
    ),
]
Drafter = Annotated[
    str,
    typer.Option(
        "--drafter",
        help="auto (n-gram lookup, then the draft model), model, ngram (no draft model needed), tree (several branches where the draft hesitates: its top two when greedy, random draws when sampling), or self (a draft cut from the target's own blocks, chosen by measurement once).",
    ),
]
Temp = Annotated[float, typer.Option("--temp", help="Sampling temperature; 0 is greedy.")]
TopK = Annotated[int, typer.Option("--top-k", help="Sample from the k most likely tokens (0 = all).")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (1 = off).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed; the same seed gives the same output.")]
Ctx = Annotated[int, typer.Option("--ctx", help="Context size in tokens, for both models.")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores up to 4, else half).")]
Ngl = Annotated[
    Optional[int],
    typer.Option("--ngl", help="Target layers to offload to the GPU or the --rpc servers (-1 = all; default 0, all with --rpc)."),
]
NglDraft = Annotated[
    Optional[int], typer.Option("--ngl-draft", help="Draft layers to offload to the GPU (-1 = all; default: the same as --ngl).")
]
Rpc = Annotated[
    Optional[str],
    typer.Option(
        "--rpc",
        help="Run the target's offloaded layers on llama.cpp rpc-servers: HOST:PORT[,HOST:PORT...], split in proportion to their memory.",
    ),
]
RpcDraft = Annotated[
    bool,
    typer.Option("--rpc-draft", help="Offload the draft to the --rpc servers too (default: the draft runs on this machine)."),
]
ShowDrafts = Annotated[
    bool,
    typer.Option(
        "--show-drafts/--no-show-drafts",
        help="Colour the text that came from accepted drafts (on a terminal; pipes and --json are unchanged).",
    ),
]
RollbackThreshold = Annotated[
    Optional[float],
    typer.Option(
        "--rollback-threshold",
        help="LOSSY, off by default: BiLD's rollback. Keep a draft the target would reject while the target's -log p(draft) is at most this (0 = the lossless rule). Faster; the output is no longer the target's own.",
    ),
]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop when this text appears (repeatable).")]
Overlap = Annotated[
    str,
    typer.Option(
        "--overlap",
        help="Draft the next round while the target verifies this one (the draft model drafter): on, off, or auto (on only where measured faster; off where target and draft share this machine's CPU).",
    ),
]
