"""spec bench: the harness on the real embedded pair with a tiny budget, its files, its peers, its errors."""

from __future__ import annotations

import csv
import json
import math
import struct
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from spec_cli import bench
from spec_cli.bench import (
    CSV_FIELDS,
    SPEC,
    BenchPrompt,
    BenchSettings,
    Config,
    EngineRunner,
    Run,
    Suite,
    checks,
    load_prompts_file,
    load_suite,
    reference,
    run_bench,
    schedule,
)  # fmt: skip
from spec_cli.bench.checks import check_outputs
from spec_cli.calibrate import CostCurve
from spec_cli.decode import GenerateOptions
from spec_cli.errors import SpecError
from spec_cli.loading import LoadedPair
from spec_cli.sampling import SamplingParams
from spec_cli.speedup import MIN_WORTHWHILE_SPEEDUP
from spec_cli.strategy import AUTO_MAX_DRAFT

PROMPT = "def add(a, b):\n    return"
COPY_PROMPT = (
    "Copy this sentence exactly: The red fox ran over the old stone bridge and into the quiet wood. "
    "Copy: The red fox ran over the old stone bridge and into the quiet wood. Copy:"
)


@pytest.fixture(autouse=True)
def no_reference_env(monkeypatch):
    monkeypatch.delenv(reference.ENV_VAR, raising=False)


@pytest.fixture
def pair(target, draft, gemma_path, gemma_q2k_path):
    # The session's models, not closed here: other tests use them too.
    return LoadedPair(target, draft, gemma_path, gemma_q2k_path)


def tiny(**kw) -> BenchSettings:
    base = dict(draft_lens=(1, 2), repeats=1, max_tokens=4, warmup=False, drafters=("model",), control=False)
    base.update(kw)
    return BenchSettings(**base)


ONE = Suite("test", None, [BenchPrompt("add", "code", PROMPT)])


# --- pure parts -------------------------------------------------------------------


def test_schedule_interleaves_and_rotates():
    cfgs = [Config(SPEC, "target"), Config(SPEC, "speculative", 1), Config(SPEC, "speculative", 2)]
    plan = schedule(2, cfgs, 2)
    assert len(plan) == 2 * 2 * 3
    # every (repeat, prompt) block holds each configuration once, back to back
    for b in range(4):
        block = plan[3 * b : 3 * b + 3]
        assert len({(r, p) for r, p, _ in block}) == 1
        assert sorted(c.draft_len for _, _, c in block) == [0, 1, 2]
    # the configuration that opens a block changes from block to block
    assert len({plan[3 * b][2] for b in range(3)}) == 3


def test_bundled_suite_is_versioned_and_covers_the_kinds_of_text():
    suite = load_suite()
    assert suite.version is not None
    assert {p.category for p in suite.prompts} >= {"code", "factual", "story", "structured", "copy"}
    assert len({p.id for p in suite.prompts}) == len(suite.prompts)
    # the first five prompts (--limit 5) already cover every category
    assert len({p.category for p in suite.prompts[:5]}) == 5


def test_prompts_file_plain_lines(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\nsecond prompt\n")
    s = load_prompts_file(f)
    assert [p.text for p in s.prompts] == ["first prompt", "second prompt"]


def test_prompts_file_jsonl(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"suite": "mine", "version": 3}\n{"id": "a", "category": "code", "prompt": "x\\ny"}\n{"prompt": "z"}\n')
    s = load_prompts_file(f)
    assert (s.name, s.version) == ("mine", 3)
    assert [(p.id, p.category, p.text) for p in s.prompts] == [("a", "code", "x\ny"), ("p2", "user", "z")]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no prompts"),
        ("\n  \n", "no prompts"),
        ('{"prompt": "ok"}\n{"prompt": \n', "line 2: not valid JSON"),
        ('{"text": "no prompt key"}\n', 'line 1: no "prompt" field'),
        ('{"prompt": ""}\n', "non-empty string"),
    ],
)
def test_prompts_file_errors(tmp_path, content, message):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    with pytest.raises(SpecError, match=message):
        load_prompts_file(f)


def test_prompts_file_missing(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_prompts_file(tmp_path / "nope.txt")


def test_top_two_gap_and_first_difference():
    import numpy as np

    assert checks.top_two_gap(np.array([0.0, 3.0, 2.5, -1.0])) == pytest.approx(0.5)
    assert checks.top_two_gap(np.array([1.0, 1.0])) == 0.0
    assert checks.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert checks.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert checks.first_difference([1, 2], [1, 2, 3]) == 2


@pytest.mark.parametrize("text", ["1,2,x", ",,", "1.5"])
def test_parse_draft_lens_rejects_garbage(text):
    with pytest.raises(SpecError):
        bench.parse_draft_lens(text)


def test_parse_draft_lens_sorts_and_dedups():
    assert bench.parse_draft_lens("4, 1,2,4") == (1, 2, 4)


@pytest.mark.parametrize(
    "kw", [dict(repeats=0), dict(max_tokens=0), dict(draft_lens=(0, 2)), dict(draft_lens=(65,)), dict(limit=0)]
)
def test_settings_check(kw):
    with pytest.raises(SpecError):
        tiny(**kw).check()


# --- llama.cpp's reference output ----------------------------------------------------

SPECULATIVE_OUT = """
encoded   12 tokens in    0.041 seconds, speed:  292.683 t/s
decoded   34 tokens in    0.850 seconds, speed:   40.000 t/s

n_draft   = 3
n_predict = 34
n_drafted = 30
n_accept  = 24
accept    = 80.000%
"""

PLAIN_OUT = """
llama_perf_sampler_print:    sampling time =      10.00 ms /    44 runs   (    0.23 ms per token,  4400.00 tokens per second)
llama_perf_context_print:        load time =     120.10 ms
llama_perf_context_print: prompt eval time =      40.00 ms /    12 tokens (    3.33 ms per token,   300.00 tokens per second)
llama_perf_context_print:        eval time =     490.00 ms /    31 runs   (   15.81 ms per token,    63.27 tokens per second)
llama_perf_context_print:       total time =     700.00 ms /    43 tokens
"""


def test_parse_reference_outputs():
    r = reference.parse_speculative(SPECULATIVE_OUT)
    assert (r.generated, r.seconds, r.drafted, r.accepted) == (34, 0.85, 30, 24)
    assert r.tokens_per_second == pytest.approx(40.0)
    p = reference.parse_plain(PLAIN_OUT)
    assert p.generated == 31  # generation runs, not the prompt's 12 tokens
    assert p.seconds == pytest.approx(0.5)  # eval 490 ms + sampling 10 ms
    with pytest.raises(reference.ReferenceError, match="decoded"):
        reference.parse_speculative("segmentation fault")
    with pytest.raises(reference.ReferenceError, match="eval time"):
        reference.parse_plain("prompt eval time =      40.00 ms /    12 tokens")


def test_locate_reference(tmp_path, monkeypatch):
    assert reference.locate(None) is None
    with pytest.raises(reference.ReferenceError, match="not found"):
        reference.locate(tmp_path / "llama-speculative-simple")
    f = tmp_path / "llama-speculative-simple"
    f.write_text("not a program")
    with pytest.raises(reference.ReferenceError, match="not an executable"):
        reference.locate(f)
    f.chmod(0o755)
    monkeypatch.setenv(reference.ENV_VAR, str(tmp_path))  # a folder works too
    ref = reference.locate(None)
    assert ref.speculative == f and ref.plain is None


def _fake_binary(folder: Path, name: str, body: str) -> Path:
    p = folder / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


# --- the harness on the real models ---------------------------------------------------


def test_bench_end_to_end_with_a_fake_reference(pair, tmp_path):
    """One prompt, four tokens, one repeat: every figure is there, and the reference rows come from its output."""
    spec_bin = _fake_binary(tmp_path, "llama-speculative-simple", f"cat <<'EOF'\n{SPECULATIVE_OUT}\nEOF\n")
    _fake_binary(tmp_path, "llama-completion", f"cat <<'EOF'\n{PLAIN_OUT}\nEOF\n")
    steps = []
    res = run_bench(pair, ONE, tiny(reference=str(spec_bin)), progress=lambda total, label: steps.append((total, label)))

    labels = [s.label for s in res.summary]
    assert labels[:3] == ["spec: target only", "spec: draft length 1", "spec: draft length 2"]
    assert "llama.cpp: target only" in labels and "llama.cpp: draft length 2" in labels
    assert len(res.runs) == 1 * 1 * 6
    assert [r.order for r in res.runs] == list(range(6))
    assert len(steps) == steps[0][0]  # one progress call per announced step
    assert sum("cost curve" in label for _, label in steps) == 2  # before the runs and after the prompt's block

    by = {(s.engine, s.mode, s.draft_len): s for s in res.summary}
    base = by[(SPEC, "target", 0)]
    assert base.speedup == pytest.approx(1.0) and base.tokens_per_second > 0
    for g in (1, 2):
        s = by[(SPEC, "speculative", g)]
        assert s.runs == 1 and s.tokens_per_second > 0
        assert s.speedup > 0 and s.predicted > 0
        assert 0.0 <= s.acceptance_rate <= 1.0
        assert len(s.accept_hist) == g + 1 and sum(s.accept_hist) > 0
        assert 1.0 <= s.tokens_per_pass <= g + 1
        assert 0.0 <= s.outside_decode < 1.0
        assert s.mismatches == 0
        # spec vs the fake reference's 40 tok/s
        assert s.vs_reference == pytest.approx(s.tokens_per_second / 40.0)
    ref = by[("llama.cpp", "speculative", 2)]
    assert ref.tokens_per_second == pytest.approx(40.0) and ref.acceptance_rate == pytest.approx(0.8)
    assert ref.speedup == pytest.approx(40.0 / 62.0)  # over llama-completion's 31 tokens in 0.5 s
    assert all(r.output_check in ("baseline", "same", "near-tie") for r in res.runs if r.engine == SPEC)

    assert len(res.cost.target_ms) == bench.COST_CURVE_MAX_K and all(t > 0 for t in res.cost.target_ms)
    assert res.cost.draft_ms > 0 and res.cost.draft2_ms > 0
    assert res.recommendation["message"]
    # the fake reference decodes 34 tokens for a budget of 4, which the notes say once per configuration
    overshoot = [n for n in res.notes if "for a budget of 4" in n]
    assert len(overshoot) == 2 and any(n.startswith("llama.cpp: draft length 2 decoded 34 tokens") for n in overshoot)
    assert not [n for n in res.notes if "busy" not in n and n not in overshoot]  # nothing went wrong with the peers


def test_broken_reference_is_reported_and_the_bench_goes_on(pair, tmp_path):
    broken = _fake_binary(tmp_path, "llama-speculative-simple", "echo 'error: unknown argument: --spec-type' >&2\nexit 1\n")
    told = []
    res = run_bench(pair, ONE, tiny(draft_lens=(1,), reference=str(broken)), notify=told.append)
    assert any("exited with status 1" in n and "unknown argument" in n for n in res.notes)
    assert any("goes on without it" in t for t in told)
    spec_rows = [s for s in res.summary if s.engine == SPEC]
    assert len(spec_rows) == 2 and all(s.tokens_per_second > 0 for s in spec_rows)
    assert all(r.error for r in res.runs if r.engine == "llama.cpp")


def test_missing_reference_is_reported_and_the_bench_goes_on(pair, tmp_path):
    res = run_bench(pair, ONE, tiny(draft_lens=(1,), reference=str(tmp_path / "nowhere" / "llama-speculative-simple")))
    assert any("reference binary not found" in n for n in res.notes)
    assert {s.engine for s in res.summary} == {SPEC}


def _target_alone(pair, prompt, max_tokens):
    """spec's target-only run of prompt, through the runner the bench uses."""
    return EngineRunner(pair).run(prompt, "model", GenerateOptions(max_tokens=max_tokens, draft_len=0), None)


def test_output_check_flags_a_real_difference(pair, monkeypatch):
    """A speculative output that leaves the target-only one where the target is sure is a MISMATCH."""
    toks = pair.target.tokenize(PROMPT)
    base = _target_alone(pair, toks, 6)
    out = base.tokens
    base.prompt_id = ONE.prompts[0].id
    bad = Run(**{f.name: getattr(base, f.name) for f in fields(Run)})
    bad.mode, bad.draft_len = "speculative", 2
    bad.tokens = list(out[:2]) + [out[2] + 1] + list(out[3:])  # a token the target did not choose
    gap = checks.tie_gap_at(pair.target, toks, out[:2], out[2], out[2] + 1)
    assert gap > 0

    monkeypatch.setattr(checks, "TIE_TOLERANCE", gap / 2)
    runs = [base, bad]
    checks.check_outputs(pair.target, ONE.prompts, [toks], runs)
    assert (base.output_check, bad.output_check) == ("baseline", "MISMATCH")
    assert bad.tie_gap == pytest.approx(gap)

    monkeypatch.setattr(checks, "TIE_TOLERANCE", gap * 2)
    checks.check_outputs(pair.target, ONE.prompts, [toks], runs)
    assert bad.output_check == "near-tie"


def test_tie_gap_takes_the_closest_of_several_batchings(pair):
    """Never more than plain decoding's own gap (the engine tests' measure), and zero for the chosen token itself."""
    from tests.neartie import tie_gap

    toks = pair.target.tokenize(PROMPT)
    out = _target_alone(pair, toks, 6).tokens
    rival = out[3] + 1
    plain = tie_gap(pair.target, toks, out[:3], out[3], rival)
    assert 0 <= checks.tie_gap_at(pair.target, toks, out[:3], out[3], rival) <= plain + 1e-6
    assert checks.tie_gap_at(pair.target, toks, out[:3], out[3], out[3]) <= 1e-6 < plain  # out[3] is the target's own choice


# --- the command line, its files and its errors ---------------------------------------------


def _main(argv, capsys):
    from spec_cli.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_cli_bench_writes_json_csv_and_png(gemma_path, gemma_q2k_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEC_WIDTH", "160")
    prompts = tmp_path / "one.txt"
    prompts.write_text(PROMPT.replace("\n", " ") + "\n")
    j, c, png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    code, out, err = _main(
        ["bench", "--target", str(gemma_path), "--draft", str(gemma_q2k_path), "--prompts", str(prompts),
         "-n", "4", "--repeats", "1", "--draft-lens", "1,3", "--drafter", "model", "--no-control", "--no-warmup", "--ctx", "512",
         "--json", str(j), "--csv", str(c), "--plot", str(png)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "\n target " in out and "\n g=3 " in out and "cost curve" in out

    data = json.loads(j.read_text())
    # the verdict printed and saved is the one the measured speedups give: the fastest draft
    # length (ties to the shorter) where it clears the bar, else that speculation does not pay
    measured = {s["draft_len"]: s["speedup"] for s in data["summary"] if s["draft_len"] > 0}
    assert set(measured) == {1, 3} and all(isinstance(v, (int, float)) and math.isfinite(v) for v in measured.values()), measured
    g = max(measured, key=lambda k: (measured[k], -k))
    rec = data["recommendation"]
    if measured[g] >= MIN_WORTHWHILE_SPEEDUP:
        assert (rec["drafter"], rec["draft_len"], rec["model_draft_len"]) == ("model", g, g), (measured, rec)
        assert f"use --drafter model --draft-len {g}" in out and "does not pay" not in out, out
    else:
        assert (rec["drafter"], rec["draft_len"], rec["model_draft_len"]) == (None, None, None), (measured, rec)
        assert "does not pay" in out and "use --drafter" not in out, out
    assert data["schema"] == bench.SCHEMA
    assert set(data) >= {"created", "suite", "settings", "machine", "models", "cost", "runs", "summary", "recommendation"}
    assert data["settings"]["draft_lens"] == [1, 3] and data["settings"]["max_tokens"] == 4
    assert len(data["cost"]["target_ms"]) == bench.COST_CURVE_MAX_K
    assert len(data["runs"]) == 3
    assert set(data["runs"][0]) == {f.name for f in fields(Run)}
    assert [s["draft_len"] for s in data["summary"]] == [0, 1, 3]
    for s in data["summary"]:
        assert {"tokens_per_second", "speedup", "predicted", "acceptance_rate", "tokens_per_pass", "accept_hist"} <= set(s)

    with c.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_FIELDS
    assert len(rows) == 3
    spec3 = next(r for r in rows if r["draft_len"] == "3")
    assert len(spec3["accept_hist"].split()) == 4
    assert float(spec3["tokens_per_second"]) > 0

    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    from spec_cli.bench.plot import DPI, HEIGHT_IN, WIDTH_IN

    assert struct.unpack(">II", head[16:24]) == (round(WIDTH_IN * DPI), round(HEIGHT_IN * DPI))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompts", "/nonexistent/prompts.txt"], "prompts file not found"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--draft-lens", "two"], "--draft-lens takes comma-separated integers"),
        (["--json", "/nonexistent-dir/out.json"], "cannot write JSON file"),
        (["--csv", "/"], "CSV path is a directory"),
        (["--drafter", "model,magic"], "--drafter takes model, ngram, tree, auto"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, capsys):
    code, out, err = _main(["bench", *args], capsys)
    assert code != 0
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    code, _, err = _main(["bench", "--plot", str(tmp_path / "x.png")], capsys)
    assert code != 0 and "--plot needs matplotlib" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


_WRITE_UNDER_A_SIZE_LIMIT = """
import resource, sys
from pathlib import Path
from spec_cli.bench import Run, output
from spec_cli.errors import SpecError

class Result:  # what write_json and write_csv read, some 20 kB of it
    runs = [Run("spec", "target", 0, "prompt", "code", 0, i, tokens=list(range(50))) for i in range(100)]
    def to_dict(self):
        return {"runs": [r.tokens for r in self.runs]}

resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # Python ignores SIGXFSZ: a write past it fails with EFBIG
for write, path in ((output.write_json, sys.argv[1]), (output.write_csv, sys.argv[2])):
    try:
        write(Result(), Path(path))
    except SpecError as e:
        print(e)
"""


def test_json_and_csv_are_written_whole_or_not_at_all(tmp_path):
    """A write that fails half-way leaves the earlier file as it was, no temporary file, and one line that says what to do."""
    import subprocess

    old_json, old_csv = tmp_path / "r.json", tmp_path / "r.csv"
    old_json.write_text('{"earlier": "bench"}\n')
    old_csv.write_text("earlier,bench\n")
    proc = subprocess.run([sys.executable, "-c", _WRITE_UNDER_A_SIZE_LIMIT, str(old_json), str(old_csv)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    for line, path in zip(lines, (old_json, old_csv)):
        assert f"cannot write {path}: File too large" in line and "ulimit -f" in line
    assert old_json.read_text() == '{"earlier": "bench"}\n' and old_csv.read_text() == "earlier,bench\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]


def test_lookup_peer_decodes_like_spec(pair):
    """llama-cpp-python's Llama, fed the same token ids, gives spec's greedy output (lookup: up to a near-tie)."""
    from spec_cli.bench.lookup_peer import LookupPeer

    toks = pair.target.tokenize(PROMPT)
    base = _target_alone(pair, toks, 8)
    peer = LookupPeer(pair.target_path, n_ctx=128, n_threads=pair.target.n_threads)
    try:
        plain = peer.run("plain", toks, 8)
        lookup = peer.run("lookup", toks, 8)
    finally:
        peer.close()
    assert plain.tokens == base.tokens
    assert plain.seconds > 0 and lookup.seconds > 0
    k = checks.first_difference(base.tokens, lookup.tokens)
    assert (
        k is None
        or checks.tie_gap_at(pair.target, toks, base.tokens[:k], base.tokens[k], lookup.tokens[k]) <= checks.TIE_TOLERANCE
    )


def test_default_limit_cuts_the_bundled_suite_only():
    assert bench.default_limit(None, bundled=True) == bench.SUITE_DEFAULT_LIMIT
    assert bench.default_limit(None, bundled=False) is None  # a --prompts file is used whole
    assert bench.default_limit(0, bundled=True) is None and bench.default_limit(3, bundled=False) == 3


# --- drafters other than the draft model ------------------------------------------------


def test_parse_drafters():
    assert bench.parse_drafters("model,ngram,auto") == ("model", "ngram", "auto")
    assert bench.parse_drafters(" Auto , ngram,auto") == ("auto", "ngram")  # each once, in the order given
    with pytest.raises(SpecError, match="--drafter takes"):
        bench.parse_drafters("model,fast")
    with pytest.raises(SpecError, match="at least one"):
        bench.parse_drafters(" , ")


def _summary(drafter, g, speedup, worst=None, mode="speculative"):
    return bench.ConfigSummary(
        engine=SPEC, mode=mode, draft_len=g, label="", runs=1, failed=0, tokens_per_second=1.0, speedup=speedup,
        predicted=None, acceptance_rate=None, alpha=None, tokens_per_pass=None, accept_hist=None, outside_decode=None,
        vs_reference=None, drafter=drafter, worst_prompt=worst,
    )  # fmt: skip


def test_recommendation_prefers_auto_within_the_floor_and_says_when_nothing_pays():
    base = _summary("", 0, 1.0, mode="target")
    rows = [base, _summary("model", 2, 0.64), _summary("model", 4, 0.55), _summary("ngram", 4, 1.40, 0.90),
            _summary("auto", 0, 1.38, 0.99)]  # fmt: skip
    rec = bench.recommend_overall(rows)
    assert (rec["drafter"], rec["draft_len"]) == ("auto", None)  # 1.38 >= 0.97 * 1.40
    assert "--drafter auto" in rec["message"] and "1.38x" in rec["message"] and "0.99x" in rec["message"]
    assert rec["model_draft_len"] is None and "does not pay" in rec["model_message"]

    rows[-1] = _summary("auto", 0, 1.20, 0.98)
    rec = bench.recommend_overall(rows)
    assert (rec["drafter"], rec["draft_len"]) == ("ngram", 4)
    assert rec["message"].startswith("use --drafter ngram --draft-len 4: 1.40x") and "auto: 1.20x" in rec["message"]

    # Nothing clears the bar, but auto does not lose: keep it, and say how little it gains.
    rec = bench.recommend_overall([base, _summary("model", 2, 0.64), _summary("auto", 0, 1.01, 0.97)])
    assert rec["drafter"] == "auto" and "gains little" in rec["message"] and "1.01x" in rec["message"]
    # Everything loses, auto included: the target alone.
    rec = bench.recommend_overall([base, _summary("model", 2, 0.64), _summary("auto", 0, 0.95, 0.90)])
    assert rec["drafter"] is None and "does not pay" in rec["message"] and "--no-spec" in rec["message"]


def test_bench_ngram_and_auto_on_the_real_pair(pair):
    """Both run from fresh state, report what they drafted with, and keep the target's greedy output."""
    suite = Suite("test", None, [BenchPrompt("add", "code", PROMPT), BenchPrompt("copy", "copy", COPY_PROMPT)])
    res = run_bench(pair, suite, tiny(max_tokens=12, draft_lens=(3,), drafters=("ngram", "auto")))
    labels = [s.label for s in res.summary]
    assert labels == ["spec: target only", "spec: n-gram, draft length 3", "spec: auto"]
    by = {s.drafter: s for s in res.summary}
    ngram, auto = by["ngram"], by["auto"]
    for s in (ngram, auto):
        assert s.runs == 2 and s.mismatches == 0
        assert set(s.by_prompt) == {"add", "copy"} and s.worst_prompt == min(s.by_prompt.values())
        assert s.predicted is None  # the draft-model formula does not describe these drafters
        assert sum(s.rounds_by_drafter.values()) == sum(r.target_passes for r in res.runs if r.drafter == s.drafter)
    # The copy prompt repeats its input: the lookup finds matches and the target accepts some of them.
    copy_ngram = next(r for r in res.runs if r.drafter == "ngram" and r.prompt_id == "copy")
    assert copy_ngram.rounds_by_drafter.get("ngram", 0) > 0 and copy_ngram.accepted > 0
    assert all(r.output_check in ("baseline", "same", "near-tie") for r in res.runs)
    auto_run = next(r for r in res.runs if r.drafter == "auto")
    assert len(auto_run.accept_hist) == AUTO_MAX_DRAFT + 1
    assert auto_run.strategy_notes and any("rounds by drafter" in n for n in auto_run.strategy_notes)
    assert sum(auto_run.lengths_used.values()) == auto_run.target_passes
    assert res.settings["drafters"] == ["ngram", "auto"] and res.settings["auto_cost_curve"] is not None
    assert res.recommendation["message"]


def test_cli_bench_ngram_and_auto_without_a_draft_model(gemma_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEC_WIDTH", "160")
    prompts = tmp_path / "two.txt"
    prompts.write_text(PROMPT.replace("\n", " ") + "\n" + COPY_PROMPT.replace("\n", " ") + "\n")
    j, png = tmp_path / "r.json", tmp_path / "r.png"
    code, out, err = _main(
        ["bench", "--target", str(gemma_path), "--prompts", str(prompts), "--drafter", "ngram,auto", "-n", "6",
         "--repeats", "1", "--draft-lens", "2", "--no-warmup", "--ctx", "512", "--json", str(j), "--plot", str(png)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "\n ngram g=2 " in out and "\n auto " in out and "speedup by prompt" in out
    assert "auto: target passes by drafter" in out
    assert "one draft step" not in out  # no draft model loaded: no draft figures, not "nan"
    assert "\n target again " in out and "noise: the target alone against itself" in out
    data = json.loads(j.read_text())
    assert data["models"]["draft"] is None
    assert [(s["drafter"], s["draft_len"]) for s in data["summary"]] == [("", 0), ("control", 0), ("ngram", 2), ("auto", 0)]
    control = data["summary"][1]
    assert control["mode"] == "target" and control["speedup"] > 0 and set(control["by_prompt"]) == {"line1", "line2"}
    assert all(r["output_check"] == "same" for r in data["runs"] if r["drafter"] == "control")
    # The control runs halfway round the rotation from the target (4 configurations: 2 apart), not next to it.
    for pid in ("line1", "line2"):
        pos = {r["drafter"]: r["order"] for r in data["runs"] if r["prompt_id"] == pid}
        assert abs(pos["control"] - pos[""]) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- sampling: fake models, no llama.cpp ---------------------------------------------------

SAMPLED = dict(sampling=SamplingParams(temperature=0.8, top_k=5, top_p=0.9), seed=7)


class _BenchFake:
    """What the bench asks of a Model beyond the loop's needs: tokenize, threads, GPU layers, close."""

    n_threads, n_gpu_layers = 1, 0

    def tokenize(self, text):
        return [1 + ord(c) % 15 for c in text]

    def close(self):
        pass


class _BatchBroken(_BenchFake):
    """A target whose batched passes disagree with its one-token passes, as a broken backend would:
    past a batch's first row, the token the model likes least wins by 5."""

    def eval(self, tokens, logits="last"):
        rows = super().eval(tokens, "none" if logits == "none" else "all")
        if rows is None:
            return None
        for row in rows[1:]:
            row[np.argmin(row)] = row.max() + 5.0
        return rows[-1:] if logits == "last" else rows


def _fake_pair(with_draft=True, broken_batches=False):
    from tests.fakes import FakeModel, soft_lm

    class Fake(_BenchFake, FakeModel):
        pass

    class Broken(_BatchBroken, FakeModel):
        pass

    lm = soft_lm(16, seed=3)
    # a scripted cost per pass, so that the real cost source measures a curve on the fakes
    target = (Broken if broken_batches else Fake)(lm, 16, n_ctx=4096, cost=lambda n: 0.001 * (1 + 0.1 * n))
    draft = Fake(lm, 16, n_ctx=4096) if with_draft else None
    return LoadedPair(target, draft, Path("/nowhere/target.gguf"), Path("/nowhere/draft.gguf") if with_draft else None)


TWO = Suite("test", None, [BenchPrompt("a", "code", "abc"), BenchPrompt("b", "story", "hello")])


class _FlatCosts:
    """A cost source with no machine behind it: a flat target curve and a fixed draft step."""

    def sample(self, context, max_k):
        return CostCurve([1.0] * max_k, 0.5, 0.6)

    def calibrated(self):
        return CostCurve([1.0] * (AUTO_MAX_DRAFT + 1), float("nan"), float("nan"))


def _quiet_machine(threads):
    return {"cpu_busy_share_at_start": None, "logical_cpus": 2}


class _Recorder:
    """The real runner and checker, recording every generation's (sampling, seed), warm-up included, and every check."""

    def __init__(self, pair):
        self.engine = EngineRunner(pair)
        self.seen = []
        self.checks = 0

    def run(self, prompt, drafter, opts, auto_costs):
        self.seen.append((opts.sampling, opts.seed))
        return self.engine.run(prompt, drafter, opts, auto_costs)

    def check(self, *args):
        self.checks += 1
        check_outputs(*args)


def bench_on_fakes(pair, suite, settings, **kw):
    """run_bench on fake models: a flat cost curve, a quiet machine, the real engine and checker (recorded)."""
    rec = _Recorder(pair)
    res = run_bench(pair, suite, settings, costs=_FlatCosts(), runner=rec, checker=rec.check, machine=_quiet_machine, **kw)
    return res, rec


def test_sampling_settings_reach_every_run_and_outputs_are_not_compared():
    settings = tiny(draft_lens=(2,), repeats=2, max_tokens=6, drafters=("model", "ngram"), control=True, warmup=True, **SAMPLED)
    res, rec = bench_on_fakes(_fake_pair(), TWO, settings)
    seen = rec.seen

    assert seen and {s for s, _ in seen} == {SAMPLED["sampling"]}
    spec_runs = [r for r in res.runs if r.engine == SPEC]
    assert len(spec_runs) == 2 * 2 * 4  # repeats x prompts x (target, control, model g=2, ngram g=2)
    for r in spec_runs:
        assert r.seed == bench.run_seed(7, [p.id for p in TWO.prompts].index(r.prompt_id), r.repeat)
    # one seed per (prompt, repeat), shared by its configurations; the warm-up has its own
    assert len({r.seed for r in spec_runs}) == 4
    assert {seed for _, seed in seen} == {r.seed for r in spec_runs} | {bench.run_seed(7, 0, -1)}

    assert rec.checks == 0 and {r.output_check for r in res.runs} == {"not-checked"}
    assert all(s.mismatches == 0 and s.near_ties == 0 for s in res.summary)
    assert any("not compared" in n and "distribution tests" in n for n in res.notes)
    by = {(s.drafter, s.draft_len): s for s in res.summary}
    for key in (("model", 2), ("ngram", 2)):
        s = by[key]
        assert s.speedup > 0 and s.tokens_per_second > 0 and s.accept_hist is not None
        assert s.acceptance_rate is None or 0.0 <= s.acceptance_rate <= 1.0
    assert by[("model", 2)].predicted > 0 and res.recommendation["message"]
    assert {k: res.settings[k] for k in ("greedy", "temp", "top_k", "top_p", "seed")} == {
        "greedy": False, "temp": 0.8, "top_k": 5, "top_p": 0.9, "seed": 7,
    }  # fmt: skip

    # The same base seed samples the same tokens again; another one does not.
    again, _ = bench_on_fakes(_fake_pair(), TWO, settings)
    assert [r.tokens for r in again.runs] == [r.tokens for r in res.runs]
    other, _ = bench_on_fakes(_fake_pair(), TWO, replace(settings, seed=8))
    assert [r.tokens for r in other.runs] != [r.tokens for r in res.runs]


def test_greedy_bench_still_checks_outputs():
    res, rec = bench_on_fakes(_fake_pair(), TWO, tiny(draft_lens=(2,), max_tokens=6, drafters=("model", "ngram")))
    assert {(s.greedy, seed) for s, seed in rec.seen} == {(True, None)}
    assert rec.checks == 1
    assert {r.output_check for r in res.runs if r.mode == "target"} == {"baseline"}
    assert {r.output_check for r in res.runs if r.mode == "speculative"} == {"same"}
    assert res.settings["greedy"] is True and res.settings["seed"] is None
    assert not any("not compared" in n for n in res.notes)


def test_tree_is_measured_under_sampling():
    res, _ = bench_on_fakes(_fake_pair(), ONE, tiny(draft_lens=(2,), drafters=("tree",), **SAMPLED))
    assert [(s.mode, s.drafter) for s in res.summary] == [("target", ""), ("speculative", "tree")]
    assert res.settings["drafters"] == ["tree"]
    assert not any("tree not measured" in n for n in res.notes)
    tree = [r for r in res.runs if r.drafter == "tree"]
    assert tree and all(r.drafted > 0 for r in tree)
    assert any("drawn at random" in n for r in tree for n in r.strategy_notes or [])


def test_lookup_peer_is_skipped_under_sampling():
    res, _ = bench_on_fakes(_fake_pair(), ONE, tiny(draft_lens=(1,), lookup=True, **SAMPLED))
    assert any("prompt-lookup peer skipped" in n for n in res.notes)
    assert {s.engine for s in res.summary} == {SPEC}


def test_reference_gets_the_sampling_settings_and_each_runs_seed(tmp_path):
    log = tmp_path / "args.log"
    spec_bin = _fake_binary(tmp_path, "llama-speculative-simple", f"echo \"$@\" >> {log}\ncat <<'EOF'\n{SPECULATIVE_OUT}\nEOF\n")
    _fake_binary(tmp_path, "llama-completion", f"echo \"$@\" >> {log}\ncat <<'EOF'\n{PLAIN_OUT}\nEOF\n")
    res, _ = bench_on_fakes(_fake_pair(), TWO, tiny(draft_lens=(2,), reference=str(spec_bin), **SAMPLED))
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 2  # two prompts, llama-completion and one draft length
    for line in lines:
        assert "--samplers top_k;temperature;top_p --temp 0.8 --top-k 5 --top-p 0.9 --min-p 0" in line
    seeds = sorted(int(ln.split("--seed ")[1].split()[0]) for ln in lines)
    assert seeds == sorted([bench.run_seed(7, 0, 0)] * 2 + [bench.run_seed(7, 1, 0)] * 2)
    assert any("not comparable" in n for n in res.notes)
    assert all(r.output_check == "not-checked" for r in res.runs)


def test_reference_ngram_mod_row_without_a_draft_model(tmp_path):
    """llama.cpp's ngram-mod runs beside spec's n-gram and auto drafters, with no draft model needed;
    auto's 'vs ref' is against it. Without a draft model, llama.cpp's draft-model rows are left out."""
    log = tmp_path / "args.log"
    spec_bin = _fake_binary(tmp_path, "llama-speculative-simple", f"echo \"$@\" >> {log}\ncat <<'EOF'\n{SPECULATIVE_OUT}\nEOF\n")
    _fake_binary(tmp_path, "llama-completion", f"cat <<'EOF'\n{PLAIN_OUT}\nEOF\n")
    res, _ = bench_on_fakes(
        _fake_pair(with_draft=False), TWO, tiny(draft_lens=(2,), drafters=("ngram", "auto"), reference=str(spec_bin))
    )
    labels = [s.label for s in res.summary]
    assert "llama.cpp: ngram-mod" in labels and "llama.cpp: target only" in labels
    assert not any(s.engine == "llama.cpp" and s.drafter != "ngram" and s.mode == "speculative" for s in res.summary)
    lines = log.read_text().splitlines()
    assert len(lines) == 2  # one ngram-mod run per prompt
    assert all("--spec-type ngram-mod" in ln and "-md" not in ln.split() for ln in lines)
    by = {s.label: s for s in res.summary}
    ref = by["llama.cpp: ngram-mod"]
    assert ref.tokens_per_second == pytest.approx(40.0) and ref.speedup == pytest.approx(40.0 / 62.0)
    auto = by["spec: auto"]
    assert auto.vs_reference == pytest.approx(auto.tokens_per_second / 40.0)
    assert by["spec: n-gram, draft length 2"].vs_reference is None  # no llama.cpp row at its draft length
    assert any("draft-model rows skipped" in n for n in res.notes)
    # only the model drafter: no ngram-mod row
    res, _ = bench_on_fakes(_fake_pair(), ONE, tiny(draft_lens=(1,), reference=str(spec_bin)))
    assert "llama.cpp: ngram-mod" not in [s.label for s in res.summary]
    # 34 tokens decoded for a budget of 40 is no overshoot; the warm-up's budget of 8 does not count
    res, _ = bench_on_fakes(
        _fake_pair(), ONE, tiny(draft_lens=(1,), drafters=("ngram",), max_tokens=40, warmup=True, reference=str(spec_bin))
    )
    assert not [n for n in res.notes if "for a budget of" in n]


def test_auto_says_which_drafter_it_left_out():
    """A draft step too slow to ever pay: auto leaves the draft model out, and the summary keeps that reason alone."""

    class SlowDraft(_FlatCosts):
        def calibrated(self):
            return CostCurve([0.02] * (AUTO_MAX_DRAFT + 1), 5.0, 5.0)

    pair = _fake_pair()
    rec = _Recorder(pair)
    res = run_bench(pair, ONE, tiny(drafters=("auto",)), costs=SlowDraft(), runner=rec, checker=rec.check, machine=_quiet_machine)
    [run] = [r for r in res.runs if r.drafter == "auto"]
    assert len(run.drafters_off) == 1 and run.drafters_off[0] in run.strategy_notes
    assert len(run.strategy_notes) > 1  # the rest of auto's account is not a reason to leave a drafter out
    [auto] = [s for s in res.summary if s.drafter == "auto"]
    assert auto.strategy_notes == run.drafters_off and "drafter off" in auto.strategy_notes[0]
    assert set(auto.rounds_by_drafter) <= {"ngram", "none"}


def test_reference_commands_greedy_unchanged_and_sampled():
    ref = reference.Reference(Path("/bin/llama-speculative-simple"), Path("/bin/llama-completion"))
    s = reference.ReferenceSettings(target=Path("t.gguf"), draft=Path("d.gguf"), max_tokens=8, ctx=512, threads=2)
    common = ["-n", "8", "--temp", "0", "--seed", "0", "-c", "512", "-t", "2", "-ngl", "0"]
    assert reference.plain_command(ref, s)[-len(common) :] == common  # greedy: what it always passed
    sampled = replace(s, temp=0.7, top_k=0, top_p=1.0, seed=11)
    ngram = reference.ngram_command(ref, s)
    assert ngram[:5] == ["/bin/llama-speculative-simple", "-m", "t.gguf", "--spec-type", "ngram-mod"]
    assert ngram[-len(common) :] == common and "-md" not in ngram
    args = reference.speculative_command(ref, sampled, 3)
    i = args.index("--samplers")
    assert args[i : i + 12] == ["--samplers", "top_k;temperature;top_p", "--temp", "0.7", "--top-k", "0", "--top-p", "1.0",
                                "--min-p", "0", "--seed", "11"]  # fmt: skip


def test_greedy_check_catches_a_target_whose_batches_disagree():
    """The real checker on outputs that differ: verification passes (batched) pick tokens the target alone does not."""
    res, rec = bench_on_fakes(_fake_pair(broken_batches=True), ONE, tiny(draft_lens=(2,), max_tokens=6))
    assert rec.checks == 1
    by = {r.mode: r for r in res.runs}
    assert by["target"].output_check == "baseline"
    assert by["speculative"].output_check == "MISMATCH" and by["speculative"].tie_gap > checks.TIE_TOLERANCE
    assert by["speculative"].tokens != by["target"].tokens
    [s] = [s for s in res.summary if s.mode == "speculative"]
    assert s.mismatches == 1 and any(n.startswith(f"{s.label}: 1 greedy output(s) differ") for n in res.notes)
    with pytest.raises(SpecError, match="1 greedy output"):
        bench.require_lossless(res)
    # The same target honest in its batches: nothing to report.
    res, _ = bench_on_fakes(_fake_pair(), ONE, tiny(draft_lens=(2,), max_tokens=6))
    assert {r.output_check for r in res.runs} == {"baseline", "same"}
    bench.require_lossless(res)


def test_cli_bench_under_sampling_skips_the_greedy_check(monkeypatch, capsys, tmp_path):
    """Through the command line on fake models, measured and checked for real: a greedy MISMATCH fails the
    command; under sampling none is looked for."""
    import spec_cli.cli.bench as cli_bench

    monkeypatch.setenv("SPEC_WIDTH", "160")
    monkeypatch.setattr(cli_bench, "load_pair", lambda *a, **k: _fake_pair(broken_batches=True))
    argv = ["bench", "--drafter", "model,tree", "--draft-lens", "2", "-n", "4", "-r", "1", "--no-warmup", "--limit", "1"]
    greedy = tmp_path / "greedy.json"
    code, out, err = _main(argv + ["--json", str(greedy)], capsys)
    assert code != 0 and "greedy output(s) changed" in err
    checked = {(r["drafter"], r["output_check"]) for r in json.loads(greedy.read_text())["runs"]}
    assert {("", "baseline"), ("model", "MISMATCH")} <= checked

    j = tmp_path / "r.json"
    code, out, err = _main(argv + ["--temp", "0.9", "--top-k", "0", "--seed", "3", "--json", str(j)], capsys)
    assert code == 0, err
    assert "not compared" in out and "distribution tests" in out and "\n g=2 " in out
    assert "tree not measured" not in out + err
    data = json.loads(j.read_text())
    assert {k: data["settings"][k] for k in ("greedy", "temp", "top_k", "top_p", "seed")} == {
        "greedy": False, "temp": 0.9, "top_k": 0, "top_p": 1.0, "seed": 3,
    }  # fmt: skip
    assert {r["seed"] for r in data["runs"]} == {bench.run_seed(3, 0, 0)}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "1.5"], "top-p must be in (0, 1], got 1.5"),
        (["--top-p", "0"], "top-p must be in (0, 1], got 0.0"),
        (["--temp", "-0.5"], "temperature must be >= 0, got -0.5"),
        (["--top-k", "-1"], "top-k must be >= 0"),
        (["--seed", "-1", "--temp", "0.5"], "--seed must be a whole number from 0 up"),
    ],
)
def test_cli_bad_sampling_values_are_one_line(args, message, capsys):
    code, out, err = _main(["bench", *args], capsys)
    assert code != 0
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bench_under_sampling_on_the_real_pair(pair):
    """Two prompts, eight tokens: acceptance is reported, and no output is held against the target alone's."""
    suite = Suite("test", None, [BenchPrompt("add", "code", PROMPT), BenchPrompt("copy", "copy", COPY_PROMPT)])
    res = run_bench(pair, suite, tiny(max_tokens=8, draft_lens=(3,), drafters=("model",), **SAMPLED))
    s = next(s for s in res.summary if s.mode == "speculative")
    assert s.runs == 2 and s.acceptance_rate is not None and 0.0 <= s.acceptance_rate <= 1.0
    assert s.mismatches == 0 and all(r.output_check == "not-checked" for r in res.runs)
    assert res.settings["greedy"] is False


def test_a_prompt_the_target_ends_at_once_is_named_and_left_out_of_the_figures():
    """A model that ends the text before its first token (an instruct model on a raw prompt) gives 0 tok/s there."""
    from tests.fakes import soft_lm

    lm = soft_lm(16, seed=3)
    first = {p.id: int(np.argmax(lm(_BenchFake.tokenize(None, p.text)))) for p in TWO.prompts}
    assert first["a"] != first["b"]
    pair = _fake_pair()
    pair.target.eog = pair.draft.eog = first["a"]  # prompt "a" ends at once, "b" does not
    res, _ = bench_on_fakes(pair, TWO, tiny(draft_lens=(2,), max_tokens=6, drafters=("model",)))

    assert {r.generated for r in res.runs if r.prompt_id == "a"} == {0}
    assert all(r.generated > 0 for r in res.runs if r.prompt_id == "b")
    [note] = [n for n in res.notes if "generated no token" in n]
    assert "on a " in note and "left out" in note
    for s in res.summary:
        rates = [
            r.tokens_per_second
            for r in res.runs
            if r.prompt_id == "b" and r.config == Config(s.engine, s.mode, s.draft_len, s.drafter)
        ]
        assert s.tokens_per_second == pytest.approx(float(np.median(rates)))  # prompt b's rate, not pulled down by a's zeros
        assert set(s.by_prompt) <= {"b"}
    # Every prompt generating: no such note.
    res, _ = bench_on_fakes(_fake_pair(), TWO, tiny(draft_lens=(2,), max_tokens=6, drafters=("model",)))
    assert not any("generated no token" in n for n in res.notes)
