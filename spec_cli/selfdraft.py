"""A draft from the target itself (`--drafter self`): some of its blocks, chosen by measurement.

Skipping layers of an ordinary model drafts without training (Draft & Verify, Zhang et
al. 2023), but which layers decides everything: the first third of a model alone drafts
noise. So candidates are measured, not assumed. Each one is cut from the target's file
(llama/cut.py), loaded, and scored by the speedup that speedup.py's formula predicts
from two measurements on this machine:

- acceptance: the target continues a short calibration text greedily; the candidate reads
  that text in one batch, and the share of positions where its argmax is the target's next
  token is its per-token acceptance a (a greedy draft is accepted exactly when it agrees);
- the cost of one draft step: the median of one-token passes after that text,

with the target's cost curve from calibrate.py. The candidates are contiguous prefixes,
evenly spaced subsets and first-and-last runs, then a greedy refinement from the best
(drop one block, add one back) while the time budget lasts. The choice is cached per target
file and machine; the cut model is cached per target file and kept blocks.

An F16 or F32 target is first requantized to Q4_K_M once, and candidates are cut from that
copy: quantizing each candidate would take longer than measuring it, and a draft step of an
F16 model is as dear per block as the target's.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import SpecError
from .files import write_text_atomic
from .llama import Model, quantize
from .llama.cut import GLOBAL_EVERY, block_kind, check_cut, format_blocks, read_gguf, write_cut
from .presets import Notify, _prepare_cache, cache_dir

# Part of the search cache's key: a change in how candidates are scored invalidates old choices.
SEARCH_METHOD = "argmax-agreement-v1"
SEARCH_BUDGET_S = 180.0
MAX_DRAFT = 8  # the longest draft the prediction considers (auto's own limit)
# A self-draft must promise at least this gain to be chosen; auto takes one only then.
MIN_GAIN = 1.05
STEP_SAMPLES = 9
# Greedy continuations of these are the calibration text: prose and code, as the bench suite.
CALIBRATION_PROMPTS = (
    "The history of the printing press begins in the fifteenth century, when",
    'def merge_sorted(a, b):\n    """Merge two sorted lists into one sorted list."""\n',
)
CALIBRATION_TOKENS = 40
REQUANT = "Q4_K_M"
_FLOAT_FILE_TYPES = {0: "F32", 1: "F16"}  # general.file_type


@dataclass
class Candidate:
    keep: list[int]
    acceptance: float
    draft_ms: float
    speedup: float
    draft_len: int  # the draft length at which the prediction peaks
    how: str  # prefix, spaced, ends, greedy

    @property
    def blocks(self) -> str:
        return format_blocks(self.keep)


@dataclass
class SearchResult:
    n_blocks: int
    target_ms: float  # one target token
    best: Candidate | None = None  # the highest predicted speedup (None: nothing measured)
    scored: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0

    def pays(self) -> bool:
        return self.best is not None and self.best.speedup >= MIN_GAIN


# --- the files -----------------------------------------------------------------


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


def self_dir() -> Path:
    return cache_dir() / "models" / "self"


def draft_base(target_path: Path, notify: Notify = lambda s: None, create: bool = True) -> Path | None:
    """The file candidates are cut from: the target, or its Q4_K_M copy where the target is F16/F32
    (None where that copy is not written yet and `create` is False)."""
    ftype = read_gguf(target_path).values.get("general.file_type")
    if ftype not in _FLOAT_FILE_TYPES:
        return target_path
    dst = self_dir() / f"{target_path.stem}.{_digest(_identity(target_path))}.{REQUANT.lower()}.gguf"
    if not dst.exists():
        if not create:
            return None
        _prepare_cache(dst)
        notify(f"--drafter self: requantizing the {_FLOAT_FILE_TYPES[ftype]} target to {REQUANT}, once, into {dst.parent}")
        quantize(target_path, dst, REQUANT)
    return dst


def cut_path(base: Path, keep: Sequence[int]) -> Path:
    """Where the cut of `base` keeping `keep` is cached: keyed by the file's identity and the blocks."""
    return self_dir() / f"{base.stem}.{_digest(_identity(base), format_blocks(keep))}.keep-{format_blocks(keep)}.gguf"


def derive(base: Path, keep: Sequence[int], notify: Notify = lambda s: None) -> Path:
    """The cut model of `base` with blocks `keep`, written once (temporary file and rename)."""
    dst = cut_path(base, keep)
    if not dst.exists():
        _prepare_cache(dst)
        notify(f"--drafter self: writing the draft (blocks {format_blocks(keep)} of {base.name}) into {dst.parent}")
        write_cut(base, dst, keep)
    return dst


# --- the search ----------------------------------------------------------------


def candidates(arch: str, n: int) -> list[tuple[list[int], str]]:
    """The first round: prefixes, evenly spaced subsets and first-and-last runs, of 1/4 to 3/4 of the blocks."""
    out = []
    for frac in (0.25, 1 / 3, 0.5, 2 / 3, 0.75):
        k = max(1, round(n * frac))
        out.append((list(range(k)), "prefix"))
        out.append((sorted({int(round(x)) for x in np.linspace(0, n - 1, k)}), "spaced"))
        head = (k + 1) // 2
        out.append((list(range(head)) + list(range(n - (k - head), n)), "ends"))
    seen, kept = set(), []
    for keep, how in out:
        keep = fit(arch, n, keep)
        if keep and tuple(keep) not in seen:
            seen.add(tuple(keep))
            kept.append((keep, how))
    return kept


def fit(arch: str, n: int, wanted: Sequence[int]) -> list[int] | None:
    """`wanted` adjusted so that each block keeps its kind at its new index (Gemma 2/3), else as it is."""
    if arch not in GLOBAL_EVERY:
        return list(wanted)
    out, prev = [], -1
    for new, w in enumerate(wanted):
        options = [b for b in range(prev + 1, n) if block_kind(arch, b) == block_kind(arch, new)]
        if not options:
            return None
        prev = min(options, key=lambda b: (abs(b - w), b))
        out.append(prev)
    return out


def neighbours(arch: str, n: int, keep: Sequence[int]) -> list[list[int]]:
    """Draft & Verify's greedy moves: drop one kept block, or add one left out."""
    out = []
    for b in keep:
        if len(keep) > 1:
            out.append([x for x in keep if x != b])
    for b in range(n):
        if b not in keep:
            out.append(sorted([*keep, b]))
    out = [k for k in (fit(arch, n, k) for k in out) if k and len(k) < n]  # the whole target is no draft
    return [list(k) for k in dict.fromkeys(map(tuple, out)) if list(k) != list(keep)]


def calibration_text(target: Model) -> list[tuple[list[int], list[int]]]:
    """(text tokens, the target's verdict at each position) for each calibration prompt.

    The text is the prompt and the target's greedy continuation; the verdicts are the target's
    argmax over it in one batch, as a verification pass reads it (one-token steps part from it
    at near-ties: 5 of 80 positions on Gemma 3 270M Q4_K_M).
    """
    texts = []
    for prompt in CALIBRATION_PROMPTS:
        toks = target.tokenize(prompt)
        target.reset()
        out, ids = [], target.eval_argmax(toks, rows="last")
        for _ in range(CALIBRATION_TOKENS):
            t = int(ids[-1])
            if target.is_eog(t):
                break
            out.append(t)
            ids = target.eval_argmax([t], rows="last")
        if out:
            target.reset()
            verdicts = [int(x) for x in target.eval_argmax(toks + out[:-1], rows="all")[len(toks) - 1 :]]
            texts.append((toks, out, verdicts))
    target.reset()
    return [(toks + out[:-1], verdicts) for toks, out, verdicts in texts]


def agreement(draft: Model, texts: Sequence[tuple[list[int], list[int]]]) -> float:
    """Share of positions where the draft's argmax is the target's (a greedy draft's acceptance)."""
    hits = total = 0
    for text, verdicts in texts:
        draft.reset()
        guesses = np.asarray(draft.eval_argmax(text, rows="all")[len(text) - len(verdicts) :])
        hits += int((guesses == np.asarray(verdicts)).sum())
        total += len(verdicts)
    draft.reset()
    return hits / total if total else 0.0


def step_ms(draft: Model, context: Sequence[int], samples: int = STEP_SAMPLES) -> float:
    """Median ms of one one-token draft pass after `context` (each after an untimed one: a warm graph)."""
    draft.reset()
    draft.sync(list(context), logits="none")
    base = draft.n_past
    times = []
    for i in range(samples + 1):
        t0 = time.perf_counter()
        draft.eval_argmax([int(context[i % len(context)])], rows="last")
        if i:
            times.append(time.perf_counter() - t0)
        draft.truncate(base)
    draft.reset()
    return 1000.0 * float(np.median(times))


def score(a: float, draft_ms: float, target_ms: Sequence[float]) -> tuple[float, int]:
    """(best predicted speedup, the draft length it comes at), as auto would draft."""
    from .adaptive import predicted_speedups

    s = predicted_speedups(a, np.asarray(target_ms) / 1000.0, draft_ms / 1000.0, MAX_DRAFT)
    g = int(np.argmax(s[1:])) + 1
    return float(s[g]), g


def search(
    target: Model,
    base: Path,
    target_ms: Sequence[float],
    budget_s: float = SEARCH_BUDGET_S,
    notify: Notify = lambda s: None,
    step: Callable[[int, str], None] = lambda total, label: None,
) -> SearchResult:
    """Measure candidates cut from `base` against `target` until the budget is spent; the best one wins."""
    header = read_gguf(base)
    arch, n = header.arch, header.n_blocks
    check_cut(arch, n, list(range(n)))  # an architecture spec cannot cut: said before anything is measured
    t0 = time.perf_counter()
    texts = calibration_text(target)
    context = texts[0][0]
    first = candidates(arch, n)
    result = SearchResult(n_blocks=n, target_ms=float(target_ms[0]))
    seen: set[tuple[int, ...]] = set()
    work_dir = self_dir() / "search"

    def measure(keep: list[int], how: str) -> Candidate | None:
        if tuple(keep) in seen:
            return None
        seen.add(tuple(keep))
        work_dir.mkdir(parents=True, exist_ok=True)
        path = work_dir / f"candidate{os.getpid()}.gguf"
        try:
            write_cut(base, path, keep)
            draft = Model(path, n_ctx=max(256, len(context) + 16), n_threads=target.n_threads, label="draft")
            try:
                a = agreement(draft, texts)
                ms = step_ms(draft, context)
            finally:
                draft.close()
        finally:
            path.unlink(missing_ok=True)
        speedup, g = score(a, ms, target_ms)
        c = Candidate(keep, a, ms, speedup, g, how)
        result.scored.append(c)
        return c

    def over() -> bool:
        return time.perf_counter() - t0 > budget_s

    total = len(first) + 2 * n  # the first round and about one pass of refinement: a guide for the bar
    for keep, how in first:
        if over():
            break
        step(total, f"self-draft: blocks {format_blocks(keep)}")
        measure(keep, how)
    best = max(result.scored, key=lambda c: c.speedup, default=None)
    improved = best is not None
    while improved and not over():
        improved = False
        for keep in neighbours(arch, n, best.keep):
            if over():
                break
            if tuple(keep) in seen:
                continue
            step(total, f"self-draft: refining, blocks {format_blocks(keep)}")
            c = measure(keep, "greedy")
            if c is not None and c.speedup > best.speedup:
                best, improved = c, True
                break  # first improvement: move there and look around again
    result.scored.sort(key=lambda c: -c.speedup)
    result.best = result.scored[0] if result.scored else None
    result.seconds = time.perf_counter() - t0
    return result


# --- the cached choice -----------------------------------------------------------


def _search_key(target: Model, base: Path) -> str:
    return "|".join(
        str(x) for x in (SEARCH_METHOD, platform.node(), os.cpu_count(), _identity(target.path), _identity(base),
                         f"t{target.n_threads}", f"ngl{target.n_gpu_layers}")
    )  # fmt: skip


def _table_path() -> Path:
    return cache_dir() / "selfdraft.json"


def _read_table() -> dict:
    try:
        table = json.loads(_table_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def cached_search(target: Model, base: Path) -> SearchResult | None:
    entry = _read_table().get(_search_key(target, base))
    try:
        best = Candidate(**entry["best"]) if entry["best"] else None
        return SearchResult(
            entry["n_blocks"], entry["target_ms"], best, [Candidate(**c) for c in entry["scored"]], entry["seconds"]
        )
    except (TypeError, KeyError):
        return None


def _store(target: Model, base: Path, result: SearchResult) -> None:
    table = _read_table()
    table[_search_key(target, base)] = asdict(result)
    try:
        write_text_atomic(_table_path(), json.dumps(table, indent=1))
    except SpecError:
        pass  # a read-only cache only means searching again next time


def choose(
    target: Model, target_path: Path, notify: Notify = lambda s: None, budget_s: float = SEARCH_BUDGET_S
) -> tuple[Path, SearchResult]:
    """The cut file that --drafter self uses (searched once, then from the cache), and the search behind it."""
    base = draft_base(target_path, notify)
    result = cached_search(target, base)
    if result is None:
        from . import ui
        from .calibrate import cached_costs

        costs = cached_costs(target, None, MAX_DRAFT + 1, notify)
        notify(
            f"--drafter self: choosing which of the target's blocks to keep, once (at most {budget_s:.0f} s); cached for later runs"
        )
        with ui.progress_bar() as step:
            result = search(target, base, costs.target_ms, budget_s, notify, step)
        _store(target, base, result)
    if result.best is None:
        raise SpecError("--drafter self: no candidate could be measured; try --drafter ngram")
    b = result.best
    notify(
        f"--drafter self: blocks {b.blocks} of {result.n_blocks} (acceptance {b.acceptance:.2f}, draft step {b.draft_ms:.1f} ms "
        f"against {result.target_ms:.1f} ms for the target, predicted {b.speedup:.2f}x at {b.draft_len} drafts)"
        + ("" if result.pays() else "; it is not predicted to pay on this machine")
    )
    return derive(base, b.keep, notify), result


def cached_choice(target: Model, target_path: Path) -> Path | None:
    """For auto: the cut file where an earlier search found one that pays, else None (auto never searches)."""
    try:
        base = draft_base(target_path, create=False)
        result = cached_search(target, base) if base is not None else None
    except (SpecError, OSError):
        return None
    if result is None or not result.pays():
        return None
    return derive(base, result.best.keep)
