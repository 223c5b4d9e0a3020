"""What one target pass of K tokens and one draft step cost on this machine.

Speculation pays only when verifying K tokens costs much less than K single
steps, which depends on the machine, the models and the thread count, so it is
measured, not assumed. `spec bench` measures it as part of its report; `spec run`
measures it once per (machine, model files, settings) and keeps it in the cache.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import SpecError
from .files import write_text_atomic
from .llama import Model
from .presets import cache_dir

COST_SAMPLES = 5
# A curve whose pass of K + 1 tokens costs less than this share below the pass of K is not the
# machine's (noise, or another program); it is measured again, up to MAX_ATTEMPTS times in all.
INCREASE_TOLERANCE = 0.1
MAX_ATTEMPTS = 3
# A cached curve is checked at K = 1 and K = SPOT_K before each use; a ratio between the two that
# moved by more than SHAPE_TOLERANCE either way means the curve is not this machine's now.
SPOT_K = 4
SHAPE_TOLERANCE = 1.5
# Part of the cache key: curves measured the old ways (cold compute graph; timed without
# waiting for a GPU to finish) are not reused.
CURVE_METHOD = "warm-graph-sync-ids"
CALIBRATION_TEXT = "The quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly. " * 3


@dataclass
class CostCurve:
    target_ms: list[float]  # target_ms[k - 1]: one target llama_decode of k tokens, logits on every row
    draft_ms: float  # one draft step: a one-token llama_decode plus the argmax the drafter takes (nan: no draft)
    # One two-token draft pass between one-token ones, as the draft's catch-up after a round
    # that accepted every draft (speedup.py); nan when not measured (no draft, older caches).
    draft2_ms: float = float("nan")
    # When and how a cached curve was measured (empty for a curve measured in passing).
    measured_at: str = ""
    how: str = ""


def measure_costs(
    target: Model, draft: Model | None, prompt: Sequence[int], max_k: int, samples: int = COST_SAMPLES
) -> CostCurve:
    """Time one target llama_decode of k = 1..max_k tokens after `prompt`, and one draft step.

    The greedy verification pass asks for an id on every row (backend sampling where the
    build has it, else numpy's argmax of full rows), so the curve times that. The k
    values are interleaved within each sample so that drift spreads over all of them,
    and each timed pass follows an untimed one of the same size: llama.cpp reuses the
    compute graph when consecutive batches have the same shape, as they do in a
    decoding loop, and with a cold graph plain decoding looked dearer than it is in
    the loop, so every predicted speedup came out too high. Both caches are left
    empty.
    """
    medians = _time_passes(target, prompt, range(1, max_k + 1), samples)
    target_ms = [medians[k] for k in range(1, max_k + 1)]
    filler = _filler(prompt, max_k)

    draft_ms = draft2_ms = float("nan")
    if draft is not None:
        # A draft from another model family (drafters/crossvocab.py) has other token ids;
        # a step costs the same whichever ids it reads, so any valid ones will do.
        prompt = [int(t) % draft.n_vocab for t in prompt]
        filler = [t % draft.n_vocab for t in filler]
        draft.reset()
        draft.sync(prompt, logits="none")
        base = draft.n_past
        steps, pairs = [], []
        for i in range(samples * 4):
            t0 = time.perf_counter()
            draft.eval_argmax([filler[i % len(filler)]], rows="last")
            steps.append(time.perf_counter() - t0)
            draft.truncate(base)
            if i % 2:
                # a two-token pass right after one-token ones, as in the loop
                t0 = time.perf_counter()
                draft.eval_argmax([filler[i % len(filler)], filler[(i + 1) % len(filler)]], rows="last")
                pairs.append(time.perf_counter() - t0)
                draft.truncate(base)
        draft.reset()
        draft_ms = 1000.0 * float(np.median(steps))
        draft2_ms = 1000.0 * float(np.median(pairs))
    return CostCurve(target_ms=target_ms, draft_ms=draft_ms, draft2_ms=draft2_ms)


def spot_costs(target: Model, prompt: Sequence[int], k: int, samples: int = 3) -> tuple[float, float]:
    """The median cost in ms of a one-token and of a k-token target pass after `prompt`."""
    medians = _time_passes(target, prompt, (1, k), samples)
    return medians[1], medians[k]


def _filler(prompt: Sequence[int], n: int) -> list[int]:
    filler = [int(t) for t in prompt[1:]] or [int(prompt[0])]
    return (filler * (n // len(filler) + 1))[:n]


def _time_passes(target: Model, prompt: Sequence[int], ks: Sequence[int], samples: int) -> dict[int, float]:
    """Median ms of one target pass of k tokens after `prompt`, for each k (interleaved within
    each sample, each timed pass after an untimed one of its shape); the cache is left empty."""
    filler = _filler(prompt, max(ks))
    target.reset()
    target.sync(prompt, logits="none")
    base = target.n_past
    times: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(samples):
        for k in times:
            target.eval_argmax(filler[:k])  # same shape: the timed pass reuses its graph
            target.truncate(base)
            before = target.decode_seconds
            target.eval_argmax(filler[:k])
            times[k].append(target.decode_seconds - before)
            target.truncate(base)
    target.reset()
    return {k: 1000.0 * float(np.median(t)) for k, t in times.items()}


def _identity(model: Model | None) -> str | None:
    if model is None:
        return None
    st = model.path.stat()
    ident = f"{model.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|t{model.n_threads}|ngl{model.n_gpu_layers}"
    # Over llama.cpp's RPC backend every pass pays the network: a curve of its own.
    rpc = getattr(model, "rpc_servers", ())
    return ident + (f"|rpc{','.join(rpc)}" if rpc else "")


def cached_costs(target: Model, draft: Model | None, max_k: int, notify: Callable[[str], None] = lambda s: None) -> CostCurve:
    """The cost curve for this pair and machine, measured once and then read from the cache.

    It is a prior: the run's own passes correct it as the run goes (adaptive.py), and a run
    that finds it far off drops it from the cache (forget_costs), so the next run measures again.
    """
    key = _key(target, draft, max_k)
    path = cache_dir() / "calibration.json"
    table = _read_table(path, notify)
    cached = _curve(table[key]) if key in table else None
    prompt = target.tokenize(CALIBRATION_TEXT)
    if cached is not None and not increasing(cached.target_ms):
        # A pass of more tokens cannot cost less than one of fewer: measured while something
        # else ran (a curve read 1:24 2:140 3:85 4:60 ms here once, and kept auto off for good).
        notify(f"the cached cost curve is not increasing ({_fmt(cached.target_ms)}): measured on a busy machine; measuring again")
    elif cached is not None:
        # A curve measured while the machine was busy (or on another power profile) would steer
        # every later run, and a curve too dear beyond K = 1 keeps a paying draft off for good
        # (it is never tried, so the run never times a longer pass). Check two points against
        # a few quick passes: the speed of a one-token pass, and what a SPOT_K-token pass costs
        # next to it.
        k = min(SPOT_K, len(cached.target_ms))
        one, more = spot_costs(target, prompt[:8], k)
        speed = one / cached.target_ms[0]
        shape = (more / one) / (cached.target_ms[k - 1] / cached.target_ms[0])
        if 0.5 <= speed <= 2.0 and 1.0 / SHAPE_TOLERANCE <= shape <= SHAPE_TOLERANCE:
            return cached
        notify(
            f"the cached cost curve is stale (1 token: {cached.target_ms[0]:.1f} ms then, {one:.1f} ms now; "
            f"{k} tokens: {cached.target_ms[k - 1]:.1f} ms then, {more:.1f} ms now); measuring again"
        )
    elif key in table:
        notify(f"the cached cost curve in {path} is damaged; measuring again (a few seconds)")
    else:
        notify("measuring this machine's cost curve once (a few seconds); it is cached for later runs")
    curve = robust_costs(target, draft, prompt, max_k)
    table[key] = asdict(curve)
    _write_table(path, table)
    return curve


def forget_costs(target: Model, draft: Model | None, max_k: int) -> bool:
    """Drop this pair's cached curve, so that the next run measures it again; False if there was none."""
    path = cache_dir() / "calibration.json"
    table = _read_table(path, lambda s: None)
    if table.pop(_key(target, draft, max_k), None) is None:
        return False
    _write_table(path, table)
    return True


def robust_costs(target: Model, draft: Model | None, prompt: Sequence[int], max_k: int) -> CostCurve:
    """measure_costs, again (up to MAX_ATTEMPTS in all) while the curve is not increasing.

    A busy machine only adds time, and adds it unevenly; so each K keeps the lowest of the
    attempts' medians, and the curve is made increasing by the lowest cost at K or above: a
    spike at one K is the noise, not the machine. What was done is recorded in `how`.
    """
    attempts = [measure_costs(target, draft, prompt, max_k)]
    while not increasing(attempts[-1].target_ms) and len(attempts) < MAX_ATTEMPTS:
        attempts.append(measure_costs(target, draft, prompt, max_k))
    pooled = [min(a.target_ms[k] for a in attempts) for k in range(max_k)]
    target_ms = [min(pooled[k:]) for k in range(max_k)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return CostCurve(
        target_ms=target_ms,
        draft_ms=float(np.median([a.draft_ms for a in attempts])),
        draft2_ms=float(np.median([a.draft2_ms for a in attempts])),
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        how=(
            f"{len(attempts)} attempt(s) of {COST_SAMPLES} samples per K, medians, the lowest per K"
            + (", made increasing" if target_ms != pooled else "")
            + f"; load average {load:.2f} at the start"
        ),
    )


def increasing(target_ms: Sequence[float], tolerance: float = INCREASE_TOLERANCE) -> bool:
    """Whether each pass costs at least (1 - tolerance) of the pass of one token fewer."""
    return all(b >= (1.0 - tolerance) * a for a, b in zip(target_ms, target_ms[1:]))


def _key(target: Model, draft: Model | None, max_k: int) -> str:
    return "|".join(str(x) for x in (CURVE_METHOD, platform.node(), os.cpu_count(), _identity(target), _identity(draft), max_k))


def _write_table(path, table: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(table, indent=1))
    except (OSError, SpecError):
        pass  # a read-only cache only means measuring again next time


def _fmt(target_ms: Sequence[float]) -> str:
    return " ".join(f"{k}:{v:.1f}" for k, v in enumerate(target_ms, 1)) + " ms"


def _read_table(path, notify: Callable[[str], None]) -> dict:
    """The calibration cache; a damaged one (cut short, edited, not JSON) is replaced whole on the next write."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        table = None
    if not isinstance(table, dict):
        notify(f"the calibration cache {path} is damaged; it is measured again and rewritten")
        return {}
    return table


def _curve(entry) -> CostCurve | None:
    """A cached entry as a CostCurve, or None when it is not one."""

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    try:
        curve = CostCurve(**entry)
    except TypeError:  # not a mapping, or other fields
        return None
    if (
        not isinstance(curve.target_ms, list)
        or not curve.target_ms
        or not all(number(t) and 0 < t < float("inf") for t in curve.target_ms)
    ):
        return None
    if not isinstance(curve.measured_at, str) or not isinstance(curve.how, str):
        return None
    return curve if number(curve.draft_ms) and number(curve.draft2_ms) else None
