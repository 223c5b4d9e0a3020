"""`spec bench`: is speculative decoding faster here, with this pair, and at which draft length?

One bench measures, interleaved so that machine drift hits every configuration alike:
target-only decoding and speculative decoding for a sweep of draft lengths, all through
the same Engine loop, plus (optionally) llama.cpp's reference binaries and
llama-cpp-python's prompt-lookup decoding on the same prompts.

Greedy by default, and then every output is checked against the target alone's (up to a
near-tie). Under sampling (--temp > 0) each (prompt, repeat) gets its own seed from the
base seed and the outputs are not compared: equal text is not what lossless means there,
and the distribution tests cover that.

The stages, one module each, in the order a bench takes them:

    settings.py     the names of engines, modes and drafters; BenchSettings and the option parsers
    suite.py        the prompts: the bundled suite or a --prompts file
    schedule.py     the configurations, the interleaved order they run in, and the Run record
    harness.py      run_bench: peers, warm-up, the schedule timed from fresh caches, the cost curve;
                    its collaborators (CostSource, Runner, checker) and the real ones
    checks.py       the greedy check: identical outputs, or a near-tie the target confirms
    summary.py      one summary per configuration, the prediction, the recommendation
    output.py       --json and --csv, written whole or not at all
    plot.py         --plot (matplotlib)
    reference.py    llama.cpp's llama-speculative-simple and llama-completion as a yardstick
    lookup_peer.py  llama-cpp-python's prompt-lookup decoding as a peer

No rich, no typer here: the CLI (cli/bench.py) renders what `run_bench` returns.
"""

from .harness import (
    COST_CURVE_MAX_K,
    SCHEMA,
    BenchResult,
    CostSource,
    EngineRunner,
    MachineCosts,
    Runner,
    describe,
    require_lossless,
    run_bench,
)
from .output import CSV_FIELDS, check_paths, check_writable, write_csv, write_json, write_outputs
from .schedule import Config, Run, schedule
from .settings import (
    AUTO,
    CONTROL,
    DEFAULT_DRAFT_LENS,
    DEFAULT_DRAFTERS,
    DRAFTERS,
    LLAMA_CPP,
    LLAMA_CPP_PYTHON,
    LOOKUP,
    MODEL,
    NGRAM,
    SPEC,
    SPECULATIVE,
    TARGET,
    TREE,
    BenchSettings,
    load_as,
    parse_draft_lens,
    parse_drafters,
    parse_thresholds,
    run_seed,
)
from .suite import (
    SUITE_DEFAULT_LIMIT,
    BenchPrompt,
    Suite,
    default_limit,
    load_prompts_file,
    load_suite,
)
from .summary import ConfigSummary, best_per_drafter, recommend_overall, summarize

__all__ = [
    "AUTO", "CONTROL", "COST_CURVE_MAX_K", "CSV_FIELDS", "DEFAULT_DRAFTERS", "DEFAULT_DRAFT_LENS", "DRAFTERS", "LLAMA_CPP",
    "LLAMA_CPP_PYTHON", "LOOKUP", "MODEL", "NGRAM", "SCHEMA", "SPEC", "SPECULATIVE", "SUITE_DEFAULT_LIMIT", "TARGET", "TREE",
    "BenchPrompt", "BenchResult", "BenchSettings", "Config", "ConfigSummary", "CostSource", "EngineRunner", "MachineCosts",
    "Run", "Runner", "Suite", "best_per_drafter", "check_paths", "check_writable", "default_limit", "describe", "load_as",
    "load_prompts_file", "load_suite", "parse_draft_lens", "parse_drafters", "parse_thresholds", "recommend_overall", "require_lossless",
    "run_bench", "run_seed", "schedule", "summarize", "write_csv", "write_json", "write_outputs",
]  # fmt: skip
