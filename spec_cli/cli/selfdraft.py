"""The layer search behind `--drafter self`, as `spec bench --drafter self` shows it."""

from __future__ import annotations

from pathlib import Path

from .. import ui
from ..selfdraft import MIN_GAIN, cached_search, draft_base


def render_search(target, target_path: Path) -> None:
    base = draft_base(target_path, create=False)
    result = cached_search(target, base) if base is not None else None
    if result is None:
        return
    rows = [
        [c.blocks, str(len(c.keep)), c.how, f"{c.acceptance:.2f}", f"{c.draft_ms:.1f}", f"{c.speedup:.2f}x", str(c.draft_len)]
        for c in result.scored[:12]
    ]
    ui.table(
        f"self-draft: blocks of {result.n_blocks} kept, best first ({len(result.scored)} measured in {result.seconds:.0f} s)",
        ["blocks", "n", "found by", "accept", "step ms", "pred.", "g"], rows,
    )  # fmt: skip
    b = result.best
    verdict = "chosen" if result.pays() else f"not predicted to pay (below {MIN_GAIN:.2f}x): auto leaves it out"
    ui.line(
        f"self-draft: blocks {b.blocks} {verdict}; one target token {result.target_ms:.1f} ms, one draft step {b.draft_ms:.1f} ms"
        f" · accept: share of the target's greedy tokens on the calibration text that the cut model's argmax agrees with"
    )
