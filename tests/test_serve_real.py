"""`spec serve` as a process on loopback, with the real chat pair (SmolLM2-135M-Instruct Q4_1,
drafted by its Q2_K), driven by the official `openai` client.

One server serves the whole module (loading and auto's cost curve once); the last test
stops it with SIGTERM in the middle of a stream. Each model runs on one thread, as in
tests/test_chat_repl.py: on a shared 2-core machine that is much faster than two contending ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
import httpx2  # noqa: E402  (openai's own HTTP client)

from tests.neartie import assert_same_or_near_tie  # noqa: E402

KEY = "sk-serve-test-0f3a"
CTX = 1024
PROMPT = "The three primary colors are"
QUESTION = "What is the capital of France?"


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def post(self, path: str, content: bytes, key: str | None = KEY, **headers) -> httpx2.Response:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        headers.setdefault("Content-Type", "application/json")
        return httpx2.post(self.url + path, content=content, headers=headers, timeout=120)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


@pytest.fixture(scope="module")
def server(smollm2_path, smollm2_q2k_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = dict(os.environ, SPEC_API_KEY=KEY)
    argv = [sys.executable, "-m", "spec_cli", "serve", "--preset", "chat", "--port", "0", "--threads", "1", "--ctx", str(CTX)]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 300
    url = None
    while url is None:
        text = log.read_text()
        found = re.search(r"listening on (http://[0-9.]+:\d+)/v1", text)
        if found:
            url = found.group(1)
        elif proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"spec serve did not start:\n{text}")
        else:
            time.sleep(0.2)
    while True:  # the socket is bound before the line is printed; wait for uvicorn to answer
        try:
            if httpx2.get(url + "/health", timeout=5).status_code == 200:
                break
        except httpx2.TransportError:
            time.sleep(0.1)
    yield Server(proc, url, log)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert KEY not in log.read_text()


def spec_run_no_spec(prompt: str, n: int) -> dict:
    argv = [sys.executable, "-m", "spec_cli", "run", "--preset", "chat", "--no-spec", "--threads", "1", "--ctx", str(CTX),
            "-n", str(n), "--json", prompt]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_same_greedy(smollm2_path, prompt: str, reference: dict, text: str) -> None:
    """The server's greedy text equals the target alone's, or differs first at a near-tie."""
    if text == reference["text"]:
        return
    from spec_cli.llama import Model

    with Model(smollm2_path, n_ctx=CTX, n_threads=1, label="target") as target:
        got = target.tokenize(reference["prompt"] + text)[len(target.tokenize(reference["prompt"])) :]
        assert_same_or_near_tie(target, target.tokenize(reference["prompt"]), reference["tokens"], got)


def test_greedy_completion_equals_spec_run_no_spec_streamed_or_not(server, smollm2_path):
    reference = spec_run_no_spec(PROMPT, 24)
    client = server.client()
    whole = client.completions.create(model="chat", prompt=PROMPT, max_tokens=24, temperature=0)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 24
    assert_same_greedy(smollm2_path, PROMPT, reference, whole.choices[0].text)
    timings = whole.model_extra["timings"]
    assert timings["predicted_n"] == 24 and 0 <= timings["draft_n_accepted"] <= timings["draft_n"]
    stream = client.completions.create(model="chat", prompt=PROMPT, max_tokens=24, temperature=0, stream=True)
    streamed = "".join(c.choices[0].text for c in stream)
    assert streamed == whole.choices[0].text  # the same request again: the same greedy tokens
    # The draft model at a fixed length, through the extension field: still the target's output.
    drafted = client.completions.create(model="chat", prompt=PROMPT, max_tokens=24, temperature=0,
                                        extra_body={"spec": {"drafter": "model", "draft_len": 3}})  # fmt: skip
    assert drafted.model_extra["timings"]["draft_n"] > 0
    assert_same_greedy(smollm2_path, PROMPT, reference, drafted.choices[0].text)


def test_chat_uses_the_template_as_spec_chat_does_and_reuses_both_caches(server):
    done = subprocess.run(
        [sys.executable, "-m", "spec_cli", "chat", "--no-spec", "--threads", "1", "--ctx", str(CTX), "-n", "24"],
        input=QUESTION + "\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    client = server.client()
    settings = {"spec": {"drafter": "model", "draft_len": 3}}  # the draft model reads every prompt
    messages = [{"role": "user", "content": QUESTION}]
    first = client.chat.completions.create(model="chat", messages=messages, max_tokens=24, temperature=0, extra_body=settings)
    reply = first.choices[0].message.content
    # spec chat's reply (the target alone) and the server's (drafted): the same greedy text
    assert reply.strip() == done.stdout.strip()
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And of Italy?"}]
    chunks = list(client.chat.completions.create(model="chat", messages=messages, max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}, extra_body=settings))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    timings, usage = finish[0].model_extra["timings"], chunks[-1].usage
    # Only the new turn's tokens were evaluated, in the target and in the draft model.
    new = usage.prompt_tokens - first.usage.prompt_tokens - first.usage.completion_tokens
    assert 0 < new < 30
    assert timings["prompt_n"] <= new + 1
    assert timings["draft_prompt_n"] is not None and timings["draft_prompt_n"] <= new + 1
    assert usage.prompt_tokens_details.cached_tokens >= usage.prompt_tokens - new - 1


def test_eight_concurrent_clients_each_get_their_own_answer(server, smollm2_path):
    prompts = [f"{subject} is" for subject in ("Water", "The sun", "A cat", "Python", "Music", "The moon", "Bread", "Winter")]
    client = server.client()
    alone = {p: client.completions.create(model="chat", prompt=p, max_tokens=10, temperature=0).choices[0].text for p in prompts}
    together, errors = {}, []

    def ask(p):
        try:
            together[p] = server.client().completions.create(model="chat", prompt=p, max_tokens=10, temperature=0).choices[0].text
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert len(set(alone.values())) > 1  # the prompts do get different answers
    for p in prompts:
        if together[p] != alone[p]:  # another order of requests left another cache prefix: only a near-tie may show
            reference = spec_run_no_spec(p, 10)
            assert_same_greedy(smollm2_path, p, reference, together[p])


def test_a_client_that_drops_mid_stream_does_not_hold_the_pair(server):
    client = server.client()
    t0 = time.perf_counter()
    client.completions.create(model="chat", prompt=PROMPT, max_tokens=4, temperature=0)
    baseline = time.perf_counter() - t0
    story = [{"role": "user", "content": "Tell me a long story about a dragon, in many chapters."}]
    stream = client.chat.completions.create(model="chat", messages=story, max_tokens=900, stream=True)
    for i, part in enumerate(stream):
        assert not part.choices[0].finish_reason  # still writing when the client goes
        if i == 3:
            break
    stream.close()  # the connection goes
    t0 = time.perf_counter()
    client.completions.create(model="chat", prompt=PROMPT, max_tokens=4, temperature=0)
    waited = time.perf_counter() - t0
    # A round of this pair takes tens of milliseconds; the 900-token story would take many seconds.
    assert waited < baseline + 1.0, (waited, baseline)
    metrics = httpx2.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert re.search(r"^spec_generations_interrupted_total [1-9]", metrics, re.MULTILINE)


BAD = [
    (b'{"model": "chat", "messages": [', 400, "not valid JSON"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "caf\xe9"}]}', 400, "not UTF-8"),
    (json.dumps({"model": "chat", "messages": "hi"}).encode(), 422, "messages"),
    (json.dumps({"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(), 422, "temperature"),
    (json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "gpt-4o"),
    (json.dumps({"model": "chat", "messages": []}).encode(), 422, "at least one"),
    (json.dumps({"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}).encode(), 400,
     f"max_tokens is 1000000000 but the context holds {CTX} tokens"),
    (json.dumps({"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 2}).encode(), 400, "n=2"),
    (json.dumps({"model": "chat", "messages": [{"role": "user", "content": "word " * 1500}]}).encode(), 400,
     f"but the context holds {CTX}"),
    (b"{" + b" " * (3 * 1024 * 1024) + b"}", 413, "at most"),
]  # fmt: skip


@pytest.mark.parametrize("body,status,fragment", BAD, ids=[f"{s}-{f[:20]}" for _, s, f in BAD])
def test_bad_requests_get_their_status_and_the_server_goes_on(server, body, status, fragment):
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]
    ok = server.post(
        "/v1/chat/completions",
        json.dumps({"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).encode(),
    )
    assert ok.status_code == 200


def test_the_api_key_is_required(server):
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).encode()
    assert server.post("/v1/chat/completions", body, key=None).status_code == 401
    assert server.post("/v1/chat/completions", body, key="sk-wrong").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(key="sk-wrong").models.list()
    assert httpx2.get(server.url + "/health").status_code == 200


def test_load_run_200_requests_from_8_clients(server):
    """No request fails, and the server's memory stays within 64 MiB of where it was after warming up."""
    client = server.client()
    for _ in range(8):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    before = server.rss_kib()
    failures, count = [], [0]
    lock = threading.Lock()

    def worker(w):
        c = server.client()
        for i in range(25):
            try:
                r = c.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": f"Count to {w + i}."}], max_tokens=4
                )
                assert r.choices[0].finish_reason in ("length", "stop")
                with lock:
                    count[0] += 1
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    after = server.rss_kib()
    assert not failures, failures[:3]
    assert count[0] == 200
    assert after - before < 64 * 1024, f"RSS grew from {before} to {after} KiB"


def test_sigterm_ends_the_open_stream_cleanly_and_exits_0(server):
    """Last in the module: it stops the server."""
    story = [{"role": "user", "content": "Tell me a long story about a dragon, in many chapters."}]
    body = json.dumps({"model": "chat", "messages": story, "max_tokens": 900, "stream": True})
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    lines = []
    with httpx2.stream("POST", server.url + "/v1/chat/completions", content=body, headers=headers, timeout=120) as r:
        for line in r.iter_lines():
            lines.append(line)
            if len(lines) == 6:
                server.proc.send_signal(signal.SIGTERM)
    events = [line.removeprefix("data: ") for line in lines if line]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "stop" and last["timings"]["predicted_n"] < 900
    assert server.proc.wait(60) == 0
    assert "spec serve: stopped" in server.log.read_text()
