"""Backend sampling against the numpy path, side by side in one process (issue 10).

Plain decoding of the default target (the --no-spec loop), greedy and top-k sampling,
alternating the two paths run by run; prints medians of tokens/s and of the share of
wall time spent outside the target's passes.

    .venv/bin/python scripts/backend_sampling_ab.py [--model NAME] [--tokens N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics

from spec_cli.llama import Model
from spec_cli.decode import Engine, GenerateOptions
from spec_cli.presets import resolve
from spec_cli.sampling import SamplingParams

PROMPT = "Write a short story about a robot who learns to paint."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    target = Model(resolve(args.model), n_ctx=1024, label="target")
    prompt = target.tokenize(PROMPT)
    samplings = {"greedy": SamplingParams(), "temp 0.8, top-k 40": SamplingParams(temperature=0.8, top_k=40)}
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for rep in range(args.repeats + 1):  # the first round warms both paths up and is not counted
        for name, params in samplings.items():
            for path in ("backend", "numpy"):
                target.use_backend_sampling(path == "backend")
                target.reset()
                opts = GenerateOptions(max_tokens=args.tokens, draft_len=0, sampling=params, seed=rep)
                s = Engine(target).generate(prompt, opts).stats
                if rep:
                    per_tok = (s.t_total - s.t_target) / s.generated * 1e6
                    results.setdefault((name, path), []).append((s.tokens_per_second, s.t_other / s.t_total, per_tok))
    print(f"{args.model}, {args.tokens} tokens, {args.repeats} runs per cell, medians")
    print(f"{'sampling':<20} {'path':<8} {'tok/s':>7} {'outside':>8} {'µs/token outside':>17}")
    for (name, path), rows in results.items():
        tps = statistics.median(r[0] for r in rows)
        out = statistics.median(r[1] for r in rows)
        us = statistics.median(r[2] for r in rows)
        print(f"{name:<20} {path:<8} {tps:7.1f} {100 * out:7.2f}% {us:17.0f}")
    for name in samplings:
        b = statistics.median(r[0] for r in results[(name, "backend")])
        n = statistics.median(r[0] for r in results[(name, "numpy")])
        print(f"{name}: backend / numpy tokens/s = {b / n:.3f}")


if __name__ == "__main__":
    main()
