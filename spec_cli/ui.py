"""Everything the user sees, apart from the generated text itself. The only module that imports rich."""

from __future__ import annotations

import contextlib
import os
import sys

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .stats import Stats

# Messages, progress and summaries go to stderr so that stdout carries only the output.
err = Console(stderr=True, highlight=False, width=int(os.environ["SPEC_WIDTH"]) if os.environ.get("SPEC_WIDTH") else None)
out = Console(highlight=False)


def error(message: str) -> None:
    """One line, no traceback: what is wrong and what to do."""
    first = " ".join(str(message).split())
    err.print(f"[bold red]error:[/] {escape(first)}", markup=True, soft_wrap=True)


def info(message: str) -> None:
    err.print(f"[dim]{message}[/]", markup=True, soft_wrap=True) if err.is_terminal else err.print(
        message, markup=False, soft_wrap=True
    )


@contextlib.contextmanager
def status(message: str):
    if err.is_terminal:
        with err.status(message):
            yield
    else:
        yield


def note(message: str) -> None:
    """Text for the user on stderr, taken literally (file names and user text may hold brackets)."""
    err.print(message, style="dim" if err.is_terminal else None, markup=False, highlight=False, soft_wrap=True)


def write_text(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


DRAFT_STYLE = "green"


def write_span(piece: str, origin: str) -> None:
    """Generated text, coloured on a terminal when it came from accepted drafts (`spec run --show-drafts`)."""
    if out.is_terminal and origin == "draft":
        out.print(piece, style=DRAFT_STYLE, end="", markup=False, highlight=False, soft_wrap=True)
        out.file.flush()
    else:
        write_text(piece)


def draft_legend(origins: list[str]) -> None:
    n = sum(1 for o in origins if o == "draft")
    if err.is_terminal:
        err.print(f"[{DRAFT_STYLE}]green[/]: accepted drafts ({n} of {len(origins)} tokens); plain: the target's own tokens",
                  markup=True, soft_wrap=True)  # fmt: skip
    else:
        err.print(f"{n} of {len(origins)} tokens came from accepted drafts", markup=False, soft_wrap=True)


def print_summary(s: Stats) -> None:
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    if s.drafter == "none":
        mode = "target only (no speculation)"
    else:
        mode = f"speculative, drafter {s.drafter}, " + (
            f"draft length {s.draft_len}" if s.draft_len else "draft length chosen each round"
        )
    if s.lossy:
        mode += f"; LOSSY: rollback threshold {s.rollback_threshold:g}, the output is not the target's own"
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
        f"target passes {s.t_target:.2f} s ({100 * s.t_target / tot:.0f}%) · draft passes {s.t_draft_decode:.2f} s "
        f"({100 * s.t_draft_decode / tot:.0f}%) · outside them {s.t_other:.2f} s ({100 * s.t_other / tot:.1f}%)",
    )
    if s.generated:
        per_token = 1e6 / s.generated
        t.add_row(
            "outside, per token",
            f"drafter {s.t_drafter_other * per_token:.0f} µs · verification {s.t_verify_other * per_token:.0f} µs · "
            f"text {s.t_emit * per_token:.0f} µs · loop {s.t_loop * per_token:.0f} µs",
        )
    for note in s.notes:
        t.add_row("note", note)
    err.print()
    err.print(t)


# --- generic helpers for long-running commands (spec bench) -------------------


@contextlib.contextmanager
def progress_bar():
    """A progress bar on stderr; yields step(total, label), to be called once per step.

    Nothing is drawn when stderr is not a terminal (pipes, CI logs, tests).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("starting", total=None)
        done = [-1]  # steps finished: a step is done when the next one starts

        def step(total: int, label: str) -> None:
            done[0] += 1
            bar.update(task, total=total, completed=done[0], description=escape(label))

        yield step


@contextlib.contextmanager
def byte_progress(label: str, total: int):
    """A progress bar in bytes on stderr for a long copy (assembling a model); yields advance(nbytes).

    The bar takes what the label and the figures leave of the line, so it fits 80 columns.
    Nothing is drawn when stderr is not a terminal.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=None),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        expand=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task(escape(label), total=total)
        yield lambda n: bar.advance(task, n)


def table(title: str, columns: list[str], rows: list[list[str]], *, right_from: int = 1, to_stdout: bool = True) -> None:
    """A plain Rich table; columns from index `right_from` on are right-aligned (numbers)."""
    # No vertical rules, and the first column (names) never wraps: a bench table has a
    # dozen or more rows and must still read well in an 80-column terminal.
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i >= right_from else "left", no_wrap=i == 0)
    for r in rows:
        t.add_row(*r)
    (out if to_stdout else err).print(t)


def line(text: str, style: str | None = None) -> None:
    """One line of a report on stdout."""
    out.print(text, style=style, markup=False, soft_wrap=True)
