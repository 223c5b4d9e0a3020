"""Streamed tokens/s and time to first token through `spec serve`, against `spec run` on the same
pair and prompt (issue 22). Run it under the llama.cpp lock; each side runs alone.

    flock /tmp/llama.lock .venv/bin/python scripts/serve_bench.py --preset chat --tokens 128 --repeats 3 [--no-spec] [-- SERVE_ARGS...]

For each repeat, interleaved: `spec run --json` (its tokens/s: generated over the generation's time,
prompt excluded) and one streamed completion through the server (the client's tokens/s: tokens
after the first over the time from the first to the last delta; TTFT: request to first delta,
prompt processing included). The server is started once, with the same options, and warmed with one
request; a streamed delta holds one or more tokens, so the count comes from the final usage.
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

import httpx2

PROMPT = "Write a detailed, step-by-step explanation of how a hash table handles collisions."


def spec_run(common: list[str], tokens: int) -> dict:
    argv = [sys.executable, "-m", "spec_cli", "run", *common, "-n", str(tokens), "--json", PROMPT]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)["stats"]


def streamed(url: str, model: str, tokens: int, speculate: bool) -> tuple[float, float, int]:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if not speculate:
        body["spec"] = {"draft_len": 0}
    t0 = time.perf_counter()
    first = last = None
    n = 0
    with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
            if event.get("usage"):
                n = event["usage"]["completion_tokens"]
    return first - t0, (n - 1) / (last - first) if last > first else 0.0, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="chat")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-spec", action="store_true", help="the target alone on both sides")
    ap.add_argument("serve_args", nargs="*")
    a = ap.parse_args()
    common = ["--preset", a.preset, "--threads", str(a.threads), "--ctx", "2048"] + (["--no-spec"] if a.no_spec else [])
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "spec_cli", "serve", *common, "--port", "0", *a.serve_args], stdout=log, stderr=log
        )
        try:
            while not (m := re.search(r"listening on (http://\S+):(\d+)/v1", open(log.name).read())):
                if server.poll() is not None:
                    sys.exit(open(log.name).read())
                time.sleep(0.2)
            url = f"{m.group(1)}:{m.group(2)}"
            model = httpx2.get(url + "/v1/models", timeout=60).json()["data"][0]["id"]
            streamed(url, model, 8, not a.no_spec)  # warm-up
            rows = []
            for _ in range(a.repeats):
                stats = spec_run(common, a.tokens)
                ttft, rate, n = streamed(url, model, a.tokens, not a.no_spec)
                rows.append((stats["tokens_per_second"], stats["generated"], rate, n, ttft))
                print(
                    f"spec run {rows[-1][0]:7.1f} tok/s ({rows[-1][1]} tokens)   serve {rate:7.1f} tok/s ({n} tokens), TTFT {ttft * 1000:6.0f} ms",
                    flush=True,
                )
            run_med = statistics.median(r[0] for r in rows)
            serve_med = statistics.median(r[2] for r in rows)
            ttft_med = statistics.median(r[4] for r in rows)
            print(
                f"median: spec run {run_med:.1f} tok/s, serve {serve_med:.1f} tok/s streamed ({serve_med / run_med:.2f}x), TTFT {ttft_med * 1000:.0f} ms"
            )
        finally:
            server.terminate()
            server.wait(60)


if __name__ == "__main__":
    main()
