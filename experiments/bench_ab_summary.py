#!/usr/bin/env python3
"""Target-alone runs of two sets of `spec bench --json` files, old against new.

Reads DIR/old-*.json and DIR/new-*.json (each a spec bench of the same suite, run alternately),
keeps the runs of the target alone, and prints the median tokens/s of each version, the ratio
new/old overall and per prompt, and the median share and time per token outside the target's
passes.

Usage: experiments/bench_ab_summary.py DIR [GLOB_PART ...]   e.g. DIR t0 t0.8 for old-t0-r1.json ...
"""

from __future__ import annotations

import collections
import glob
import json
import statistics as st
import sys


def summarize(base: str, part: str) -> str:
    per = collections.defaultdict(list)
    share = collections.defaultdict(list)
    per_token = collections.defaultdict(list)
    for ver in ("old", "new"):
        for path in sorted(glob.glob(f"{base}/{ver}-{part}*.json")):
            for r in json.load(open(path))["runs"]:
                if r["mode"] == "target" and not r["error"]:
                    per[(ver, r["prompt_id"])].append(r["tokens_per_second"])
                    share[ver].append(r["t_outside_decode"] / r["seconds"])
                    per_token[ver].append(1e6 * r["t_outside_decode"] / r["generated"])
    prompts = sorted({p for _, p in per})
    if not prompts:
        return f"{part}: no runs"
    old = [x for p in prompts for x in per[("old", p)]]
    new = [x for p in prompts for x in per[("new", p)]]
    by_prompt = " ".join(f"{st.median(per[('new', p)]) / st.median(per[('old', p)]):.2f}" for p in prompts)
    return (
        f"{part}: runs old {len(old)} new {len(new)}; tok/s old {st.median(old):.1f} new {st.median(new):.1f}, "
        f"new/old {st.median(new) / st.median(old):.3f}; by prompt {by_prompt}; outside old "
        f"{100 * st.median(share['old']):.2f} % ({st.median(per_token['old']):.0f} µs/token), new "
        f"{100 * st.median(share['new']):.2f} % ({st.median(per_token['new']):.0f} µs/token)"
    )


if __name__ == "__main__":
    for part in sys.argv[2:] or [""]:
        print(summarize(sys.argv[1], part))
