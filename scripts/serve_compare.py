"""`spec serve` against the target alone and against llama.cpp's own `llama-server` with its draft
model, on one pair, all streamed through the same OpenAI endpoint (issue 22's benchmark). Run it
under the llama.cpp lock: the three servers are up together, but only one of them works at a time.

    flock /tmp/llama.lock .venv/bin/python scripts/serve_compare.py --preset qwen-coder-f16 \\
        --llama-server build/reference/build/bin/llama-server --tokens 128 --repeats 3

Four configurations, interleaved within each repeat, each one streamed greedy completion of the
same prompt: spec serve with its default (auto), spec serve with the target alone (the request's
`spec.draft_len` 0), llama-server with the draft model (`--spec-draft-n-max`), a second llama-server with the
target alone (this llama.cpp takes no speculation settings per request). The figure is the client's: tokens after
the first over the time from the first delta to the last; TTFT is request to first delta.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

PROMPTS = [
    "Write a Python function that parses a CSV file of orders and returns the total per customer, with type hints and a docstring.",
    "Explain how a hash table handles collisions, step by step.",
]


def stream(url: str, body: dict) -> tuple[float, float, int]:
    body = {**body, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    deltas = n = 0
    with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=900) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("text"):
                last = time.perf_counter()
                first = first or last
                deltas += 1
            if event.get("usage"):
                n = event["usage"]["completion_tokens"]
    n = n or deltas
    return first - t0, (n - 1) / (last - first) if last and last > first else 0.0, n


def start(argv: list[str], log, pattern: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    while not (m := re.search(pattern, Path(log.name).read_text(errors="replace"))):
        if proc.poll() is not None:
            sys.exit(Path(log.name).read_text(errors="replace")[-3000:])
        time.sleep(0.3)
    return proc, m.group(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen-coder-f16")
    ap.add_argument("--llama-server", required=True, help="path to llama.cpp's llama-server")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draft-max", type=int, default=5, help="llama-server's --spec-draft-n-max")
    ap.add_argument("--port", type=int, default=18181, help="llama-server's port")
    a = ap.parse_args()

    from spec_cli.loading import ModelChoice, resolve_refs
    from spec_cli.presets import resolve

    target_ref, draft_ref = resolve_refs(ModelChoice(preset=a.preset), "default")
    target, draft = resolve(target_ref), resolve(draft_ref)
    procs = []
    with (
        tempfile.NamedTemporaryFile("w+", suffix=".log") as slog,
        tempfile.NamedTemporaryFile("w+", suffix=".log") as llog,
        tempfile.NamedTemporaryFile("w+", suffix=".log") as llog2,
    ):
        try:
            spec, spec_url = start(
                [sys.executable, "-m", "spec_cli", "serve", "--preset", a.preset, "--threads", str(a.threads), "--ctx", "2048", "--port", "0"],
                slog, r"listening on (http://\S+:\d+)/v1",
            )  # fmt: skip
            procs.append(spec)
            common = [
                a.llama_server,
                "-m",
                str(target),
                "-t",
                str(a.threads),
                "-c",
                "2048",
                "-np",
                "1",
                "-ngl",
                "0",
                "--host",
                "127.0.0.1",
            ]
            llama, _ = start(
                common + ["-md", str(draft), "--spec-draft-n-max", str(a.draft_max), "--spec-draft-n-min", "0",
                          "-td", str(a.threads), "-ngld", "0", "--port", str(a.port)],
                llog, r"(listening on http)",
            )  # fmt: skip
            procs.append(llama)
            alone, _ = start(common + ["--port", str(a.port + 1)], llog2, r"(listening on http)")
            procs.append(alone)
            llama_url, alone_url = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{a.port + 1}"
            model = httpx2.get(spec_url + "/v1/models", timeout=60).json()["data"][0]["id"]
            configs = {
                "spec serve (auto)": (spec_url, {"model": model}),
                "spec serve (target alone)": (spec_url, {"model": model, "spec": {"draft_len": 0}}),
                f"llama-server (draft, --spec-draft-n-max {a.draft_max})": (llama_url, {}),
                "llama-server (target alone)": (alone_url, {}),
            }
            for url, extra in configs.values():  # warm-up
                stream(url, {**extra, "prompt": PROMPTS[0], "max_tokens": 8})
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
            for r in range(a.repeats):
                for prompt in PROMPTS:
                    for name, (url, extra) in configs.items():
                        ttft, rate, n = stream(url, {**extra, "prompt": prompt, "max_tokens": a.tokens})
                        results[name].append((rate, ttft))
                        print(
                            f"repeat {r + 1} {prompt[:24]!r:28} {name:40} {rate:6.1f} tok/s ({n} tokens), TTFT {ttft * 1000:5.0f} ms",
                            flush=True,
                        )
        finally:
            for p in procs:
                p.terminate()
                p.wait(60)
    base = statistics.median(x[0] for x in results["spec serve (target alone)"])
    print(
        f"\nmedians over {a.repeats} repeats x {len(PROMPTS)} prompts, {a.tokens} tokens, greedy, {a.threads} threads ({a.preset}):"
    )
    for name, rows in results.items():
        rate = statistics.median(x[0] for x in rows)
        ttft = statistics.median(x[1] for x in rows)
        print(f"  {name:44} {rate:6.1f} tok/s  {rate / base:5.2f}x spec's target alone  TTFT {ttft * 1000:5.0f} ms")


if __name__ == "__main__":
    main()
