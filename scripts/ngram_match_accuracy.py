"""How often the n-gram lookup's guesses are right, by the length of the match behind them.

Replays NgramDrafter over the target-alone outputs in a `spec bench --json` file: at every
position where the lookup has a guess, whether its first token is right and how many of its
tokens (up to 16) are right in a row, grouped by the match length (2, 3 or 4 tokens).

    .venv/bin/python scripts/ngram_match_accuracy.py BENCH.json TARGET.gguf
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from importlib import resources

import numpy as np

from spec_cli.llama import Model
from spec_cli.drafters.ngram import NgramDrafter
from spec_cli.sampling import SamplingParams


def main() -> None:
    bench, model_path = sys.argv[1], sys.argv[2]
    runs = json.load(open(bench, encoding="utf-8"))["runs"]
    suite = resources.files("spec_cli").joinpath("data/bench_prompts.jsonl").read_text()
    texts = {d["id"]: d["prompt"] for d in map(json.loads, suite.splitlines()) if "id" in d}
    model = Model(model_path, n_ctx=64, label="target")  # for its tokenizer
    first: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    runlen: dict[int, list[int]] = defaultdict(list)
    seen = set()
    for r in runs:
        if r["engine"] != "spec" or r["mode"] != "target" or r["drafter"] or r["prompt_id"] in seen:
            continue
        seen.add(r["prompt_id"])
        ctx, out = model.tokenize(texts[r["prompt_id"]]), r["tokens"]
        lookup = NgramDrafter(max_ngram=4, min_ngram=2)
        for i in range(len(out)):
            guess = lookup.propose(ctx + out[:i], 16, SamplingParams(), np.random.default_rng(0)).tokens
            if not guess:
                continue
            right = 0
            while right < len(guess) and i + right < len(out) and out[i + right] == guess[right]:
                right += 1
            k = lookup.last_ngram
            first[k][0] += 1
            first[k][1] += right > 0
            runlen[k].append(right)
    for k in sorted(first):
        n, hit = first[k]
        print(f"match of {k}: {n} positions, first guess right {hit / n:.2f}, tokens right in a row: "
              f"mean {np.mean(runlen[k]):.2f}, median {np.median(runlen[k]):.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
