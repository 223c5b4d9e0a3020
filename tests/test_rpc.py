"""--rpc: the target over llama.cpp's RPC backend, on loopback servers the tests start and stop.

Every server is `python -m spec_cli.rpc_server` (llama.cpp's own server code) on 127.0.0.1,
on a free port, killed in teardown. The tests need llama-cpp-python built with the RPC
backend, as the README's set-up command and scripts/test.sh build it; without it they fail
and say how to reinstall, unless SPEC_NO_RPC=1 says RPC is left out on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spec_cli import rpc
from spec_cli.errors import SpecError
from tests.pins import pinned

ROOT = Path(__file__).resolve().parent.parent
REINSTALL = (
    f'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir {pinned("llama-cpp-python")} (see README, Set-up)'
)
PROMPTS = ["The three primary colours are", "def fibonacci(n):"]
N = 40
STORY = "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper named"  # 400 tokens, no EOS


# --- endpoints and probes: no model, no llama.cpp --------------------------------------


def test_endpoints_are_parsed_and_checked():
    assert rpc.parse_endpoints("127.0.0.1:50052, gpu-box:6000") == ["127.0.0.1:50052", "gpu-box:6000"]
    assert rpc.parse_endpoints(["a:1", "b"]) == ["a:1", f"b:{rpc.DEFAULT_PORT}"]
    assert rpc.parse_endpoints(None) == []
    for bad, why in [
        ("host:0", "port"), ("host:http", "port"), ("[::1]:50052", "IPv4"), ("::1:5", "IPv4"), (":5", "HOST:PORT"),
        ("a:1,a:1", "twice"), (",", "at least one"), ("", "at least one"),
    ]:  # fmt: skip
        with pytest.raises(SpecError, match=why):
            rpc.parse_endpoints(bad)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_names_the_server():
    port = _closed_port()
    with pytest.raises(SpecError, match=rf"RPC server 127\.0\.0\.1:{port}: connection refused"):
        rpc.probe(f"127.0.0.1:{port}")


def test_an_unreachable_server_names_it(monkeypatch):
    # A host that drops packets is a connect that times out; nothing leaves this machine here.
    def timeout(*a, **k):
        raise TimeoutError("timed out")

    monkeypatch.setattr(rpc.socket, "create_connection", timeout)
    with pytest.raises(SpecError, match=r"RPC server 10\.1\.2\.3:50052: unreachable \(no answer to a connect within 3 s\)"):
        rpc.probe("10.1.2.3:50052")


@pytest.fixture
def listener():
    """A TCP port that accepts connections and then does what the test says (nothing by default)."""
    sock = socket.create_server(("127.0.0.1", 0))
    behaviour = {"reply": None}
    conns = []

    def accept():
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            conns.append(c)
            if behaviour["reply"] is not None:
                c.recv(64)
                c.sendall(behaviour["reply"])
                c.close()

    threading.Thread(target=accept, daemon=True).start()
    yield sock.getsockname()[1], behaviour
    sock.close()
    for c in conns:
        c.close()


def test_a_server_that_does_not_answer_the_handshake_is_named(listener):
    port, _ = listener
    t0 = time.monotonic()
    with pytest.raises(
        SpecError, match=rf"RPC server 127\.0\.0\.1:{port}: connected, but no answer to the handshake within 0\.5 s"
    ):
        rpc.probe(f"127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    "reply, why",
    [(b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a llama.cpp rpc-server"), (b"", "not a llama.cpp rpc-server"),
     ((28).to_bytes(8, "little") + bytes([6, 0, 0]) + bytes(25), r"protocol 6\.0\.0, this llama\.cpp speaks 7\.0\.x")],
)  # fmt: skip
def test_a_server_that_is_not_a_matching_rpc_server_is_named(listener, reply, why):
    port, behaviour = listener
    behaviour["reply"] = reply
    with pytest.raises(SpecError, match=rf"RPC server 127\.0\.0\.1:{port}: {why}"):
        rpc.probe(f"127.0.0.1:{port}", timeout=2)


def test_the_lost_server_is_found_by_connecting_again(listener):
    port, _ = listener
    alive, dead = f"127.0.0.1:{port}", f"127.0.0.1:{_closed_port()}"
    msg = rpc.lost_server_message([alive, dead], "/x/ggml-rpc.cpp:566: Remote RPC server crashed or returned malformed response")
    assert msg.startswith(f"RPC server {dead} went away or failed (Remote RPC server crashed") and alive not in msg
    # ggml names the server itself when a connect fails
    msg = rpc.lost_server_message([alive, dead], f"/x/ggml-rpc.cpp:547: Failed to connect to {alive}")
    assert msg.startswith(f"RPC server {alive} went away or failed (Failed to connect to {alive})")


def test_a_pair_in_models_toml_can_name_its_servers(tmp_path, monkeypatch):
    from spec_cli.loading import ModelChoice, rpc_servers

    monkeypatch.setenv("SPEC_HOME", str(tmp_path))
    (tmp_path / "models.toml").write_text(
        '[pairs.split]\ntarget = "a.gguf"\ndraft = "b.gguf"\nrpc = ["10.0.0.2:50052", "10.0.0.3"]\n'
        '[pairs.one]\ntarget = "a.gguf"\nrpc = "10.0.0.2:7000"\n'
    )
    assert rpc_servers(ModelChoice(preset="split"), "default") == ["10.0.0.2:50052", "10.0.0.3:50052"]
    assert rpc_servers(ModelChoice(), "one") == ["10.0.0.2:7000"]  # the default pair of a command
    assert rpc_servers(ModelChoice(preset="split", rpc="127.0.0.1:1"), "default") == ["127.0.0.1:1"]  # --rpc wins
    assert rpc_servers(ModelChoice(target="x.gguf"), "one") == []  # --target alone: no pair, no servers
    (tmp_path / "models.toml").write_text('[pairs.bad]\ntarget = "a.gguf"\nrpc = 50052\n')
    from spec_cli.presets import load_catalog

    with pytest.raises(SpecError, match="rpc = 50052"):
        load_catalog()


def test_the_delay_proxy_adds_the_round_trip_time():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import delay_proxy
    finally:
        sys.path.pop(0)
    echo = socket.create_server(("127.0.0.1", 0))

    def serve_echo():
        c, _ = echo.accept()
        while data := c.recv(100):
            c.sendall(data)
        c.close()

    threading.Thread(target=serve_echo, daemon=True).start()
    port, ready = _closed_port(), threading.Event()
    args = (("127.0.0.1", port), echo.getsockname(), 0.030, ready)
    threading.Thread(target=delay_proxy.serve, args=args, daemon=True).start()
    assert ready.wait(5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        rtts = []
        for i in range(3):
            t0 = time.monotonic()
            c.sendall(b"ping%d" % i)
            assert c.recv(100) == b"ping%d" % i
            rtts.append(time.monotonic() - t0)
    assert 0.030 <= min(rtts) < 0.5, rtts
    echo.close()


# --- real servers on loopback -------------------------------------------------------------


@pytest.fixture(scope="module")
def rpc_build():
    from spec_cli.llama import llama_lib

    if not llama_lib().llama_supports_rpc():
        if os.environ.get("SPEC_NO_RPC") == "1":
            pytest.skip("SPEC_NO_RPC=1: llama-cpp-python is built without RPC on purpose")
        pytest.fail(f"llama-cpp-python is built without the RPC backend; reinstall it with {REINSTALL}", pytrace=False)


class Server:
    """One `python -m spec_cli.rpc_server` on 127.0.0.1 and a free port, up within 60 s."""

    def __init__(self, log_dir: Path):
        self.port = _closed_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log = open(log_dir / f"rpc-server-{self.port}.log", "w")
        cmd = [sys.executable, "-m", "spec_cli.rpc_server", "--port", str(self.port), "--threads", "1"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"rpc server on port {self.port} did not start; see {self.log.name}")
                time.sleep(0.2)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def servers(rpc_build, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("rpc")
    started = []
    try:
        for _ in range(2):
            started.append(Server(log_dir))
        yield started
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def local_target(smollm2_path):
    from spec_cli.llama import Model

    m = Model(smollm2_path, n_ctx=512, label="target")
    yield m
    m.close()


@pytest.fixture(scope="module")
def local_outputs(local_target):
    from spec_cli.decode import Engine, GenerateOptions

    out = {}
    for p in PROMPTS:
        local_target.reset()
        out[p] = Engine(local_target).generate(local_target.tokenize(p), GenerateOptions(max_tokens=N, draft_len=0)).tokens
    local_target.reset()
    return out


def _speculate_like_the_local_target(pair, prompt, local_target, local_outputs) -> None:
    """Greedy speculation on `pair` from fresh caches: some drafts accepted, and the local target's output."""
    from spec_cli.decode import Engine, GenerateOptions
    from spec_cli.drafters import ModelDrafter
    from spec_cli.strategy import FixedStrategy
    from tests.neartie import assert_same_or_near_tie

    toks = pair.target.tokenize(prompt)
    pair.target.reset()
    pair.draft.reset()
    res = Engine(pair.target, FixedStrategy(ModelDrafter(pair.draft), 3)).generate(
        toks, GenerateOptions(max_tokens=N, draft_len=3)
    )
    assert res.stats.accepted > 0
    assert_same_or_near_tie(local_target, toks, local_outputs[prompt], res.tokens)


def test_greedy_over_two_servers_is_the_local_target_and_the_draft_stays_local(
    servers, smollm2_path, smollm2_q2k_path, local_target, local_outputs
):
    from spec_cli.loading import ModelChoice, load_pair

    choice = ModelChoice(
        target=str(smollm2_path), draft=str(smollm2_q2k_path), ctx=512, rpc=",".join(s.endpoint for s in servers)
    )
    pair = load_pair(choice)
    try:
        assert pair.target.n_gpu_layers == -1  # --rpc without --ngl: every layer goes to the servers
        # backend sampling would read every row's id from the servers, a round trip each
        assert not pair.target.backend_sampling
        before = [s.cpu_seconds() for s in servers]
        pair.draft.eval(pair.draft.tokenize(PROMPTS[0] * 20), logits="last")
        assert [s.cpu_seconds() for s in servers] == before, "the draft ran on the RPC servers"
        for p in PROMPTS:
            _speculate_like_the_local_target(pair, p, local_target, local_outputs)
        # both servers computed their share of the target
        assert all(s.cpu_seconds() > b for s, b in zip(servers, before)), [s.cpu_seconds() for s in servers]
    finally:
        pair.close()


def spec(*args, timeout=300, **kw):
    env = {**os.environ, "SPEC_WIDTH": "120"}
    return subprocess.run(
        [sys.executable, "-m", "spec_cli", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, **kw
    )


def assert_one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, p.stderr[-2000:]
    return last


def test_spec_run_over_rpc_prints_the_local_target_text(servers, smollm2_path, local_target, local_outputs):
    p = spec("run", "--rpc", ",".join(s.endpoint for s in servers), "-t", str(smollm2_path), "--no-spec", "--ctx", "512",
             "-n", str(N), "--json", PROMPTS[1])  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    from tests.neartie import assert_same_or_near_tie

    toks = local_target.tokenize(PROMPTS[1])
    assert_same_or_near_tie(local_target, toks, local_outputs[PROMPTS[1]], json.loads(p.stdout)["tokens"])


def test_spec_run_refuses_a_closed_port_in_one_line(rpc_build, smollm2_path):
    port = _closed_port()
    p = spec("run", "--rpc", f"127.0.0.1:{port}", "-t", str(smollm2_path), "--no-spec", "-n", "4", "Hi", timeout=120)
    assert_one_line_error(p, f"RPC server 127.0.0.1:{port}", "connection refused")


def test_spec_chat_names_a_server_that_never_answers(rpc_build, servers, smollm2_path, listener):
    port, _ = listener
    # one good server and one that accepts the connection but never speaks
    p = spec(
        "chat",
        "--rpc",
        f"{servers[0].endpoint},127.0.0.1:{port}",
        "-t",
        str(smollm2_path),
        "--no-spec",
        timeout=120,
        input="/exit\n",
    )
    assert_one_line_error(p, f"RPC server 127.0.0.1:{port}", "no answer to the handshake")


def _kill_a_server_mid_reply(tmp_path, argv, target, cache, victim, stdin=None):
    """`spec ARGV` with `target` on two fresh servers; once the reply streams, SIGKILL server
    `victim`. Checks that spec ends in exit 2 with one line naming that server and no
    traceback; returns (the first bytes streamed, that line, the servers)."""
    victims = [Server(tmp_path), Server(tmp_path)]
    env = {**os.environ, "SPEC_CACHE": str(cache), "SPEC_HOME": str(tmp_path / "home")}
    cmd = [
        sys.executable,
        "-m",
        "spec_cli",
        argv[0],
        "--rpc",
        ",".join(s.endpoint for s in victims),
        "-t",
        str(target),
        *argv[1:],
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=ROOT)  # fmt: skip
    try:
        if stdin:
            proc.stdin.write(stdin.encode())
            proc.stdin.flush()
        first = proc.stdout.read(40)  # the reply is streaming: generation is under way
        assert first and proc.poll() is None, proc.stderr.read()[-2000:]
        victims[victim].proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for s in victims:
            s.stop()
    err = err.decode()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "ggml_print_backtrace" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: RPC server {victims[victim].endpoint} went away"), err[-2000:]
    return first, last, victims


def test_a_server_killed_mid_generation_ends_the_run_in_one_line(rpc_build, smollm2_path, smollm2_q2k_path, tmp_path):
    """llama.cpp aborts the process on a lost RPC connection; spec's abort hook makes that one line and exit 2."""
    cache = tmp_path / "cache"
    first, last, victims = _kill_a_server_mid_reply(
        tmp_path, ["run", "-d", str(smollm2_q2k_path), "--ctx", "1024", "-n", "400", STORY], smollm2_path, cache, victim=1
    )
    assert victims[0].endpoint not in last
    # The cost curve was measured and cached before the run; the cache is whole, nothing half-written.
    assert json.loads((cache / "calibration.json").read_text())
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]


def test_spec_bench_shows_the_cost_curve_over_rpc(servers, smollm2_path, smollm2_q2k_path):
    p = spec("bench", "--rpc", ",".join(s.endpoint for s in servers), "-t", str(smollm2_path), "-d", str(smollm2_q2k_path),
             "--drafter", "model", "--draft-lens", "2", "--limit", "1", "-r", "1", "-n", "8", "--no-warmup", "--no-control")  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "cost curve, one target llama_decode of k tokens (ms): 1:" in p.stdout


@pytest.mark.slow  # loopback servers, no model: conftest's rule does not see it
def test_the_rpc_server_launcher_reports_a_port_in_use(rpc_build, servers):
    p = subprocess.run([sys.executable, "-m", "spec_cli.rpc_server", "--port", str(servers[0].port)], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)  # fmt: skip
    assert p.returncode == 2 and f"could not serve on 127.0.0.1:{servers[0].port}" in p.stderr, (p.returncode, p.stderr)


def test_the_draft_over_the_servers_with_the_target_local(servers, smollm2_path, smollm2_q2k_path, local_target, local_outputs):
    """--rpc-draft: the draft's layers go to the servers too; greedy output is still the target's."""
    from spec_cli.loading import ModelChoice, load_pair

    eps = ",".join(s.endpoint for s in servers)
    choice = ModelChoice(target=str(smollm2_path), draft=str(smollm2_q2k_path), ctx=512, rpc=eps, rpc_draft=True)
    pair = load_pair(choice)
    try:
        before = [s.cpu_seconds() for s in servers]
        pair.draft.eval(pair.draft.tokenize(PROMPTS[0] * 20), logits="last")
        assert sum(s.cpu_seconds() for s in servers) > sum(before), "the draft did not run on the RPC servers"
        _speculate_like_the_local_target(pair, PROMPTS[1], local_target, local_outputs)
    finally:
        pair.close()


def test_rpc_draft_without_servers_is_refused_in_one_line(smollm2_path):
    p = spec("run", "--rpc-draft", "-t", str(smollm2_path), "-n", "4", "Hi", timeout=120)
    assert_one_line_error(p, "--rpc-draft needs RPC servers")


def test_a_server_killed_during_a_chat_reply_saves_the_conversation(rpc_build, smollm2_path, tmp_path):
    """The chat ends in one line naming the server, and what was said (the open message and the
    reply so far) is in a file that `spec chat --load` reads back."""
    cache = tmp_path / "cache"
    ask = "Write a long story about a lighthouse keeper and her daughter."
    first, last, _ = _kill_a_server_mid_reply(
        tmp_path, ["chat", "--no-spec", "--ctx", "1024", "-n", "400"], smollm2_path, cache, victim=0, stdin=ask + "\n"
    )
    saved = list((cache / "chats").glob("lost-*.json"))
    assert len(saved) == 1 and f"spec chat --load {saved[0]}" in last, (last, saved)
    data = json.loads(saved[0].read_text())
    assert data["messages"][0] == {"role": "user", "content": ask}
    reply = data["messages"][1]
    assert reply["role"] == "assistant" and reply["content"].startswith(first.decode("utf-8", "ignore")), (reply, first)
    assert data["models"]["target"] == smollm2_path.name
    # and it loads
    p = spec("chat", "-t", str(smollm2_path), "--no-spec", "--load", str(saved[0]), input="/exit\n", timeout=120)
    assert p.returncode == 0 and "loaded 2 messages" in p.stderr, p.stderr[-2000:]


def test_the_chat_rescue_keeps_the_open_message_and_never_overwrites(tmp_path, monkeypatch):
    """What a lost server leaves behind, without a server: Repl._rescue on a conversation in progress."""
    from types import SimpleNamespace

    from spec_cli.cli.chat import Repl
    from spec_cli.conversation import Conversation

    monkeypatch.setenv("SPEC_CACHE", str(tmp_path))
    named = SimpleNamespace(path=Path("t.gguf"))
    session = SimpleNamespace(conversation=Conversation(system="Be brief.", messages=[]), target=named, draft=None)
    repl = Repl(session, "t.gguf")
    assert repl._rescue() is None  # nothing said yet: no file
    session.conversation.messages += [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    repl._open = ("And then?", ["Once", " upon"])
    said = [repl._rescue(), repl._rescue()]
    files = [Path(s.split("--load ", 1)[1].split("`")[0]) for s in said]
    assert files[0] != files[1] and set(files) == set((tmp_path / "chats").glob("lost-*.json")), (files, said)
    conv = Conversation.load(files[0])
    assert conv.system == "Be brief." and conv.saved_with == {"target": "t.gguf", "draft": None}
    assert conv.messages[2:] == [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Once upon"}]
    assert len(session.conversation.messages) == 2  # the live conversation is untouched
