"""Counters for GET /metrics, written in Prometheus' text exposition format (version 0.0.4).

A handful of counters needs no client library: each line is `name{labels} value`, after
one HELP and one TYPE line per metric.
"""

from __future__ import annotations

import threading
from collections import Counter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name -> (type, help); the totals below are sums over finished generations.
METRICS = {
    "spec_requests_total": ("counter", "HTTP requests answered, by endpoint and status code."),
    "spec_prompt_tokens_total": ("counter", "Prompt tokens of finished generations."),
    "spec_prompt_tokens_evaluated_total": ("counter", "Prompt tokens the target evaluated (the rest came from its KV cache)."),
    "spec_completion_tokens_total": ("counter", "Tokens generated."),
    "spec_draft_tokens_total": ("counter", "Tokens drafted and verified by the target."),
    "spec_draft_tokens_accepted_total": ("counter", "Drafted tokens the target accepted."),
    "spec_target_seconds_total": ("counter", "Seconds in the target's passes (prompt and verification)."),
    "spec_draft_seconds_total": ("counter", "Seconds in the draft model's passes."),
    "spec_generation_seconds_total": ("counter", "Seconds spent generating, prompt processing included."),
    "spec_generations_interrupted_total": ("counter", "Generations stopped early: a client gone, or the server shutting down."),
    "spec_queue_depth": ("gauge", "Requests waiting for the pair."),
    "spec_requests_running": ("gauge", "Requests being generated (0 or 1)."),
}


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.totals: Counter[str] = Counter()

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def add_outcome(self, out) -> None:
        with self._lock:
            t = self.totals
            t["spec_prompt_tokens_total"] += out.prompt_tokens
            t["spec_prompt_tokens_evaluated_total"] += out.prompt_evaluated
            t["spec_completion_tokens_total"] += out.completion_tokens
            t["spec_draft_tokens_total"] += out.drafted
            t["spec_draft_tokens_accepted_total"] += out.accepted
            t["spec_target_seconds_total"] += out.t_target
            t["spec_draft_seconds_total"] += out.t_draft
            t["spec_generation_seconds_total"] += out.t_prefill + out.t_generate
            t["spec_generations_interrupted_total"] += int(out.interrupted)

    def render(self, waiting: int, running: int) -> str:
        lines = []
        with self._lock:
            for name, (kind, about) in METRICS.items():
                lines += [f"# HELP {name} {about}", f"# TYPE {name} {kind}"]
                if name == "spec_requests_total":
                    for (endpoint, status), n in sorted(self.requests.items()):
                        lines.append(f'{name}{{endpoint="{endpoint}",status="{status}"}} {n}')
                elif name == "spec_queue_depth":
                    lines.append(f"{name} {waiting}")
                elif name == "spec_requests_running":
                    lines.append(f"{name} {running}")
                else:
                    lines.append(f"{name} {_number(self.totals[name])}")
        return "\n".join(lines) + "\n"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6f}"
