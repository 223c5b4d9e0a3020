"""auto with and without its budget for trying a drafter, side by side in one process (issue 11).

For each bench prompt, in turn: the target alone, auto as spec runs it, auto with the budget
lifted (adaptive.EXPLORE_ALLOWANCE set out of reach), and the target alone again (the noise).
Prints each one's tokens/s over the first target run, medians over the repeats.

    .venv/bin/python scripts/auto_budget_ab.py [--preset NAME] [--temp T] [--tokens N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import statistics
from importlib import resources

from spec_cli import adaptive
from spec_cli.decode import Engine, GenerateOptions
from spec_cli.sampling import SamplingParams
from spec_cli.session import ModelChoice, build_strategy, load_pair

PROMPTS = ["code-binary-search", "fact-photosynthesis", "story-lighthouse", "structured-json-book", "copy-fix-spelling"]
MODES = ("target", "auto", "auto without budget", "target again")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="standin-gemma-smollm2")
    ap.add_argument("--temp", type=float, default=0.0)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    suite = resources.files("spec_cli").joinpath("data/bench_prompts.jsonl").read_text()
    texts = {d["id"]: d["prompt"] for d in map(json.loads, suite.splitlines()) if "id" in d}
    choice = ModelChoice(preset=args.preset, ctx=2048)
    pair = load_pair(choice, "default")
    opts = GenerateOptions(max_tokens=args.tokens, sampling=SamplingParams(temperature=args.temp), seed=1)
    allowance = adaptive.EXPLORE_ALLOWANCE
    print(f"{args.preset}, temp {args.temp}, {args.tokens} tokens, {args.repeats} repeats; tok/s over the target alone")
    print(f"{'prompt':24}" + "".join(f"{m:>22}" for m in MODES[1:]))
    try:
        for pid in PROMPTS:
            prompt = pair.target.tokenize(texts[pid])
            rates: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(args.repeats):
                for mode in MODES:
                    pair.target.reset()
                    pair.draft.reset()
                    adaptive.EXPLORE_ALLOWANCE = 1e9 if mode == "auto without budget" else allowance
                    strategy = build_strategy(pair, choice, None) if mode.startswith("auto") else None
                    gen = Engine(pair.target, strategy=strategy).generate(prompt, opts)
                    rates[mode].append(len(gen.tokens) / gen.stats.t_total)
            base = statistics.median(rates["target"])
            print(f"{pid:24}" + "".join(f"{statistics.median(rates[m]) / base:>21.2f}x" for m in MODES[1:]))
    finally:
        adaptive.EXPLORE_ALLOWANCE = allowance
        pair.close()


if __name__ == "__main__":
    main()
