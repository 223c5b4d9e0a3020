"""What the in-process auto A/B scripts share: their options, the bench prompts, the pair, the run options."""

from __future__ import annotations

import argparse
import json
from importlib import resources

from spec_cli.decode import GenerateOptions
from spec_cli.sampling import SamplingParams
from spec_cli.session import ModelChoice, load_pair

PROMPTS = ["code-binary-search", "fact-photosynthesis", "story-lighthouse", "structured-json-book", "copy-fix-spelling"]


def setup(modes, preset: str, tokens: int, width: int):
    """Parse --preset/--temp/--tokens/--repeats, load the pair, print the header; (args, texts, choice, pair, opts)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default=preset)
    ap.add_argument("--temp", type=float, default=0.0)
    ap.add_argument("--tokens", type=int, default=tokens)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    suite = resources.files("spec_cli").joinpath("data/bench_prompts.jsonl").read_text()
    texts = {d["id"]: d["prompt"] for d in map(json.loads, suite.splitlines()) if "id" in d}
    choice = ModelChoice(preset=args.preset, ctx=2048)
    pair = load_pair(choice, "default")
    opts = GenerateOptions(max_tokens=args.tokens, sampling=SamplingParams(temperature=args.temp), seed=1)
    print(f"{args.preset}, temp {args.temp}, {args.tokens} tokens, {args.repeats} repeats; tok/s over the target alone")
    print(f"{'prompt':24}" + "".join(f"{m:>{width}}" for m in modes[1:]))
    return args, texts, choice, pair, opts
