"""`spec bench --plot`: one PNG, two panels. The only module that imports matplotlib (optional).

Left: speedup over the target alone against draft length, measured and predicted, with
the break-even line. Right: how many drafts a round accepted, at the recommended draft
length (or the best measured one), beside what the independence model expects.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .. import speedup
from ..errors import SpecError
from ..files import write_bytes_atomic
from .harness import BenchResult
from .settings import AUTO, LLAMA_CPP, MODEL, NGRAM, SPEC, SPECULATIVE, TREE

WIDTH_IN, HEIGHT_IN, DPI = 11.0, 4.2, 100  # 1100 x 420 pixels


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SpecError("--plot needs matplotlib: pip install 'spec-cli[plot]'") from None


def plot(result: BenchResult, path: Path) -> None:
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    def rows(kind: str) -> list:
        return sorted((s for s in result.summary if s.engine == SPEC and s.mode == SPECULATIVE and (s.drafter or MODEL) == kind),
                      key=lambda s: s.draft_len)  # fmt: skip

    spec_rows = rows(MODEL)
    ref_rows = sorted((s for s in result.summary if s.engine == LLAMA_CPP and s.mode == SPECULATIVE and s.drafter != NGRAM),
                      key=lambda s: s.draft_len)  # fmt: skip

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    ax, bx = fig.subplots(1, 2)

    gs = [s.draft_len for s in spec_rows]
    measured = [_nan(s.speedup) for s in spec_rows]
    predicted = [_nan(s.predicted) for s in spec_rows]
    ax.axhline(1.0, color="0.5", lw=1, ls=":", label="target alone")
    if spec_rows:
        ax.plot(gs, measured, "o-", color="tab:blue", lw=2, label="spec, draft model, measured")
        ax.plot(gs, predicted, "s--", color="tab:orange", lw=1.5, label="spec, draft model, predicted")
    if ref_rows and any(np.isfinite(_nan(s.speedup)) for s in ref_rows):
        ax.plot([s.draft_len for s in ref_rows], [_nan(s.speedup) for s in ref_rows], "^-", color="tab:green", lw=1.2,
                label="llama-speculative-simple vs llama-completion")  # fmt: skip
    for kind, style, color in ((NGRAM, "d-", "tab:red"), (TREE, "v-", "tab:brown")):
        extra = rows(kind)
        if extra and any(np.isfinite(_nan(s.speedup)) for s in extra):
            ax.plot([s.draft_len for s in extra], [_nan(s.speedup) for s in extra], style, color=color, lw=1.2,
                    label=f"spec, {kind} drafter, measured")  # fmt: skip
    auto = rows(AUTO)
    if auto and np.isfinite(_nan(auto[0].speedup)):
        ax.axhline(auto[0].speedup, color="tab:purple", lw=1.5, ls="--", label=f"spec, auto: {auto[0].speedup:.2f}x")
    rec = result.recommendation.get("model_draft_len", result.recommendation.get("draft_len"))
    if rec is not None and rec in gs:
        ax.annotate(f"recommended: {rec}", (rec, measured[gs.index(rec)]), xytext=(0, 12),
                    textcoords="offset points", ha="center", fontsize=9)  # fmt: skip
    ax.set_xlabel("draft length (tokens drafted per round)")
    ax.set_ylabel("speedup over the target alone")
    ax.set_xticks(sorted({s.draft_len for k in (MODEL, NGRAM, TREE) for s in rows(k)}) or gs)
    pays = result.recommendation.get("drafter") is not None
    ax.set_title("Speedup by draft length" if pays else "Speedup by draft length: speculation does not pay")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")

    shown = next((s for s in spec_rows if s.draft_len == rec), None)
    # Without a recommended draft-model length: the fastest configuration that drafted at all.
    drafted = [s for k in (MODEL, NGRAM, TREE, AUTO) for s in rows(k) if s.accept_hist and sum(s.accept_hist) > 0]
    if shown is None and drafted:
        shown = max(drafted, key=lambda s: _nan(s.speedup) if np.isfinite(_nan(s.speedup)) else -1.0)
    if shown is not None and shown.accept_hist and sum(shown.accept_hist) > 0:
        h = np.asarray(shown.accept_hist, dtype=float)
        k = np.arange(h.size)
        bx.bar(k, h / h.sum(), color="tab:blue", alpha=0.8, label="measured")
        if shown.alpha is not None:
            bx.plot(k, speedup.acceptance_length_probs(shown.alpha, shown.draft_len), "o", color="tab:orange",
                    label=f"independent acceptance, a = {shown.alpha:.2f}")  # fmt: skip
        bx.set_xticks(k)
        what = {AUTO: "auto", NGRAM: f"n-gram, draft length {shown.draft_len}", TREE: f"tree, depth {shown.draft_len}"}
        bx.set_title(f"Drafts accepted per round, {what.get(shown.drafter, f'draft length {shown.draft_len}')}")
        bx.legend(fontsize=8)
    else:
        bx.text(0.5, 0.5, "no speculative rounds", ha="center", va="center", transform=bx.transAxes)
    bx.set_xlabel("drafted tokens accepted in a round")
    bx.set_ylabel("share of rounds")
    bx.grid(alpha=0.3, axis="y")

    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_bytes_atomic(path, png.getvalue())


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def plot_in_child(result: BenchResult, path: Path, timeout: float = 300.0) -> None:
    """`plot`, in a fresh interpreter that never loads llama.cpp.

    matplotlib in a process that has loaded a CUDA build of llama.cpp can segfault
    (docs/machine-notes.md, "GPU"); a child that only unpickles the result and draws never meets it.
    """
    import os
    import pickle
    import subprocess
    import sys
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix="spec-plot-", suffix=".pickle")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(result, f)
        env = {**os.environ, "SPEC_NO_PRELOAD": "1", "MPLBACKEND": "Agg"}
        cmd = [sys.executable, "-m", "spec_cli.bench.plot", tmp, str(path)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SpecError(
                f"drawing {path} took over {timeout:.0f} s; the bench results are kept, rerun with --json to save them"
            ) from None
    finally:
        os.unlink(tmp)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise SpecError(f"could not draw {path}: {lines[-1] if lines else f'exit code {proc.returncode}'}")


def _main(argv: list[str]) -> int:
    import pickle

    src, dst = argv
    with open(src, "rb") as f:
        result = pickle.load(f)
    try:
        plot(result, Path(dst))
    except SpecError as e:
        print(f"{e}", file=__import__("sys").stderr)
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
