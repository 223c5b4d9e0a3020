"""`spec serve`'s HTTP layer on a scripted fake engine: no model, no llama.cpp.

The fake speaks the adapter's interface (spec_cli/serve/engine.py's ServedPair): it "generates"
the words of a script, one round each, reading should_stop between rounds as the real engine
does. Most tests go through Starlette's in-process client; those about connections (a client
that leaves, shutdown, the official `openai` client) run uvicorn on a loopback port in a thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from starlette.testclient import TestClient  # noqa: E402

from spec_cli.serve.app import create_app, listen  # noqa: E402
from spec_cli.serve.broker import Broker, QueueFull  # noqa: E402
from spec_cli.serve.schemas import ApiError, Outcome, parse_body, parse_chat, parse_completion  # noqa: E402

KEY = "sk-test-5f1e9c"


class FakePair:
    """Says the words of `script`, one per round; a prompt is as many tokens as it has words."""

    model_id = "fake"
    aliases = {"fake", "fake.gguf"}

    def __init__(self, script=("Hello", " there", ",", " friend", "."), n_ctx=64, delay=0.0):
        self.script = list(script)
        self.n_ctx = n_ctx
        self.delay = delay
        self.requests = []
        self.stopped = []  # per request: whether should_stop ended it
        self.gate: threading.Event | None = None  # set: generations wait for it before their first word
        self.started = threading.Event()

    def describe(self):
        return {"target": "fake.gguf", "draft": None, "drafter": "auto", "draft_len": "auto", "n_ctx": self.n_ctx}

    def check(self, req):
        if req.spec.drafter not in (None, "auto", "model", "ngram", "tree"):
            raise ApiError(422, f"spec.drafter: unknown drafter {req.spec.drafter!r}", param="spec.drafter")

    def generate(self, req, post, should_stop):
        self.requests.append(req)
        text = req.prompt if req.kind == "completion" else " ".join(m["content"] for m in req.messages)
        n = len(text.split())
        if n >= self.n_ctx:
            raise ApiError(400, f"the prompt is {n} tokens but the context holds {self.n_ctx}", code="context_length_exceeded")
        post("start", n)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        out, interrupted = [], False
        limit = req.max_tokens or len(self.script)
        for word in self.script[:limit]:
            if should_stop():
                interrupted = True
                break
            if self.delay:
                time.sleep(self.delay)
            post("text", word)
            out.append(word)
        self.stopped.append(interrupted)
        finish = "length" if req.max_tokens is not None and req.max_tokens < len(self.script) else "stop"
        return Outcome(
            text="".join(out), finish_reason=finish, prompt_tokens=n, completion_tokens=len(out), prompt_evaluated=n,
            draft_prompt_evaluated=n, drafted=2 * len(out), accepted=len(out), drafter="auto", t_prefill=0.001,
            t_generate=0.01, t_target=0.005, t_draft=0.002, interrupted=interrupted,
        )  # fmt: skip


def chat_body(**more):
    return {"model": "fake", "messages": [{"role": "user", "content": "Say hello"}], **more}


@pytest.fixture
def pair():
    return FakePair()


@pytest.fixture
def client(pair):
    with TestClient(create_app(pair)) as c:
        yield c


def assert_error(r, status, fragment=""):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert fragment.lower() in err["message"].lower(), err["message"]
    return err


# --- answers -------------------------------------------------------------------------


def test_chat_completion_has_openai_shape_and_speculation_counts(client, pair):
    r = client.post("/v1/chat/completions", json=chat_body(max_tokens=3))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "fake"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello there,"}
    assert choice["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 2 and body["usage"]["completion_tokens"] == 3 and body["usage"]["total_tokens"] == 5
    assert body["timings"]["draft_n"] == 6 and body["timings"]["draft_n_accepted"] == 3  # llama-server's names
    assert pair.requests[0].messages == [{"role": "user", "content": "Say hello"}]


def test_completion_stops_on_its_own_with_finish_reason_stop(client):
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "Once upon a time"})
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Hello there, friend." and body["choices"][0]["finish_reason"] == "stop"


def test_request_fields_reach_the_engine(client, pair):
    body = chat_body(
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        max_completion_tokens=2, temperature=0.7, top_p=0.9, seed=5, stop=["\n", "END"], spec={"drafter": "ngram", "draft_len": 3},
    )  # fmt: skip
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    req = pair.requests[0]
    assert req.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (req.max_tokens, req.temperature, req.top_p, req.seed, req.stop) == (2, 0.7, 0.9, 5, ("\n", "END"))
    assert (req.spec.drafter, req.spec.draft_len) == ("ngram", 3)
    client.post("/v1/completions", json={"model": "fake", "prompt": "x", "stop": "END", "spec": {"draft_len": "auto"}})
    assert pair.requests[1].stop == ("END",) and pair.requests[1].spec.draft_len is None


def sse_events(text: str) -> list:
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_chat_stream_is_server_sent_events_ending_in_done(client):
    with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True})) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello there, friend."
    last, usage = chunks[-2], chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["timings"]["draft_n_accepted"] == 5
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in chunks[:-1])


def test_completion_stream_without_usage(client):
    with client.stream("POST", "/v1/completions", json={"model": "fake", "prompt": "a b", "max_tokens": 2, "stream": True}) as r:
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Hello there"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events[:-1])


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["fake"]
    assert models["data"][0]["spec"]["target"] == "fake.gguf"
    assert client.get("/v1/models/fake.gguf").json()["id"] == "fake"
    assert_error(client.get("/v1/models/gpt-4"), 404, "gpt-4")
    assert client.get("/health").json()["status"] == "ok"


# --- bad requests --------------------------------------------------------------------------

BAD = [
    (b'{"model": "fake", "messages": [', 400, "not valid JSON"),
    (b'{"model": "fake", "messages": [{"role": "user", "content": "caf\xe9"}]}', 400, "not UTF-8 text (byte 0xe9 at offset"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps(chat_body(messages=[])).encode(), 422, "at least one message"),
    (json.dumps(chat_body(messages="hi")).encode(), 422, "messages: expected a list"),
    (json.dumps(chat_body(messages=[{"role": "robot", "content": "x"}])).encode(), 422, "messages[0].role"),
    (json.dumps(chat_body(messages=[{"role": "user", "content": 5}])).encode(), 422, "messages[0].content"),
    (json.dumps(chat_body(temperature="hot")).encode(), 422, "temperature: expected a number"),
    (json.dumps(chat_body(temperature=3)).encode(), 422, "temperature: must be between"),
    (json.dumps(chat_body(max_tokens=0)).encode(), 422, "max_tokens: must be at least 1"),
    (json.dumps(chat_body(max_tokens="ten")).encode(), 422, "max_tokens: expected a whole number"),
    (json.dumps(chat_body(stream="yes")).encode(), 422, "stream"),
    (json.dumps(chat_body(stop=["a", ""])).encode(), 422, "stop"),
    (json.dumps(chat_body(stop=["a", "b", "c", "d", "e"])).encode(), 422, "at most 4"),
    (json.dumps(chat_body(n=2)).encode(), 400, "cannot honour n=2"),
    (json.dumps(chat_body(logprobs=True)).encode(), 400, "logprobs"),
    (json.dumps(chat_body(tools=[{"type": "function", "function": {"name": "f"}}])).encode(), 400, "tools"),
    (json.dumps(chat_body(frequency_penalty=0.5)).encode(), 400, "frequency_penalty"),
    (json.dumps(chat_body(response_format={"type": "json_object"})).encode(), 400, "response_format"),
    (json.dumps(chat_body(temprature=0.5)).encode(), 400, "temprature: unrecognized"),
    (json.dumps(chat_body(messages=[{"role": "tool", "content": "42"}])).encode(), 400, "no tool calling"),
    (json.dumps(chat_body(messages=[{"role": "user", "content": [{"type": "image_url"}]}])).encode(), 400, "text parts only"),
    (json.dumps(chat_body(messages=[{"role": "user", "content": "a\u0000b"}])).encode(), 400, "NUL"),
    (b'{"model": "fake", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, "lone surrogate"),
    (json.dumps(chat_body(spec={"drafter": "magic"})).encode(), 422, "unknown drafter"),
    (json.dumps(chat_body(spec={"draft_len": 100})).encode(), 422, "spec.draft_len"),
    (json.dumps(chat_body(spec={"gamma": 4})).encode(), 400, "spec.gamma"),
    (json.dumps(chat_body(spec=4)).encode(), 422, "expected an object"),
    (json.dumps(chat_body(model="gpt-4o")).encode(), 404, "'gpt-4o' does not exist"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 422, "model"),
    (
        json.dumps(chat_body(messages=[{"role": "user", "content": "word " * 80}])).encode(),
        400,
        "80 tokens but the context holds 64",
    ),
]


@pytest.mark.parametrize("body,status,fragment", BAD, ids=[f"{s}-{f[:24]}" for _, s, f in BAD])
def test_bad_chat_request_gets_its_status_and_error_object_and_the_server_goes_on(client, body, status, fragment):
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert_error(r, status, fragment)
    assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_bad_completion_requests(client):
    assert_error(client.post("/v1/completions", json={"model": "fake", "prompt": ""}), 422, "prompt")
    assert_error(client.post("/v1/completions", json={"model": "fake", "prompt": ["a", "b"]}), 400, "one prompt")
    assert_error(client.post("/v1/completions", json={"model": "fake", "prompt": "x", "echo": True}), 400, "echo")
    assert client.post("/v1/completions", json={"model": "fake", "prompt": ["x"]}).status_code == 200


def test_oversized_body_is_413_by_length_and_by_stream(pair):
    with TestClient(create_app(pair, max_body=2048)) as c:
        big = json.dumps(chat_body(messages=[{"role": "user", "content": "x" * 4096}])).encode()
        assert_error(c.post("/v1/chat/completions", content=big), 413, "at most 2048 bytes")

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(8):
                yield b"x" * 1024

        assert_error(c.post("/v1/chat/completions", content=chunks()), 413, "at most 2048 bytes")
        assert c.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_unknown_path_and_method_are_error_objects(client):
    assert_error(client.get("/v1/engines"), 404, "no such endpoint")
    assert_error(client.get("/v1/chat/completions"), 405, "GET is not allowed")


# --- the API key ---------------------------------------------------------------------------


def test_api_key_is_required_everywhere_but_health_and_never_echoed(pair, caplog):
    caplog.set_level("DEBUG")
    with TestClient(create_app(pair, api_key=KEY)) as c:
        for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions"), ("GET", "/nowhere")]:
            r = c.request(method, path, json=chat_body())
            assert_error(r, 401, "api key")
            assert r.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer sk-test-5f1e9d"})
        assert_error(wrong, 401)
        assert "sk-test" not in wrong.text
        assert_error(c.get("/v1/models", headers={"Authorization": KEY}), 401)  # not as a bearer token
        assert c.get("/health").status_code == 200
        ok = c.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        assert c.get("/v1/models", headers={"authorization": f"bearer {KEY}"}).status_code == 200
        assert len(pair.requests) == 1  # refused requests never reached the engine
    assert KEY not in caplog.text


# --- metrics -------------------------------------------------------------------------------

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.]+(e[+-]?[0-9]+)?$')


def test_metrics_are_prometheus_text_with_the_counts(client):
    client.post("/v1/chat/completions", json=chat_body(max_tokens=3))
    client.post("/v1/completions", json={"model": "fake", "prompt": "a b c"})
    client.post("/v1/chat/completions", json=chat_body(n=3))
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = r.text.splitlines()
    samples = {}
    for line in lines:
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ ", line), line
            continue
        assert SAMPLE.match(line), line
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples['spec_requests_total{endpoint="/v1/chat/completions",status="200"}'] == 1
    assert samples['spec_requests_total{endpoint="/v1/chat/completions",status="400"}'] == 1
    assert samples['spec_requests_total{endpoint="/v1/completions",status="200"}'] == 1
    assert samples["spec_completion_tokens_total"] == 3 + 5  # max_tokens 3, then the whole script of 5
    assert samples["spec_prompt_tokens_total"] == 2 + 3
    assert samples["spec_draft_tokens_total"] == 2 * 8 and samples["spec_draft_tokens_accepted_total"] == 8
    assert samples["spec_queue_depth"] == 0 and samples["spec_requests_running"] == 0
    assert samples["spec_target_seconds_total"] == pytest.approx(0.01)
    assert "# TYPE spec_queue_depth gauge" in lines and "# TYPE spec_requests_total counter" in lines


# --- the queue -----------------------------------------------------------------------------


def test_broker_bounds_its_queue_and_answers_in_arrival_order():
    order, gate = [], threading.Event()

    def work(request, post, should_stop):
        gate.wait(5)
        order.append(request)
        return request

    async def main():
        broker = Broker(work, max_waiting=2)
        broker.start()
        jobs = [broker.submit("first")]
        while broker.running == 0:  # the first one has left the queue
            await asyncio.sleep(0.005)
        jobs += [broker.submit("second"), broker.submit("third")]
        with pytest.raises(QueueFull) as full:
            broker.submit("fourth")
        assert full.value.retry_after >= 1
        assert broker.waiting == 2
        gate.set()
        results = [await j.events.get() for j in jobs]
        broker.close(wait=5)
        return results

    results = asyncio.run(main())
    assert results == [("done", "first"), ("done", "second"), ("done", "third")]
    assert order == ["first", "second", "third"]


def test_broker_abandoned_jobs_stop_within_a_round_or_never_start():
    rounds, seen = [], []

    def work(request, post, should_stop):
        seen.append(request)
        for i in range(1000):
            if should_stop():
                break
            rounds.append(i)
            time.sleep(0.002)
        return request

    async def main():
        broker = Broker(work, max_waiting=4)
        broker.start()
        a = broker.submit("a")
        while not rounds:
            await asyncio.sleep(0.002)
        b = broker.submit("b")
        c = broker.submit("c")
        broker.abandon(b)  # waiting: leaves the queue now
        assert broker.waiting == 1
        broker.abandon(a)  # running: stops at its next round
        t0 = time.perf_counter()
        assert await a.events.get() == ("done", "a")
        stopped = time.perf_counter() - t0
        while len(seen) < 2:
            await asyncio.sleep(0.002)
        broker.abandon(c)
        assert await c.events.get() == ("done", "c")
        broker.close(wait=5)
        return stopped

    stopped = asyncio.run(main())
    assert seen == ["a", "c"]  # b never ran
    assert stopped < 0.5
    assert len(rounds) < 900


def run_threads(fn, n):
    results = [None] * n
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fn(i))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results


def test_past_the_queue_a_request_gets_503_with_retry_after(pair):
    pair.gate = threading.Event()
    with TestClient(create_app(pair, max_waiting=1)) as c:
        first = threading.Thread(target=lambda: c.post("/v1/chat/completions", json=chat_body()))
        first.start()
        assert pair.started.wait(5)  # running, so the queue is empty
        second = threading.Thread(target=lambda: c.post("/v1/chat/completions", json=chat_body()))
        second.start()
        deadline = time.time() + 5
        while c.app.state.broker.waiting < 1 and time.time() < deadline:
            time.sleep(0.01)
        r = c.post("/v1/chat/completions", json=chat_body())
        err = assert_error(r, 503, "busy")
        assert err["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        assert "spec_queue_depth 1" in c.get("/metrics").text
        pair.gate.set()
        first.join(10)
        second.join(10)
        assert c.post("/v1/chat/completions", json=chat_body()).status_code == 200


# --- a live server on loopback: connections, the openai client, shutdown --------------------


@pytest.fixture
def live(pair):
    """uvicorn in a thread on a free loopback port; yields (base_url, app)."""
    import uvicorn

    app = create_app(pair, api_key=KEY)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_the_openai_client_talks_to_it(live):
    openai = pytest.importorskip("openai")
    url, _ = live
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.choices[0].message.content == "Hello there" and reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 2
    assert reply.model_extra["timings"]["draft_n"] == 4
    stream = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there, friend."
    assert chunks[-1].usage.total_tokens == 1 + 5
    text = client.completions.create(model="fake", prompt="a b c", max_tokens=1, extra_body={"spec": {"draft_len": 2}})
    assert text.choices[0].text == "Hello"
    assert [m.id for m in client.models.list()] == ["fake"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], n=2)
    assert "n=2" in bad.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


def raw_request(url: str, body: dict) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
    )  # fmt: skip
    return s


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_frees_the_pair_within_a_round(live, pair, stream):
    url, app = live
    pair.script = ["word "] * 2000
    pair.delay = 0.005
    s = raw_request(url, chat_body(stream=stream))
    assert pair.started.wait(5)
    if stream:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    time.sleep(0.05)
    s.close()
    t0 = time.perf_counter()
    while not pair.stopped and time.perf_counter() - t0 < 5:
        time.sleep(0.005)
    assert pair.stopped == [True]  # should_stop ended it
    assert time.perf_counter() - t0 < 0.5
    pair.script, pair.delay = ["ok"], 0.0
    import httpx2

    r = httpx2.post(url + "/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert r.json()["choices"][0]["message"]["content"] == "ok"
    assert app.state.metrics.totals["spec_generations_interrupted_total"] == 1


def test_shutdown_ends_open_streams_cleanly_and_refuses_the_queue(live, pair):
    url, app = live
    pair.script = ["word "] * 2000
    pair.delay = 0.005
    streaming = raw_request(url, chat_body(stream=True))
    assert pair.started.wait(5)
    waiting = raw_request(url, chat_body())
    deadline = time.time() + 5
    while app.state.broker.waiting < 1 and time.time() < deadline:
        time.sleep(0.01)
    app.state.broker.close()  # what SIGTERM and Ctrl-C do first (app.serve's handle_exit)
    streaming.settimeout(5)
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of a chunked body
        more = streaming.recv(65536)
        if not more:
            break
        data += more
    assert b"data: [DONE]" in data and b'"finish_reason": "stop"' in data
    waiting.settimeout(5)
    answer = b""
    while b"shutting down" not in answer:
        more = waiting.recv(65536)
        if not more:
            break
        answer += more
    assert answer.startswith(b"HTTP/1.1 503") and b"shutting down" in answer
    assert pair.stopped == [True]


# --- schemas alone ---------------------------------------------------------------------------


def test_parse_body_names_the_bad_byte():
    with pytest.raises(ApiError) as e:
        parse_body(b'{"a": "\xff"}')
    assert e.value.status == 400 and "0xff at offset 7" in e.value.message


def test_parse_accepts_what_openai_clients_send_by_default():
    req = parse_chat(chat_body(n=1, logprobs=False, user="u1", stream=False, presence_penalty=0, tool_choice="none", tools=[],
                               max_tokens=None, seed=None, stream_options=None, metadata={"a": "b"}))  # fmt: skip
    assert req.max_tokens is None and req.temperature is None and req.spec.draft_len == "default"
    req = parse_completion({"model": "m", "prompt": "p", "max_tokens": 5.0, "best_of": 1})
    assert req.max_tokens == 5
