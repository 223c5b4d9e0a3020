"""The bench's files: --json (everything: settings, machine, every run, the summary) and --csv (one row per run).

Both are written whole or not at all (files.write_text_atomic): a full disk or a file-size
limit leaves any earlier file of that name as it was, and no partial file beside it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import SpecError
from ..files import write_text_atomic
from .harness import BenchResult

CSV_FIELDS = [
    "engine", "mode", "drafter", "draft_len", "prompt_id", "category", "repeat", "order", "generated", "seconds",
    "tokens_per_second", "drafted", "accepted", "target_passes", "accept_hist", "t_target_decode", "t_draft",
    "t_draft_decode", "t_outside_decode", "stop_reason", "output_check", "tie_gap", "rounds_by_drafter",
    "lengths_used", "seed", "error", "rollback", "departs_at", "logprob",
]  # fmt: skip


def check_writable(path: Path, what: str) -> None:
    """Fail before the minutes of measuring, not after, when an output path cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{what} path is a directory: {p}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise SpecError(f"cannot write {what} file {p}: folder {parent} does not exist")
    existed = p.exists()
    try:
        with p.open("a"):
            pass
    except OSError as e:
        raise SpecError(f"cannot write {what} file {p}: {e.strerror}; choose another path") from None
    if not existed:
        p.unlink()


def check_paths(json_path: Path | None, csv_path: Path | None, plot_path: Path | None) -> None:
    """Every output asked for can be written (and --plot has matplotlib), before any model is loaded."""
    for path, what in ((json_path, "JSON"), (csv_path, "CSV"), (plot_path, "plot")):
        if path is not None:
            check_writable(path, what)
    if plot_path is not None:
        from .plot import require_matplotlib

        require_matplotlib()


def write_outputs(result: BenchResult, json_path: Path | None, csv_path: Path | None, plot_path: Path | None) -> Iterator[Path]:
    """Write the files asked for, in this order, yielding each path once it is written."""
    if json_path is not None:
        write_json(result, json_path)
        yield json_path
    if csv_path is not None:
        write_csv(result, csv_path)
        yield csv_path
    if plot_path is not None:
        from .plot import plot_in_child

        plot_in_child(result, plot_path)
        yield plot_path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def write_json(result: BenchResult, path: Path) -> None:
    write_text_atomic(path, json.dumps(result.to_dict(), indent=1, default=_json_default, allow_nan=True) + "\n")


def write_csv(result: BenchResult, path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in result.runs:
        row = {k: getattr(r, k) for k in CSV_FIELDS}
        row["accept_hist"] = " ".join(str(x) for x in r.accept_hist) if r.accept_hist is not None else ""
        for k in ("rounds_by_drafter", "lengths_used"):
            row[k] = " ".join(f"{a}:{b}" for a, b in row[k].items()) if row[k] else ""
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())
