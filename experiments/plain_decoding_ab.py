#!/usr/bin/env python3
"""Plain decoding (the target alone) of two checkouts of spec, side by side.

Runs `spec run --no-spec` from OLD and NEW alternately (same venv, a different prompt and seed
each round, 128 tokens) and prints, per version, the medians of tokens/s, of the target's pass
time per token and of the time outside the passes per token, then the paired ratio new/old.
A difference in the pass time (llama.cpp's own work, the same in both) is machine drift: read
the tokens/s ratio against it.

Usage: experiments/plain_decoding_ab.py OLD_TREE NEW_TREE [--rounds 12] [--temp 0.8]
(OLD_TREE can be a `git worktree add /tmp/old <commit>`; both run with this Python.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st
import subprocess
import sys

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "List five facts about the moon.",
    "The history of the printing press began",
]


def one_run(tree: str, prompt: str, temp: float, seed: int, tokens: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "spec_cli",
        "run",
        "--no-spec",
        "--temp",
        str(temp),
        "--seed",
        str(seed),
        "-n",
        str(tokens),
        "--json",
        prompt,
    ]
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True).stdout
    s = json.loads(out)["stats"]
    n = s["generated"]
    return {
        "tok_s": s["tokens_per_second"],
        "pass_ms": 1e3 * s["t_target"] / n,
        "outside_us": 1e6 * s["t_other"] / n,
        "outside_share": s["t_other"] / s["t_total"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--temp", type=float, default=0.0)
    ap.add_argument("-n", "--tokens", type=int, default=128)
    a = ap.parse_args()
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(a.rounds):
        for ver, tree in (("old", a.old), ("new", a.new)):
            runs[ver].append(one_run(os.path.abspath(tree), PROMPTS[r % len(PROMPTS)], a.temp, r + 1, a.tokens))
        print(f"round {r + 1}/{a.rounds}", file=sys.stderr)
    for ver, rs in runs.items():
        med = {k: st.median(x[k] for x in rs) for k in rs[0]}
        print(
            f"{ver}: {med['tok_s']:.1f} tok/s, pass {med['pass_ms']:.2f} ms/token, outside {med['outside_us']:.0f} µs/token "
            f"({100 * med['outside_share']:.2f} %)"
        )
    ratio = st.median(n["tok_s"] / o["tok_s"] for o, n in zip(runs["old"], runs["new"]))
    drift = st.median(n["pass_ms"] / o["pass_ms"] for o, n in zip(runs["old"], runs["new"]))
    print(f"paired new/old: tokens/s {ratio:.3f}, pass time {drift:.3f} (drift)")


if __name__ == "__main__":
    main()
