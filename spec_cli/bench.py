"""`spec bench`: is speculative decoding faster here, with this pair, and at which draft length?

One run measures, interleaved so that machine drift hits every configuration alike:
target-only decoding and speculative decoding for a sweep of draft lengths, all through
the same Engine loop, plus (optionally) llama.cpp's reference binaries and
llama-cpp-python's prompt-lookup decoding on the same prompts. Before each generation
both models' caches are cleared and the prompt is evaluated off the clock, so no run
profits from a cache that an earlier run left behind.

Greedy by default, and then every output is checked against the target alone's (up to a
near-tie). Under sampling (--temp > 0) each (prompt, repeat) gets its own seed from the
base seed and the outputs are not compared: equal text is not what lossless means there,
and the distribution tests cover that.

It also measures the machine's cost curve (one target llama_decode of k tokens, one
draft step; calibrate.py), one sample after every prompt's block of runs so that the
curve sees the same machine as the runs, and from it and the measured acceptance
predicts the speedup of each draft length (speedup.py) to print beside the measured one.

No rich, no typer here: the CLI renders what `run_bench` returns.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.metadata
import importlib.resources
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import reference as ref_mod
from . import speedup
from .calibrate import CostCurve, cached_costs, measure_costs
from .decode import Engine, GenerateOptions
from .errors import SpecError
from .files import write_text_atomic
from .sampling import SamplingParams
from .session import AUTO_MAX_DRAFT, LoadedPair, ModelChoice, build_strategy

SCHEMA = "spec-bench/2"
SUITE_RESOURCE = ("data", "bench_prompts.jsonl")
DEFAULT_DRAFT_LENS = (1, 2, 3, 4, 6, 8)
# The bundled suite alternates its five kinds of text, so its first five prompts hold one of
# each; with the default sweep that keeps `spec bench` to a few minutes on a 2-core laptop.
SUITE_DEFAULT_LIMIT = 5
COST_CURVE_MAX_K = 16
WARMUP_TOKENS = 8
# Where greedy outputs part, the two tokens' logits must come this close to the best one,
# in at least one of several ways of batching the same context, for the difference to
# count as a near-tie flipped by batched arithmetic rather than a bug (_Harness.tie_gap_at).
TIE_TOLERANCE = 0.3
# Batch sizes tried for the last tokens of the context, besides plain decoding's replay.
TIE_BATCHES = (2, 3, 4, 5, 6, 8)
GREEDY = SamplingParams(temperature=0.0)
BUSY_SHARE = 0.5  # other programs using more than this share of the CPUs at the start is worth a warning

SPEC, LLAMA_CPP, LLAMA_CPP_PYTHON = "spec", "llama.cpp", "llama-cpp-python"
TARGET, SPECULATIVE, LOOKUP = "target", "speculative", "lookup"
# --drafter: model, ngram and tree are swept over the draft lengths; auto runs once, as
# `spec run` does by default (drafter and length chosen round by round).
MODEL, NGRAM, TREE, AUTO = "model", "ngram", "tree", "auto"
DRAFTERS = (MODEL, NGRAM, TREE, AUTO)
DEFAULT_DRAFTERS = (MODEL, NGRAM, AUTO)
# --control: the target alone a second time, as its own configuration. Its "speedup" over
# the first is pure measurement noise, the yardstick for every other ratio in the table.
CONTROL = "control"
# `auto` must not lose: a prompt below this share of the target alone counts as a loss.
AUTO_FLOOR = 0.97


# --- prompts ------------------------------------------------------------------


@dataclass
class BenchPrompt:
    id: str
    category: str
    text: str


@dataclass
class Suite:
    name: str
    version: int | str | None
    prompts: list[BenchPrompt]


def _parse_jsonl(lines: Sequence[str], source: str) -> Suite:
    name, version, prompts = source, None, []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{source}, line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise SpecError(f"{source}, line {n}: expected a JSON object with a \"prompt\" field")
        if "prompt" not in obj:
            if "version" in obj:  # a header line: {"suite": ..., "version": ...}
                name, version = str(obj.get("suite", name)), obj["version"]
                continue
            raise SpecError(f"{source}, line {n}: no \"prompt\" field")
        text = obj["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise SpecError(f"{source}, line {n}: \"prompt\" must be a non-empty string")
        prompts.append(BenchPrompt(str(obj.get("id", f"p{len(prompts) + 1}")), str(obj.get("category", "user")), text))
    return Suite(name, version, prompts)


def load_suite() -> Suite:
    """The prompt suite shipped with spec (versioned: a changed suite gets a new version)."""
    res = importlib.resources.files("spec_cli").joinpath(*SUITE_RESOURCE)
    suite = _parse_jsonl(res.read_text(encoding="utf-8").splitlines(), "bench_prompts.jsonl")
    if suite.version is None or not suite.prompts:
        raise SpecError("the bundled prompt suite is damaged; reinstall spec")
    return suite


def load_prompts_file(path: Path) -> Suite:
    """--prompts FILE: JSON lines with a "prompt" field, or else one prompt per line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"prompts file not found: {path}") from None
    except IsADirectoryError:
        raise SpecError(f"prompts file is a directory: {path}") from None
    except UnicodeDecodeError:
        raise SpecError(f"prompts file is not UTF-8 text: {path}") from None
    except OSError as e:
        raise SpecError(f"cannot read prompts file {path}: {e.strerror}") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise SpecError(f"prompts file has no prompts: {path}")
    if first.lstrip().startswith("{"):
        suite = _parse_jsonl(lines, Path(path).name)
    else:
        suite = Suite(
            Path(path).name,
            None,
            [BenchPrompt(f"line{i}", "user", ln) for i, ln in enumerate(lines, 1) if ln.strip()],
        )
    if not suite.prompts:
        raise SpecError(f"prompts file has no prompts: {path}")
    return suite


# --- settings and results -------------------------------------------------------


@dataclass
class BenchSettings:
    draft_lens: tuple[int, ...] = DEFAULT_DRAFT_LENS
    repeats: int = 2
    max_tokens: int = 32
    warmup: bool = True
    limit: int | None = None  # use the first N prompts
    reference: str | None = None  # path to llama-speculative-simple (or $SPEC_REFERENCE)
    lookup: bool = False  # llama-cpp-python's prompt lookup against its plain decoding
    drafters: tuple[str, ...] = DEFAULT_DRAFTERS
    control: bool = True  # also run the target alone twice, to show the noise floor
    sampling: SamplingParams = GREEDY  # greedy unless --temp > 0
    seed: int = 0  # base seed under sampling; each (prompt, repeat) gets its own from it (run_seed)

    def check(self) -> None:
        try:
            self.sampling.check()
        except ValueError as e:
            raise SpecError(str(e)) from None  # the words `spec run` uses
        if self.seed < 0:
            raise SpecError(f"--seed must be >= 0, got {self.seed}")
        if not self.drafters:
            raise SpecError("--drafter needs at least one of " + ", ".join(DRAFTERS))
        for d in self.drafters:
            if d not in DRAFTERS:
                raise SpecError(f"--drafter takes {', '.join(DRAFTERS)} (comma-separated), got {d!r}")
        if self.repeats < 1:
            raise SpecError(f"--repeats must be at least 1, got {self.repeats}")
        if self.max_tokens < 1:
            raise SpecError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if self.limit is not None and self.limit < 1:
            raise SpecError(f"--limit must be at least 1, got {self.limit}")
        if not self.draft_lens:
            raise SpecError("--draft-lens needs at least one draft length")
        for g in self.draft_lens:
            if not 1 <= g <= 64:
                raise SpecError(f"draft lengths must be between 1 and 64, got {g}")


def run_seed(base: int, prompt_index: int, repeat: int) -> int:
    """The sampling seed of one (prompt, repeat): fixed by the base seed, different for each.

    Every configuration of the same prompt and repeat shares it (the warm-up is repeat -1),
    so a bench with the same --seed samples the same way again.
    """
    return int(np.random.SeedSequence([base, prompt_index, repeat + 1]).generate_state(1)[0] >> 1)


def parse_drafters(text: str) -> tuple[str, ...]:
    """--drafter model,ngram,auto: the drafters to measure, in the order given, each once."""
    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    for d in names:
        if d not in DRAFTERS:
            raise SpecError(f"--drafter takes {', '.join(DRAFTERS)} (comma-separated), got {d!r}")
    if not names:
        raise SpecError("--drafter needs at least one of " + ", ".join(DRAFTERS))
    return tuple(dict.fromkeys(names))


def parse_draft_lens(text: str) -> tuple[int, ...]:
    try:
        values = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError:
        raise SpecError(f"--draft-lens takes comma-separated integers such as 1,2,4,8, got {text!r}") from None
    if not values:
        raise SpecError("--draft-lens needs at least one draft length")
    return tuple(values)


@dataclass(frozen=True)
class Config:
    engine: str  # spec | llama.cpp | llama-cpp-python
    mode: str  # target | speculative | lookup
    draft_len: int = 0  # 0 for target only, and for auto (which chooses it round by round)
    drafter: str = ""  # speculative: model | ngram | tree | auto ("" means model)

    @property
    def kind(self) -> str:
        return (self.drafter or MODEL) if self.mode == SPECULATIVE else ""

    @property
    def label(self) -> str:
        if self.mode == TARGET and self.drafter == CONTROL:
            what = "target only, again (noise control)"
        elif self.mode == TARGET:
            what = "target only"
        elif self.mode == LOOKUP:
            what = "prompt lookup"
        elif self.kind == AUTO:
            what = "auto"
        elif self.kind == NGRAM:
            what = f"n-gram, draft length {self.draft_len}"
        elif self.kind == TREE:
            what = f"tree, depth {self.draft_len}"
        else:
            what = f"draft length {self.draft_len}"
        return f"{self.engine}: {what}"

    @property
    def baseline(self) -> "Config":
        """The configuration this one's speedup is measured against (same engine, no drafts)."""
        return Config(self.engine, TARGET, 0)


@dataclass
class Run:
    """One measured generation (one prompt, one configuration, one repeat)."""

    engine: str
    mode: str
    draft_len: int
    prompt_id: str
    category: str
    repeat: int
    order: int  # position in the interleaved schedule
    generated: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    drafted: int | None = None
    accepted: int | None = None
    target_passes: int | None = None
    accept_hist: list[int] | None = None
    t_target_decode: float | None = None
    t_draft: float | None = None
    t_draft_decode: float | None = None
    t_outside_decode: float | None = None
    stop_reason: str = ""
    output_check: str = ""  # baseline | same | near-tie | MISMATCH | not-checked (always, under sampling)
    tie_gap: float | None = None
    error: str | None = None
    tokens: list[int] | None = None
    drafter: str = ""  # see Config.drafter
    rounds_by_drafter: dict[str, int] | None = None  # target passes by the drafter that proposed ("none": no draft)
    lengths_used: dict[int, int] | None = None  # target passes by draft length (spec only)
    strategy_notes: list[str] | None = None  # the strategy's own account: what it chose and why
    seed: int | None = None  # the sampling seed (None: greedy)

    @property
    def config(self) -> Config:
        return Config(self.engine, self.mode, self.draft_len, self.drafter)


CSV_FIELDS = [
    "engine", "mode", "drafter", "draft_len", "prompt_id", "category", "repeat", "order", "generated", "seconds",
    "tokens_per_second", "drafted", "accepted", "target_passes", "accept_hist", "t_target_decode", "t_draft",
    "t_draft_decode", "t_outside_decode", "stop_reason", "output_check", "tie_gap", "rounds_by_drafter",
    "lengths_used", "seed", "error",
]  # fmt: skip


@dataclass
class ConfigSummary:
    engine: str
    mode: str
    draft_len: int
    label: str
    runs: int
    failed: int
    tokens_per_second: float  # median over runs
    speedup: float | None  # median over (prompt, repeat) of this run's tok/s over its own-engine baseline's
    predicted: float | None  # median over runs of the model's speedup at each run's acceptance (spec only)
    acceptance_rate: float | None  # accepted / drafted
    alpha: float | None  # per-token acceptance fitted to the histogram
    tokens_per_pass: float | None
    accept_hist: list[int] | None
    outside_decode: float | None  # share of wall time outside both models' passes, waits included (spec only)
    vs_reference: float | None  # spec tok/s / llama.cpp tok/s, same draft length, median over (prompt, repeat)
    mismatches: int = 0
    near_ties: int = 0
    drafter: str = ""
    by_prompt: dict[str, float] = field(default_factory=dict)  # prompt id -> median over repeats of the speedup
    worst_prompt: float | None = None  # the smallest of by_prompt
    rounds_by_drafter: dict[str, int] | None = None  # summed over runs (spec speculative only)
    lengths_used: dict[int, int] | None = None
    strategy_notes: list[str] = field(default_factory=list)  # distinct notes, e.g. why a drafter was switched off


@dataclass
class BenchResult:
    schema: str
    created: str
    suite: dict
    settings: dict
    machine: dict
    models: dict
    cost: CostCurve
    runs: list[Run]
    summary: list[ConfigSummary]
    recommendation: dict
    best_predicted: dict | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --- the schedule ---------------------------------------------------------------


def schedule(n_prompts: int, configs: Sequence[Config], repeats: int) -> list[tuple[int, int, Config]]:
    """(repeat, prompt index, config) in the order to run them.

    Every configuration runs on a prompt before the next prompt starts (A B C A B C,
    never all A then all B), and the order within a block rotates so that no
    configuration always runs first, right after the models were idle.
    """
    out = []
    n = len(configs)
    for r in range(repeats):
        for p in range(n_prompts):
            shift = (r * n_prompts + p) % n
            for c in list(configs[shift:]) + list(configs[:shift]):
                out.append((r, p, c))
    return out


# --- measuring ------------------------------------------------------------------


def top_two_gap(row: np.ndarray) -> float:
    """Difference between the best and the second-best logit."""
    top = np.partition(np.asarray(row, dtype=np.float32), -2)[-2:]
    return float(top[1] - top[0])


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def median_curve(curves: Sequence[CostCurve]) -> CostCurve:
    """Pointwise median of cost curves sampled at different moments of the run."""
    return CostCurve(
        target_ms=[float(x) for x in np.median([c.target_ms for c in curves], axis=0)],
        draft_ms=float(np.median([c.draft_ms for c in curves])),
        draft2_ms=float(np.median([c.draft2_ms for c in curves])),
    )


class _Harness:
    def __init__(self, pair: LoadedPair, notify: Callable[[str], None]):
        self.pair = pair
        self.notify = notify
        self._auto_costs: CostCurve | None = None

    def auto_costs(self) -> CostCurve:
        """The cost curve `auto` decides from: the cached calibration `spec run` uses, read once."""
        if self._auto_costs is None:
            self._auto_costs = cached_costs(self.pair.target, self.pair.draft, AUTO_MAX_DRAFT + 1, self.notify)
        return self._auto_costs

    def run_spec(
        self, prompt: Sequence[int], g: int, max_tokens: int, drafter: str = MODEL,
        sampling: SamplingParams = GREEDY, seed: int | None = None,
    ) -> Run:  # fmt: skip
        """One generation from fresh caches; g = 0 with a drafter other than auto is the target alone.

        Every run gets a new strategy, so neither a draft cache nor an acceptance
        history learnt on an earlier run carries over.
        """
        target, draft = self.pair.target, self.pair.draft
        strategy = None
        if drafter == AUTO:
            costs = self.auto_costs()
            strategy = build_strategy(self.pair, ModelChoice(drafter=AUTO), None, costs=costs)
        elif g > 0:
            strategy = build_strategy(self.pair, ModelChoice(drafter=drafter), g)
        target.reset()
        if draft is not None:
            draft.reset()
        # generate() has the draft read the prompt off the clock, as the target does: a
        # prefill is not what a draft length changes.
        engine = Engine(target, strategy=strategy)
        opts = GenerateOptions(max_tokens=max_tokens, draft_len=g, sampling=sampling, seed=seed)
        res = engine.generate(list(prompt), opts)
        s = res.stats
        t_draft_decode = s.t_draft_decode
        hist_len = (AUTO_MAX_DRAFT if drafter == AUTO else g) + 1
        lengths = getattr(strategy, "lengths", None)
        run = Run(
            engine=SPEC, mode=SPECULATIVE if strategy is not None else TARGET, draft_len=g if strategy is not None else 0,
            prompt_id="", category="", repeat=0, order=0,
            generated=s.generated, seconds=s.t_total, tokens_per_second=s.tokens_per_second,
            drafted=s.drafted, accepted=s.accepted, target_passes=s.target_passes,
            accept_hist=_pad(s.accept_hist, hist_len) if strategy is not None else None,
            t_target_decode=s.t_target, t_draft=s.t_draft, t_draft_decode=t_draft_decode,
            t_outside_decode=max(0.0, s.t_total - s.t_target - t_draft_decode), stop_reason=s.stop_reason,
            tokens=list(res.tokens), drafter=drafter if strategy is not None else "",
            rounds_by_drafter=dict(strategy.rounds) if strategy is not None else None,
            lengths_used={int(k): int(v) for k, v in lengths.items()} if lengths is not None else None,
            strategy_notes=list(s.notes) if strategy is not None else None,
            seed=seed,
        )  # fmt: skip
        return run

    def tie_gap_at(self, prompt: Sequence[int], generated: Sequence[int], a: int | None = None, b: int | None = None) -> float:
        """How close the target comes to choosing token b instead of token a after prompt + generated.

        For each way of evaluating that context, the gap is how far the weaker of a and b
        sits below the best logit; the result is the smallest gap over: plain decoding's
        replay (the prompt in one batch, then one token at a time: what the target-only
        run saw) and the last 2..8 tokens evaluated in one batch, as a verification pass
        does. Batched and single-token arithmetic differ in the last bits, and through the
        KV cache those differences grow: at one divergence seen on this CPU the two
        tokens were 0.51 apart after one batching and exactly equal after another. A
        wrongly accepted token stays far below the best in every batching.
        Without a and b (one output is a prefix of the other), the top-two gap.
        """
        target = self.pair.target
        context = list(prompt) + list(generated)
        n = len(context)

        def gap(row: np.ndarray) -> float:
            if a is None or b is None:
                return top_two_gap(row)
            best = float(np.max(row))
            return max(best - float(row[a]), best - float(row[b]))

        target.reset()
        target.sync(list(prompt)[:-1], logits=False)
        for tok in context[len(prompt) - 1 : -1]:
            target.eval([tok], logits="none")
        gaps = [gap(target.eval([context[-1]], logits="last")[0])]
        jmax = min(max(TIE_BATCHES), n - 1)
        if jmax >= 2:
            for j in TIE_BATCHES:
                if j > jmax:
                    continue
                target.truncate(n - 1 - jmax)
                target.eval(context[n - jmax - 1 : n - j], logits="none")  # the cache ends j tokens early
                gaps.append(gap(target.eval(context[n - j :], logits="all")[-1]))
        target.reset()
        return min(gaps)


def _pad(hist: Sequence[int], n: int) -> list[int]:
    h = list(hist)[:n]
    return h + [0] * (n - len(h))


def cpu_busy_share(seconds: float = 0.5) -> float | None:
    """Share of all CPU time that was not idle over the next `seconds` (Linux; None elsewhere).

    Taken while spec itself waits, so it is what other programs use. The load average
    would lag by a minute and still count a program that has just finished.
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(x) for x in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return idle, sum(values[:8])

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else None


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        llama_version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        llama_version = None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "llama_cpp_python": llama_version,
        "load_average_1min_at_start": load,
        "cpu_busy_share_at_start": cpu_busy_share(),
    }


def run_bench(
    pair: LoadedPair,
    suite: Suite,
    settings: BenchSettings,
    *,
    progress: Callable[[int, str], None] = lambda total, label: None,
    notify: Callable[[str], None] = lambda s: None,
) -> BenchResult:
    """Run the whole benchmark. progress(total, label) is called once per step."""
    settings.check()
    greedy = settings.sampling.greedy
    notes: list[str] = []
    if not greedy:
        notes.append(sampling_note(settings))
        if TREE in settings.drafters:
            # TreeDrafter drafts its plain chain under sampling: the draft model's rows, measured twice.
            drafters = tuple(dict.fromkeys(MODEL if d == TREE else d for d in settings.drafters))
            settings = replace(settings, drafters=drafters)
            why = ("tree not measured under sampling: token trees are verified greedily only, and when sampling, --drafter "
                   "tree drafts the draft model's plain chain, which the model rows measure")  # fmt: skip
            notes.append(why)
            notify(f"note: {why}")
    needs_model = [d for d in settings.drafters if d in (MODEL, TREE)]
    if pair.draft is None and needs_model:
        raise SpecError(f"--drafter {needs_model[0]} needs a draft model (pass --draft, or a preset with one)")
    h = _Harness(pair, notify)
    target = pair.target
    prompts = suite.prompts[: settings.limit] if settings.limit else list(suite.prompts)
    tokenized = [target.tokenize(p.text) for p in prompts]
    gmax = max(settings.draft_lens) if any(d != AUTO for d in settings.drafters) else 0
    if AUTO in settings.drafters:
        gmax = max(gmax, AUTO_MAX_DRAFT)
    n_ctx = min(target.n_ctx, pair.draft.n_ctx) if pair.draft is not None else target.n_ctx
    for p, toks in zip(prompts, tokenized):
        need = len(toks) + settings.max_tokens + gmax + 1
        if need > n_ctx:
            raise SpecError(
                f"prompt {p.id!r} is {len(toks)} tokens; with --max-tokens {settings.max_tokens} it needs a context of "
                f"{need} tokens, the models have {n_ctx}; use a larger --ctx"
            )
    machine = machine_info(target.n_threads)
    busy, cpus = machine["cpu_busy_share_at_start"], machine["logical_cpus"] or 1
    if busy is not None and busy >= BUSY_SHARE:
        # llama.cpp's worker threads spin while they wait for each other, so when other
        # programs hold the cores every figure gets slower and far noisier, not just a bit.
        notes.append(
            f"the machine was busy when the bench started (other programs used {100 * busy:.0f} % of {cpus} CPUs); "
            "expect noisy figures"
        )

    # Peers: a problem with them is reported and the rest of the bench goes on.
    reference = None
    ref_settings = None
    try:
        reference = ref_mod.locate(settings.reference)
    except ref_mod.ReferenceError as e:
        notes.append(f"reference skipped: {e}")
        notify(f"warning: {e}; the bench goes on without llama.cpp's reference")
    if reference is not None and pair.draft is None:
        reference = None
        notes.append("reference skipped: llama-speculative-simple needs a draft model")
    if reference is not None:
        ref_settings = ref_mod.ReferenceSettings(
            target=pair.target_path, draft=pair.draft_path, max_tokens=settings.max_tokens,
            ctx=target.n_ctx, threads=target.n_threads, ngl=target.n_gpu_layers, ngl_draft=pair.draft.n_gpu_layers,
            temp=settings.sampling.temperature, top_k=settings.sampling.top_k, top_p=settings.sampling.top_p,
        )  # fmt: skip
        if not greedy:
            notes.append(
                "llama.cpp's reference verifies by sampling the target and keeping drafts while they match, not by "
                "rejection sampling: under sampling its acceptance follows another rule and is not comparable with spec's"
            )
        if reference.plain is None:
            notes.append(f"{ref_mod.PLAIN_NAME} not found beside {reference.speculative}; no llama.cpp target-only figure")
    peer = None
    if settings.lookup and not greedy:
        notes.append("prompt-lookup peer skipped: it decodes greedily only (lookup_peer.py)")
        notify("warning: --lookup is greedy only; skipped under sampling")
    elif settings.lookup:
        try:
            from .lookup_peer import LookupPeer

            longest = max(len(t) for t in tokenized)
            peer = LookupPeer(
                pair.target_path, n_ctx=longest + settings.max_tokens + 64, n_threads=target.n_threads,
                n_gpu_layers=target.n_gpu_layers,
            )  # fmt: skip
        except SpecError as e:
            notes.append(f"prompt-lookup peer skipped: {e}")
            notify(f"warning: {e}")

    configs = [Config(SPEC, TARGET)]
    for d in settings.drafters:
        if d == AUTO:
            configs.append(Config(SPEC, SPECULATIVE, 0, AUTO))
        else:
            configs += [Config(SPEC, SPECULATIVE, g, d) for g in settings.draft_lens]
    if reference is not None:
        if reference.plain is not None:
            configs.append(Config(LLAMA_CPP, TARGET))
        configs += [Config(LLAMA_CPP, SPECULATIVE, g) for g in settings.draft_lens]
    if peer is not None:
        configs += [Config(LLAMA_CPP_PYTHON, TARGET), Config(LLAMA_CPP_PYTHON, LOOKUP)]
    if settings.control:
        # Halfway round the rotation from the target: as far from it in time as a
        # configuration gets, so its ratio shows the drift that the others live with too.
        # Next to the target it would only show the noise between neighbours.
        configs.insert((len(configs) + 1) // 2, Config(SPEC, TARGET, 0, CONTROL))

    plan = schedule(len(prompts), configs, settings.repeats)
    warm = configs if settings.warmup else []
    n_blocks = settings.repeats * len(prompts)
    total = len(plan) + len(warm) + n_blocks + 1
    max_k = max(COST_CURVE_MAX_K, gmax + 1)
    dead: dict[str, str] = {}  # engine -> why it stopped being run

    def run_one(cfg: Config, i: int, max_tokens: int, repeat: int) -> Run:
        prompt, toks = prompts[i], tokenized[i]
        seed = None if greedy else run_seed(settings.seed, i, repeat)
        base = dict(engine=cfg.engine, mode=cfg.mode, draft_len=cfg.draft_len, prompt_id=prompt.id, category=prompt.category,
                    repeat=0, order=0, drafter=cfg.drafter, seed=seed)  # fmt: skip
        if cfg.engine in dead:
            return Run(**base, error=dead[cfg.engine])
        if cfg.engine == SPEC:
            drafter = cfg.drafter if cfg.drafter in DRAFTERS else MODEL
            run = h.run_spec(toks, cfg.draft_len, max_tokens, drafter, settings.sampling, seed)
            run.prompt_id, run.category, run.drafter = prompt.id, prompt.category, cfg.drafter
            return run
        try:
            if cfg.engine == LLAMA_CPP:
                s = replace(ref_settings, max_tokens=max_tokens, seed=seed if seed is not None else ref_settings.seed)
                if cfg.mode == TARGET:
                    r = ref_mod.run_plain(reference, s, prompt.text)
                else:
                    r = ref_mod.run_speculative(reference, s, prompt.text, cfg.draft_len)
                return Run(**base, generated=r.generated, seconds=r.seconds, tokens_per_second=r.tokens_per_second,
                           drafted=r.drafted, accepted=r.accepted)  # fmt: skip
            r = peer.run("plain" if cfg.mode == TARGET else "lookup", toks, max_tokens)
            return Run(**base, generated=r.generated, seconds=r.seconds, tokens_per_second=r.tokens_per_second, tokens=r.tokens)
        except SpecError as e:
            dead[cfg.engine] = str(e)
            notes.append(f"{cfg.engine} stopped after an error: {e}")
            notify(f"warning: {cfg.engine}: {e}; the bench goes on without it")
            return Run(**base, error=str(e))

    if AUTO in settings.drafters:
        h.auto_costs()  # read (or, the first time on this machine, measure) before anything is timed
    for cfg in warm:
        progress(total, f"warm-up: {cfg.label}")
        run_one(cfg, 0, min(WARMUP_TOKENS, settings.max_tokens), -1)

    progress(total, "measuring the cost curve")
    curves = [measure_costs(target, pair.draft, tokenized[0], max_k, samples=1)]
    runs: list[Run] = []
    for order, (r, i, cfg) in enumerate(plan):
        progress(total, f"{cfg.label} · {prompts[i].id} · repeat {r + 1}/{settings.repeats}")
        run = run_one(cfg, i, settings.max_tokens, r)
        run.repeat, run.order = r, order
        runs.append(run)
        if order + 1 == len(plan) or plan[order + 1][:2] != (r, i):
            # End of this prompt's block: one more sample of the cost curve, in this prompt's context.
            progress(total, f"cost curve · {prompts[i].id}")
            curves.append(measure_costs(target, pair.draft, tokenized[i], max_k, samples=1))
    cost = median_curve(curves)
    if peer is not None:
        peer.close()

    if greedy:
        _check_outputs(h, prompts, tokenized, runs)
    else:
        for run in runs:
            run.output_check = "not-checked"
    summary = summarize(runs, cost, settings.draft_lens)
    recommendation = recommend_overall(summary)
    alpha_all = _pooled_alpha(runs)
    best_pred = None
    if alpha_all is not None and np.isfinite(cost.draft_ms):
        g, s = speedup.best_predicted(alpha_all, cost.target_ms, cost.draft_ms, cost.draft2_ms)
        best_pred = {"alpha": alpha_all, "draft_len": g, "speedup": s}
    for s in summary:
        if s.mismatches:
            notes.append(
                f"{s.label}: {s.mismatches} greedy output(s) differ from spec's target-only decoding where the "
                "target is not near a tie (see output_check in --json/--csv)"
            )
    return BenchResult(
        schema=SCHEMA,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        suite={"name": suite.name, "version": suite.version, "prompts": [p.id for p in prompts]},
        settings={
            "draft_lens": list(settings.draft_lens), "repeats": settings.repeats, "max_tokens": settings.max_tokens,
            "warmup": settings.warmup, "greedy": greedy, "temp": settings.sampling.temperature,
            "top_k": settings.sampling.top_k, "top_p": settings.sampling.top_p, "seed": None if greedy else settings.seed,
            "tie_tolerance": TIE_TOLERANCE if greedy else None, "ctx": target.n_ctx,
            "reference": str(reference.speculative) if reference else None,
            "reference_plain": str(reference.plain) if reference and reference.plain else None,
            "lookup": peer is not None, "lookup_num_pred_tokens": getattr(peer, "num_pred_tokens", None),
            "drafters": list(settings.drafters), "auto_max_draft": AUTO_MAX_DRAFT, "control": settings.control,
            "auto_cost_curve": asdict(h._auto_costs) if h._auto_costs is not None else None,
        },  # fmt: skip
        machine=machine,
        models={"target": _file_info(pair.target_path), "draft": _file_info(pair.draft_path)},
        cost=cost,
        runs=runs,
        summary=summary,
        recommendation=recommendation,
        best_predicted=best_pred,
        notes=notes,
    )


def sampling_note(settings: BenchSettings) -> str:
    sp = settings.sampling
    return (
        f"sampling (temp {sp.temperature:g}, top-k {sp.top_k}, top-p {sp.top_p:g}, base seed {settings.seed}): outputs are "
        "not compared with the target alone's, since equal text is not the test of losslessness under sampling; "
        "the distribution tests (tests/test_loop.py, tests/test_real_models.py) cover it"
    )


def _file_info(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    return {"path": str(path), "name": path.name, "bytes": size}


def _check_outputs(h: _Harness, prompts, tokenized, runs: list[Run]) -> None:
    """Greedy outputs must match spec's target-only decoding, or part where the target nearly ties.

    Every run that reports its tokens is checked (spec, and llama-cpp-python's Llama,
    which is fed the same token ids); llama.cpp's binaries print text only.
    """
    for i, p in enumerate(prompts):
        mine = [r for r in runs if r.prompt_id == p.id and r.tokens is not None and r.error is None]
        base = next((r for r in mine if r.engine == SPEC and r.mode == TARGET and r.drafter != CONTROL), None)
        if base is None:
            continue
        base.output_check = "baseline"
        gaps: dict[tuple, float] = {}
        for r in mine:
            if r is base:
                continue
            k = first_difference(base.tokens, r.tokens)
            if k is None:
                r.output_check = "same"
                continue
            pair = (base.tokens[k], r.tokens[k]) if k < min(len(base.tokens), len(r.tokens)) else (None, None)
            if (k, *pair) not in gaps:
                gaps[(k, *pair)] = h.tie_gap_at(tokenized[i], base.tokens[:k], *pair)
            r.tie_gap = gaps[(k, *pair)]
            r.output_check = "near-tie" if r.tie_gap <= TIE_TOLERANCE else "MISMATCH"
    for r in runs:
        if not r.output_check:
            r.output_check = "not-checked"


def _pooled_alpha(runs: list[Run]) -> float | None:
    acc = rej = 0
    for r in runs:
        if r.engine == SPEC and r.mode == SPECULATIVE and r.config.kind == MODEL and r.accept_hist and r.error is None:
            h = np.asarray(r.accept_hist)
            acc += int((np.arange(h.size) * h).sum())
            rej += int(h[: r.draft_len].sum())
    return acc / (acc + rej) if acc + rej else None


def _predicted(runs: Sequence[Run], g: int, cost: CostCurve) -> float | None:
    """The prediction built the way the measured speedup is: one value per run, then the median.

    Acceptance differs a lot from prompt to prompt (copying is easy, a story is not), and
    the median of per-run speedups is not the speedup at the pooled acceptance rate, so
    each run's acceptance goes through the model on its own.
    """
    preds = []
    for r in runs:
        a = speedup.acceptance_from_hist(r.accept_hist, g) if r.accept_hist else None
        if a is not None:
            preds.append(speedup.predicted_speedup(a, g, cost.target_ms, cost.draft_ms, cost.draft2_ms))
    return speedup.median(preds) if preds else None


def summarize(runs: list[Run], cost: CostCurve, draft_lens: Sequence[int]) -> list[ConfigSummary]:
    order: list[Config] = []
    for r in runs:
        if r.config not in order:
            order.append(r.config)
    control = Config(SPEC, TARGET, 0, CONTROL)
    if control in order and Config(SPEC, TARGET) in order:  # shown right under the target, wherever it ran
        order.remove(control)
        order.insert(order.index(Config(SPEC, TARGET)) + 1, control)

    def per_prompt(cfg: Config) -> dict[tuple[str, int], list[float]]:
        # Keyed by prompt and repeat: a run is compared with its baseline from the same
        # block of the schedule, which ran moments before or after it.
        out: dict[tuple[str, int], list[float]] = {}
        for r in runs:
            if r.config == cfg and r.error is None and r.seconds > 0:
                out.setdefault((r.prompt_id, r.repeat), []).append(r.tokens_per_second)
        return out

    summary = []
    for cfg in order:
        mine = [r for r in runs if r.config == cfg and r.error is None]
        failed = sum(1 for r in runs if r.config == cfg and r.error is not None)
        tps = speedup.median([r.tokens_per_second for r in mine]) if mine else float("nan")
        base = per_prompt(cfg.baseline)
        here = per_prompt(cfg)
        sp = speedup.median_ratio(here, base) if base and mine else None
        by_prompt: dict[str, float] = {}
        if base and mine:
            for pid in dict.fromkeys(r.prompt_id for r in mine):
                x = speedup.median_ratio({k: v for k, v in here.items() if k[0] == pid}, base)
                if np.isfinite(x):
                    by_prompt[pid] = x
        drafted = sum(r.drafted or 0 for r in mine)
        accepted = sum(r.accepted or 0 for r in mine)
        acc_rate = accepted / drafted if drafted else None
        hist = alpha = pred = tpp = outside = vs_ref = None
        if cfg.engine == SPEC:
            passes = sum(r.target_passes or 0 for r in mine)
            tpp = sum(r.generated for r in mine) / passes if passes else None
            wall = sum(r.seconds for r in mine)
            outside = sum(r.t_outside_decode or 0.0 for r in mine) / wall if wall > 0 else None
            if cfg.mode == SPECULATIVE:
                hist = list(np.sum([r.accept_hist for r in mine if r.accept_hist], axis=0).astype(int)) if mine else None
                if cfg.kind == MODEL:
                    # The Leviathan et al. model fits a draft model that always drafts g tokens;
                    # n-gram proposals stop where the match ends, and auto changes g every round.
                    alpha = speedup.acceptance_from_hist(hist, cfg.draft_len) if hist else None
                    if np.isfinite(cost.draft_ms) and cfg.draft_len + 1 <= len(cost.target_ms):
                        pred = _predicted(mine, cfg.draft_len, cost)
                    theirs = per_prompt(Config(LLAMA_CPP, SPECULATIVE, cfg.draft_len))
                else:
                    theirs = {}
            else:
                pred = 1.0
                theirs = per_prompt(Config(LLAMA_CPP, TARGET))
            if theirs and mine:
                vs_ref = speedup.median_ratio(here, theirs)
        rounds = _sum_counts([r.rounds_by_drafter for r in mine])
        lengths = _sum_counts([r.lengths_used for r in mine])
        notes = list(dict.fromkeys(n for r in mine for n in (r.strategy_notes or []) if "drafter off:" in n))
        summary.append(
            ConfigSummary(
                engine=cfg.engine, mode=cfg.mode, draft_len=cfg.draft_len, label=cfg.label, runs=len(mine), failed=failed,
                tokens_per_second=tps, speedup=sp, predicted=pred, acceptance_rate=acc_rate, alpha=alpha,
                tokens_per_pass=tpp, accept_hist=[int(x) for x in hist] if hist is not None else None,
                outside_decode=outside, vs_reference=vs_ref,
                mismatches=sum(1 for r in mine if r.output_check == "MISMATCH"),
                near_ties=sum(1 for r in mine if r.output_check == "near-tie"),
                drafter=cfg.drafter, by_prompt=by_prompt, worst_prompt=min(by_prompt.values()) if by_prompt else None,
                rounds_by_drafter=rounds, lengths_used=lengths, strategy_notes=notes,
            )  # fmt: skip
        )
    return summary


def _sum_counts(counts: Sequence[dict | None]):
    total: dict = {}
    for c in counts:
        for k, v in (c or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return dict(sorted(total.items(), key=lambda kv: str(kv[0]))) if total else None


def _how(s: ConfigSummary) -> str:
    """The `spec run` options that reproduce a configuration."""
    if s.drafter == AUTO:
        return "--drafter auto"
    return f"--drafter {s.drafter or MODEL} --draft-len {s.draft_len}"


def recommend_overall(summary: Sequence[ConfigSummary]) -> dict:
    """What to use on this machine, from the measured speedups of every spec configuration.

    The draft-model sweep keeps its own verdict (`model`: the draft length to use, or
    that it does not pay). The overall pick is the fastest configuration, except that
    auto is preferred when it comes within AUTO_FLOOR of it: it adapts to the text, where
    a fixed choice was only best on these prompts.
    """
    spec_rows = [s for s in summary if s.engine == SPEC and s.mode == SPECULATIVE]
    model = {s.draft_len: s.speedup for s in spec_rows if (s.drafter or MODEL) == MODEL}
    model_rec = speedup.recommend(model) if model else None
    cands = [s for s in spec_rows if s.speedup is not None and np.isfinite(s.speedup)]
    out = {
        "drafter": None, "draft_len": None, "speedup": float("nan"),
        "model_draft_len": model_rec.draft_len if model_rec else None,
        "model_message": model_rec.message if model_rec else None,
    }  # fmt: skip
    if not cands:
        out["message"] = "no speculative configuration produced a measurement"
        return out
    best = max(cands, key=lambda s: (s.speedup, s.drafter == AUTO, -s.draft_len))
    auto = next((s for s in cands if s.drafter == AUTO), None)
    if auto is not None and auto.speedup >= AUTO_FLOOR * best.speedup:
        best = auto

    def worst(s: ConfigSummary) -> str:
        return f", slowest prompt {s.worst_prompt:.2f}x" if s.worst_prompt is not None else ""

    if best.speedup < speedup.MIN_WORTHWHILE_SPEEDUP and best is auto and auto.speedup >= AUTO_FLOOR:
        # Little to gain on these prompts, but auto does not lose: it drafts only where
        # its guesses land, and a user's own text may repeat itself more than these.
        out.update(drafter=AUTO, draft_len=None, speedup=auto.speedup)
        out["message"] = (
            f"speculation gains little on these prompts with this pair: --drafter auto (the default) runs at "
            f"{auto.speedup:.2f}x the target alone{worst(auto)}, drafting only where its guesses land; "
            "no fixed configuration pays"
        )
        return out
    if best.speedup < speedup.MIN_WORTHWHILE_SPEEDUP:
        msg = (
            f"speculation does not pay on this machine with this pair: the best configuration ({_how(best)}) "
            f"runs at {best.speedup:.2f}x the target alone; use --no-spec"
        )
        if auto is not None and auto is not best:
            msg += f"; --drafter auto: {auto.speedup:.2f}x{worst(auto)}"
        out["message"] = msg
        out["speedup"] = best.speedup
        return out
    out.update(drafter=best.drafter or MODEL, draft_len=best.draft_len or None, speedup=best.speedup)
    msg = f"use {_how(best)}" + (" (the default)" if best.drafter == AUTO else "")
    msg += f": {best.speedup:.2f}x the target alone{worst(best)}"
    if auto is not None and auto is not best:
        msg += f"; --drafter auto: {auto.speedup:.2f}x{worst(auto)}"
    out["message"] = msg
    return out


# --- output files ---------------------------------------------------------------


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
        raise SpecError(f"cannot write {what} file {p}: {e.strerror}") from None
    if not existed:
        p.unlink()


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def write_json(result: BenchResult, path: Path) -> None:
    write_text_atomic(path, json.dumps(result.to_dict(), indent=1, default=_json_default, allow_nan=True) + "\n")


def write_csv(result: BenchResult, path: Path) -> None:
    import io

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
