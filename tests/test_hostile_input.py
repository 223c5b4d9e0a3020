"""Hostile input (issue 13): every case through the real `spec` process and through CliRunner.

Each case must end in one line on stderr that says what is wrong and what to do, a
non-zero exit (130 for Ctrl-C), no traceback, and nothing of the user's left
half-written: no partial GGUF in the cache, no truncated save file, no damaged
calibration cache. The in-process runs call spec's own entry point (`main`, which
turns errors into that one line) inside CliRunner's isolated stdin, stdout and stderr.

The cases that need models use SmolLM2-135M (the smallest installed) with one thread and
a small context; the ones that write use their own SPEC_HOME and SPEC_CACHE.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spec_cli.cli import main

TIMEOUT = 180  # a subprocess that hangs (a FIFO read, a lost Ctrl-C) fails instead of blocking the suite
FAST = ["--threads", "1", "--ctx", "256"]
DRAFT_TOML = '[models.hostile-draft]\nderive = "smollm2-135m-instruct"\nquant = "Q4_0"\n'

runner = CliRunner()


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def spec(*args, input: bytes | str | None = None, env: dict | None = None, preexec_fn=None) -> Outcome:
    """The installed entry point as a user runs it. Arguments may be bytes (argv that is not UTF-8)."""
    full_env = dict(os.environ, SPEC_WIDTH="200", **(env or {}))
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [sys.executable, "-m", "spec_cli", *args], input=data, capture_output=True, env=full_env,
        timeout=TIMEOUT, preexec_fn=preexec_fn,
    )  # fmt: skip
    return Outcome(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def in_process(*args, input: bytes | str | None = None, env: dict | None = None) -> Outcome:
    """The same command in this process: spec's main() inside CliRunner's isolation."""
    with runner.isolation(input=input, env=env) as streams:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = streams[0].getvalue(), streams[1].getvalue()
    return Outcome(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


BOTH = pytest.mark.parametrize("via", [spec, in_process], ids=["process", "clirunner"])


def assert_one_line_error(r: Outcome, *fragments: str, code: int = 2, notes: int = 0) -> str:
    """One `error:` line, the last thing on stderr, after at most `notes` lines of progress."""
    assert r.code == code, (r.code, r.err)
    assert "Traceback" not in r.err + r.out and "Exception ignored" not in r.err
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.err
    assert len(lines) <= 1 + notes, r.err
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


@pytest.fixture
def own_dirs(tmp_path):
    """A SPEC_HOME whose models.toml derives a draft, and an empty SPEC_CACHE, for this test alone."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    (home / "models.toml").write_text(DRAFT_TOML)
    return {"SPEC_HOME": str(home), "SPEC_CACHE": str(cache)}


def cache_files(env: dict) -> list[str]:
    models = Path(env["SPEC_CACHE"]) / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


# --- text that is not UTF-8, NUL, --stop -----------------------------------------------------
# Decision (README, Usage): spec refuses text that is not UTF-8 rather than replace bytes behind
# the user's back, and refuses NUL, which means a binary or UTF-16 file.


@BOTH
def test_prompt_on_stdin_that_is_not_utf8(via):
    r = via("run", *FAST, "-", input=b"Bonjour, \xe9t\xe9 \xff\xfe\n")
    assert_one_line_error(r, "the prompt is not UTF-8", "0xe9 at offset 9", "iconv")


def test_prompt_argument_that_is_not_utf8():
    # A shell passes the bytes as they are; Python gives them to spec as surrogates (surrogateescape).
    assert_one_line_error(spec("run", *FAST, b"caf\xe9 au lait"), "the prompt is not UTF-8", "0xe9 at offset 3")
    arg = os.fsdecode(b"caf\xe9 au lait")  # what CliRunner's caller sees for the same argv
    assert_one_line_error(in_process("run", *FAST, arg), "the prompt is not UTF-8", "0xe9 at offset 3")


@BOTH
def test_prompt_with_a_nul(via):
    r = via("run", *FAST, "-", input=b"Hello\x00world")
    assert_one_line_error(r, "NUL", "offset 5", "UTF-16")


def test_prompt_argument_with_a_nul():
    # execve() takes C strings, so a NUL cannot reach a real process in argv; in process it can.
    with pytest.raises(ValueError):
        spec("run", "Hello\x00world")
    assert_one_line_error(in_process("run", *FAST, "Hello\x00world"), "NUL", "offset 5")


@BOTH
def test_stop_string_empty_or_not_utf8(via):
    assert_one_line_error(via("run", *FAST, "--stop", "", "Hello"), "--stop needs some text")
    bad = b"\xff" if via is spec else os.fsdecode(b"\xff")
    assert_one_line_error(via("run", *FAST, "--stop", bad, "Hello"), "--stop is not UTF-8", "0xff")


# --- the user's models.toml -------------------------------------------------------------------


@BOTH
def test_user_models_toml_with_a_syntax_error(via, tmp_path):
    (tmp_path / "models.toml").write_text('[pairs.mine\ntarget = "smollm2-135m-instruct"\n')
    env = {"SPEC_HOME": str(tmp_path)}
    for args in (["models"], ["run", *FAST, "Hello"]):
        assert_one_line_error(via(*args, env=env), "models.toml is not valid TOML", "line 1", "move the file aside")
    assert (tmp_path / "models.toml").read_text().startswith("[pairs.mine\n")  # the user's file is left alone


@BOTH
def test_user_models_toml_pair_naming_an_unknown_model(via, tmp_path):
    (tmp_path / "models.toml").write_text('[pairs.mine]\ntarget = "smollm2-135m-instruct"\ndraft = "smollm-typo"\n')
    r = via("run", *FAST, "--preset", "mine", "Hello", env={"SPEC_HOME": str(tmp_path)})
    assert_one_line_error(r, "preset 'mine'", str(tmp_path / "models.toml"), "'smollm-typo'", "fix the name")


# --- chat save files ----------------------------------------------------------------------------

SAVED = {
    "format": "spec-chat",
    "version": 1,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
}
CHAT = ["chat", "--no-spec", *FAST, "-n", "4"]


@BOTH
@pytest.mark.parametrize(
    "content, fragment",
    [
        (json.dumps(SAVED)[:70], "is not valid JSON"),  # cut short
        ("name,messages\nme,hi\n", "is not valid JSON"),
        (json.dumps({"format": "spec-chat", "messages": [{"role": "robot", "content": "x"}]}), "is not a saved chat"),
    ],
    ids=["truncated", "not-json", "not-a-chat"],
)
def test_chat_load_of_a_bad_save_file(via, tmp_path, content, fragment):
    f = tmp_path / "saved.json"
    f.write_text(content)
    r = via(*CHAT, "--load", str(f), input="/exit\n")
    assert_one_line_error(r, str(f), fragment, "/save")
    assert f.read_text() == content


def test_chat_load_inside_the_repl_reports_and_goes_on(tmp_path, smollm2_path):
    f = tmp_path / "saved.json"
    f.write_text(json.dumps(SAVED)[:70])
    r = spec(*CHAT, input=f"/load {f}\n/stats\n")
    assert r.code == 0 and "Traceback" not in r.err
    errors = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "is not valid JSON" in errors[0]
    assert "session: 0 turns" in r.err  # the chat went on after the error
    assert f.read_text() == json.dumps(SAVED)[:70]


@BOTH
def test_chat_save_file_from_a_different_pair_is_continued_and_said_so(via, tmp_path, smollm2_path):
    """A save holds text, not token ids: another target reads it through its own template. Said on one line."""
    f = tmp_path / "saved.json"
    f.write_text(json.dumps(SAVED | {"models": {"target": "Qwen2.5-7B-Instruct-Q4_K_M.gguf", "draft": "Qwen2.5-0.5B.gguf"}}))
    r = via(*CHAT, "--load", str(f), input="/stats\n")
    assert r.code == 0 and "Traceback" not in r.err and "error:" not in r.err
    note = [ln for ln in r.err.splitlines() if "saved with target" in ln]
    assert len(note) == 1 and "Qwen2.5-7B-Instruct-Q4_K_M.gguf" in note[0] and smollm2_path.name in note[0]
    assert "2 messages" in r.err


def test_chat_save_on_a_full_disk_keeps_the_earlier_file(tmp_path, smollm2_path):
    """/save through a temporary file: a write that fails leaves the old save whole, and the chat goes on."""
    f = tmp_path / "saved.json"
    earlier = json.dumps(SAVED, indent=2) + "\n"
    f.write_text(earlier)
    r = spec(*CHAT, "--load", str(f), input=f"/save {f}\n/stats\n", preexec_fn=file_size_limit(len(earlier) // 2))
    errors = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert r.code == 0 and "Traceback" not in r.err
    assert len(errors) == 1 and f"cannot write {f}: File too large" in errors[0] and "ulimit -f" in errors[0]
    assert "session: 0 turns" in r.err
    assert f.read_text() == earlier and sorted(p.name for p in tmp_path.iterdir()) == ["saved.json"]


# --- the calibration cache ------------------------------------------------------------------------


def calibrating(model: Path) -> list[str]:
    """A run with --draft-len auto (the default), which reads the cost curve from the calibration cache."""
    return ["run", *FAST, "-t", str(model), "--drafter", "ngram", "-n", "2", "--json", "Hello"]


def _cache_was_rewritten_whole(cal: Path) -> str:
    ((key, entry),) = json.loads(cal.read_text()).items()
    assert len(entry["target_ms"]) == 9 and all(t > 0 for t in entry["target_ms"])
    assert sorted(p.name for p in cal.parent.iterdir()) == ["calibration.json"]  # no temporary file left
    return key


def _damaged_note(r: Outcome) -> list[str]:
    assert r.code == 0 and "Traceback" not in r.err and "error:" not in r.err, r.err
    return [ln for ln in r.err.splitlines() if "damaged" in ln]


# A cache is spec's own: a damaged one is not the user's error. spec says so on one line,
# measures again and rewrites the file whole.


def test_calibration_cache_cut_short_real_process(tmp_path, smollm2_path):
    cal = tmp_path / "calibration.json"
    cal.write_bytes(b'{"warm-graph-sync|host|8|/x.gguf": {"target_ms": [1.0, 2.')
    r = spec(*calibrating(smollm2_path), env={"SPEC_CACHE": str(tmp_path)})
    assert _damaged_note(r) == [f"the calibration cache {cal} is damaged; it is measured again and rewritten"]
    _cache_was_rewritten_whole(cal)


def test_calibration_cache_of_binary_junk_or_a_bad_entry_clirunner(tmp_path, smollm2_path):
    cal, env = tmp_path / "calibration.json", {"SPEC_CACHE": str(tmp_path)}
    args = calibrating(smollm2_path)
    cal.write_bytes(bytes(range(256)))
    assert _damaged_note(in_process(*args, env=env)) == [
        f"the calibration cache {cal} is damaged; it is measured again and rewritten"
    ]
    key = _cache_was_rewritten_whole(cal)
    # An entry that parses but is not a cost curve is not trusted either.
    cal.write_text(json.dumps({key: {"target_ms": "fast", "draft_ms": None}}))
    assert _damaged_note(in_process(*args, env=env)) == [
        f"the cached cost curve in {cal} is damaged; measuring again (a few seconds)"
    ]
    _cache_was_rewritten_whole(cal)


# --- model references and model files -----------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "ref, fragments",
    [
        ("owner/repo:", ["neither a local file nor a Hugging Face reference", "owner/repo:file.gguf"]),
        ("owner/repo:model.bin", ["neither a local file nor a Hugging Face reference"]),
        ("a/b/c:model.gguf", ["neither a local file nor a Hugging Face reference"]),
        ("own--er/repo:model.gguf", ["not a valid Hugging Face reference", "--", "owner/repo:file.gguf"]),
        ("owner/repo:../model.gguf", ["not a valid Hugging Face reference", ".."]),
    ],
)
def test_malformed_hugging_face_reference(via, ref, fragments):
    assert_one_line_error(via("run", *FAST, "--no-spec", "-t", ref, "Hello"), *fragments)


def _open_for_writing_later(fifo: Path, after: float) -> threading.Thread:
    """If spec blocks reading the FIFO, a writer comes along and closes it: the test then fails, not hangs."""

    def unblock():
        time.sleep(after)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:  # nobody reading: spec did not block
            pass

    t = threading.Thread(target=unblock, daemon=True)
    t.start()
    return t


@BOTH
def test_model_path_that_is_a_fifo(via, tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    if via is in_process:
        _open_for_writing_later(fifo, after=30)
    t0 = time.monotonic()
    r = via("run", *FAST, "--no-spec", "-t", str(fifo), "Hello")
    assert time.monotonic() - t0 < 30
    assert_one_line_error(r, str(fifo), "not a regular file", ".gguf")
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def _drop_root_read_override():
    """In the child: take CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH out of the bounding set, so that
    after exec even root is refused a file with mode 000, as any user is."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_model_file_without_read_permission_real_process(tmp_path, smollm2_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(smollm2_path.read_bytes()[:4096])
    model.chmod(0)
    preexec = None
    if os.geteuid() == 0:
        # chmod 000 does not stop root; the kernel refuses root too once the override capabilities are gone.
        probe = subprocess.run(
            [sys.executable, "-c", "open(%r, 'rb')" % str(model)], preexec_fn=_drop_root_read_override, capture_output=True
        )
        if b"PermissionError" not in probe.stderr:
            pytest.skip("running as root, and this container does not let root drop CAP_DAC_OVERRIDE: nothing refuses the read")
        preexec = _drop_root_read_override
    r = spec("run", *FAST, "--no-spec", "-t", str(model), "Hello", preexec_fn=preexec)
    assert_one_line_error(r, str(model), "permission denied", "chmod")


def test_model_file_without_read_permission_clirunner(tmp_path, smollm2_path, monkeypatch):
    model = tmp_path / "model.gguf"
    model.write_bytes(smollm2_path.read_bytes()[:4096])
    model.chmod(0)
    if os.geteuid() == 0:
        # Root reads mode-000 files, and this process cannot give that up and get it back: have the
        # open fail as it does for any other user (the kernel's refusal is the real-process test's).
        real_open = os.open

        def refusing_open(path, flags, *a, **kw):
            if Path(path) == model:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *a, **kw)

        monkeypatch.setattr(os, "open", refusing_open)
    r = in_process("run", *FAST, "--no-spec", "-t", str(model), "Hello")
    assert_one_line_error(r, str(model), "permission denied", "chmod")


@BOTH
def test_max_tokens_far_beyond_the_context(via):
    r = via("run", "--ctx", "256", "-n", "1000000", "Hello")
    assert_one_line_error(r, "--max-tokens 1000000", "--ctx 256", "larger --ctx")


# --- Ctrl-C -----------------------------------------------------------------------------------------
# llama.cpp calls back into Python while it loads and quantizes (its log callback). A Ctrl-C
# handled there used to be printed as a traceback and dropped, and spec went on to the end.


# When a model starts loading is seen in the process's memory map: llama.cpp mmaps the file.
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="seeing a model load begin needs /proc/PID/maps (Linux)"
)


def _mapped(pid: int, path: Path) -> int:
    try:
        return Path(f"/proc/{pid}/maps").read_text().count(str(path))
    except OSError:
        return 0


def _send_sigint_when(condition, pid: int, done: threading.Event, timeout: float = TIMEOUT) -> threading.Thread:
    def watch():
        end = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < end:
            if condition():
                os.kill(pid, signal.SIGINT)
                return
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _deriving(env: dict) -> bool:
    models = Path(env["SPEC_CACHE"]) / "models"
    return any(models.glob("hostile-draft.gguf.tmp*")) if models.exists() else False


def _no_partial_draft(env: dict) -> None:
    """No temporary file; a draft that is there was finished (the interrupt came after its rename)."""
    names = cache_files(env)
    assert all(".tmp" not in n for n in names), names
    if "hostile-draft.gguf" in names:
        from spec_cli.llama import Model

        Model(Path(env["SPEC_CACHE"]) / "models" / "hostile-draft.gguf", n_ctx=256, n_threads=1).close()


def _run_interrupted(argv: list[str], condition_for_pid, env: dict | None = None) -> Outcome:
    full_env = dict(os.environ, SPEC_WIDTH="200", **(env or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "spec_cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env
    )
    done = threading.Event()
    watcher = _send_sigint_when(lambda: condition_for_pid(proc.pid), proc.pid, done)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        done.set()
        watcher.join()
        if proc.poll() is None:
            proc.kill()
    return Outcome(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def _in_process_interrupted(argv: list[str], condition, env: dict | None = None) -> Outcome:
    done = threading.Event()
    watcher = _send_sigint_when(condition, os.getpid(), done)
    try:
        r = in_process(*argv, env=env)
        done.set()
        time.sleep(0.3)  # an interrupt that escaped main() would land here
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C escaped spec's main()")
    finally:
        done.set()
        watcher.join()
    return r


@needs_proc
def test_ctrl_c_while_a_model_loads_real_process(smollm2_path):
    # -n 200 keeps it busy for seconds after the load: a Ctrl-C that got lost would end in exit 0.
    argv = ["run", *FAST, "--no-spec", "-t", str(smollm2_path), "-n", "200", "Once upon a time"]
    r = _run_interrupted(argv, lambda pid: _mapped(pid, smollm2_path) > 0)
    assert_one_line_error(r, "interrupted", code=130)


@needs_proc
def test_ctrl_c_while_a_model_loads_clirunner(smollm2_path):
    before = _mapped(os.getpid(), smollm2_path)
    argv = ["run", *FAST, "--no-spec", "-t", str(smollm2_path), "-n", "200", "Once upon a time"]
    r = _in_process_interrupted(argv, lambda: _mapped(os.getpid(), smollm2_path) > before)
    assert_one_line_error(r, "interrupted", code=130)


def test_ctrl_c_while_a_draft_is_derived_real_process(own_dirs, smollm2_path):
    argv = ["run", *FAST, "-t", "smollm2-135m-instruct", "-d", "hostile-draft", "-k", "2", "-n", "200", "Once upon a time"]
    r = _run_interrupted(argv, lambda pid: _deriving(own_dirs), env=own_dirs)
    assert_one_line_error(r, "interrupted", code=130, notes=1)  # after "deriving model hostile-draft ..."
    assert "deriving model hostile-draft" in r.err
    _no_partial_draft(own_dirs)


def test_ctrl_c_while_a_draft_is_derived_clirunner(own_dirs, smollm2_path):
    argv = ["run", *FAST, "-t", "smollm2-135m-instruct", "-d", "hostile-draft", "-k", "2", "-n", "200", "Once upon a time"]
    r = _in_process_interrupted(argv, lambda: _deriving(own_dirs), env=own_dirs)
    assert_one_line_error(r, "interrupted", code=130, notes=1)
    _no_partial_draft(own_dirs)


# --- a full disk (emulated with a file-size limit: writes past it fail with EFBIG) -------------------


def file_size_limit(nbytes: int):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


class _SizeLimitHere:
    """RLIMIT_FSIZE on this process for the length of a with-block (the soft limit only, so it can be undone)."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def __enter__(self):
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.nbytes, self.saved[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)
        signal.signal(signal.SIGXFSZ, self.sig)


def test_disk_full_while_a_draft_is_derived(own_dirs, smollm2_path):
    argv = ["run", *FAST, "-t", "smollm2-135m-instruct", "-d", "hostile-draft", "-k", "2", "-n", "4", "Hello"]
    fragments = ("could not quantize", "Q4_0", "has room for the new model")
    r = spec(*argv, env=own_dirs, preexec_fn=file_size_limit(10_000_000))
    assert_one_line_error(r, *fragments, notes=1)
    assert cache_files(own_dirs) == []  # no partial GGUF, no temporary file

    with _SizeLimitHere(10_000_000):
        r = in_process(*argv, env=own_dirs)
    assert_one_line_error(r, *fragments, notes=1)
    assert cache_files(own_dirs) == []
    # The next run, with room, derives it whole.
    r = spec(*argv, env=own_dirs)
    assert r.code == 0, r.err
    assert cache_files(own_dirs) == ["hostile-draft.gguf"]


@BOTH
def test_disk_full_while_bench_writes_its_json(via, tmp_path, smollm2_path):
    prompts, out = tmp_path / "one.txt", tmp_path / "bench.json"
    prompts.write_text("The capital of France is\n")
    earlier = '{"earlier": "bench"}\n'
    out.write_text(earlier)
    argv = ["bench", "-t", str(smollm2_path), "--prompts", str(prompts), "--drafter", "ngram", "--draft-lens", "2", "-n", "4",
            "--repeats", "1", "--no-warmup", "--no-control", *FAST, "--json", str(out)]  # fmt: skip
    if via is spec:
        r = spec(*argv, preexec_fn=file_size_limit(4096))
    else:
        with _SizeLimitHere(4096):
            r = in_process(*argv)
    assert "ngram g=2" in r.out  # the bench ran; only the file could not be written
    assert_one_line_error(r, f"cannot write {out}: File too large", "ulimit -f", notes=1)  # after "bench: 1 prompts ..."
    assert out.read_text() == earlier and sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "one.txt"]
