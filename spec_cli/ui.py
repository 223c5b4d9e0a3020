"""Everything the user sees, apart from the generated text itself. The only module that imports rich."""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console
from rich.table import Table

from .stats import Stats

# Messages, progress and summaries go to stderr so that stdout carries only the output.
err = Console(stderr=True, highlight=False, width=int(os.environ["SPEC_WIDTH"]) if os.environ.get("SPEC_WIDTH") else None)
out = Console(highlight=False)


def error(message: str) -> None:
    """One line, no traceback: what is wrong and what to do."""
    first = " ".join(str(message).split())
    err.print(f"[bold red]error:[/] {first}", markup=True, soft_wrap=True)


def info(message: str) -> None:
    err.print(f"[dim]{message}[/]", markup=True, soft_wrap=True) if err.is_terminal else err.print(message, markup=False, soft_wrap=True)


@contextlib.contextmanager
def status(message: str):
    if err.is_terminal:
        with err.status(message):
            yield
    else:
        yield


def write_text(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def summary_line(s: Stats) -> str:
    parts = [f"{s.generated} tokens", f"{s.tokens_per_second:.1f} tok/s"]
    if s.drafted:
        parts.append(f"drafted {s.drafted}, accepted {s.accepted} ({100 * s.acceptance_rate:.0f}%)")
    parts.append(f"{s.tokens_per_pass:.2f} tokens/target pass")
    return " · ".join(parts)


def print_summary(s: Stats) -> None:
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    mode = f"speculative, drafter {s.drafter}, draft length {s.draft_len}" if s.drafter != "none" else "target only (no speculation)"
    t.add_row("mode", mode)
    t.add_row("generated", f"{s.generated} tokens in {s.t_total:.2f} s = {s.tokens_per_second:.1f} tok/s (stop: {s.stop_reason})")
    t.add_row("prompt", f"{s.prompt_tokens} tokens, {s.prompt_tokens_evaluated} evaluated in {s.t_prefill:.2f} s")
    if s.drafter != "none":
        t.add_row(
            "drafts",
            f"{s.drafted} proposed, {s.accepted} accepted = {100 * s.acceptance_rate:.1f}% acceptance",
        )
        if s.accept_hist:
            hist = " ".join(f"{k}:{n}" for k, n in enumerate(s.accept_hist) if n)
            t.add_row("accepted/round", hist)
    t.add_row("target passes", f"{s.target_passes}, {s.tokens_per_pass:.2f} tokens per pass")
    tot = s.t_total or 1e-9
    t.add_row(
        "time",
        f"target {s.t_target:.2f} s ({100 * s.t_target / tot:.0f}%) · draft {s.t_draft:.2f} s "
        f"({100 * s.t_draft / tot:.0f}%) · other {s.t_other:.2f} s ({100 * s.t_other / tot:.0f}%)",
    )
    for note in s.notes:
        t.add_row("note", note)
    err.print()
    err.print(t)
