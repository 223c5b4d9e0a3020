#!/usr/bin/env python3
"""From a `spec bench --json` file: auto against the best fixed configuration, overall and per prompt.

The best fixed configuration is the spec (drafter, draft length) with the highest speedup
over the whole suite, as `spec bench` computes it (median over prompts and repeats of each
run's ratio to its own target-only repeat); per prompt the bench's own per-prompt figures
are used. Prints one line per prompt, so a BENCHMARKS.md entry can quote them.

Usage: scripts/auto_vs_fixed.py bench.json
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    summary = [s for s in json.load(open(path))["summary"] if s["engine"] == "spec" and s["mode"] == "speculative"]
    auto = next(s for s in summary if s["drafter"] == "auto")
    fixed = [s for s in summary if s["drafter"] != "auto" and s["speedup"] is not None]
    best = max(fixed, key=lambda s: s["speedup"])
    print(
        f"best fixed over the suite: {best['label']} {best['speedup']:.2f}x; auto {auto['speedup']:.2f}x; "
        f"auto / best = {auto['speedup'] / best['speedup']:.2f}"
    )
    ratios = []
    for pid, b in best["by_prompt"].items():
        a = auto["by_prompt"].get(pid)
        if a is None:
            continue
        ratios.append(a / b)
        print(f"  {pid:28s} auto {a:.2f}x  best fixed {b:.2f}x  ratio {a / b:.2f}")
    print(
        f"lowest per-prompt ratio: {min(ratios):.2f}; prompts at 0.90 or more: {sum(r >= 0.9 for r in ratios)} of {len(ratios)}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
