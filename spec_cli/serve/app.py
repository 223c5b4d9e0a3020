"""The HTTP layer: a Starlette app served by uvicorn.

Routes take a request apart (schemas.py), queue it for the engine thread (broker.py) and
turn its events into OpenAI's JSON or server-sent events. They reach the model only through
the adapter's small interface (engine.py's ServedPair, or a fake in the tests), so nothing
here waits on llama.cpp.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import metrics as metrics_mod
from .broker import Broker, Job, QueueFull, ShuttingDown
from .schemas import ApiError, GenRequest, chunk, new_id, now, parse_body, parse_chat, parse_completion, response_object, sse

log = logging.getLogger("spec.serve")

MAX_BODY = 2 * 1024 * 1024  # bytes; far more text than any context spec loads holds
MAX_WAITING = 32  # requests waiting behind the running one before 503
OPEN = ("/health",)  # the only path served without the API key


def create_app(pair, *, api_key: str | None = None, max_body: int = MAX_BODY, max_waiting: int = MAX_WAITING) -> Starlette:
    """`pair`: the adapter (model_id, aliases, n_ctx, describe(), check(req), generate(req, post, should_stop))."""
    metrics = metrics_mod.Metrics()

    def work(req: GenRequest, post, should_stop):
        out = pair.generate(req, post, should_stop)
        metrics.add_outcome(out)
        return out

    broker = Broker(work, max_waiting=max_waiting)

    async def health(request: Request) -> Response:
        if broker.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "model": pair.model_id, "queue_depth": broker.waiting, "running": broker.running})

    def model_object() -> dict:
        return {"id": pair.model_id, "object": "model", "created": created, "owned_by": "spec", "spec": pair.describe()}

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_object()]})

    async def get_model(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in pair.aliases:
            raise _unknown_model(name, pair.model_id)
        return JSONResponse(model_object())

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(broker.waiting, broker.running), media_type=metrics_mod.CONTENT_TYPE)

    async def chat_completions(request: Request) -> Response:
        return await generate(request, parse_chat)

    async def completions(request: Request) -> Response:
        return await generate(request, parse_completion)

    async def generate(request: Request, parse: Callable[[dict], GenRequest]) -> Response:
        req = parse(parse_body(await read_body(request, max_body)))
        if req.model not in pair.aliases:
            raise _unknown_model(req.model, pair.model_id)
        pair.check(req)
        try:
            job = broker.submit(req)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy: {broker.waiting} requests are waiting; retry in {e.retry_after} s",
                           code="queue_full", headers={"Retry-After": str(e.retry_after)}) from None  # fmt: skip
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", code="shutting_down") from None
        watcher = asyncio.create_task(_watch_disconnect(request, broker, job))
        handed_over = False
        try:
            kind, value = await job.events.get()  # waits its turn in the queue
            if kind != "start":
                raise _failure(kind, value)
            rid, stamp = new_id(req.kind), now()
            if req.stream:
                handed_over = True
                return EventStream(_stream(req, job, rid, stamp), on_close=lambda: (watcher.cancel(), broker.abandon(job)))
            parts = []
            while True:
                kind, value = await job.events.get()
                if kind == "text":
                    parts.append(value)
                elif kind == "done":
                    return JSONResponse(response_object(req, rid, stamp, value))
                else:
                    raise _failure(kind, value)
        finally:
            if not handed_over:
                watcher.cancel()
                broker.abandon(job)  # a no-op for a finished job

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(broker.close, 60.0)  # the running generation stops within a round

    created = now()
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, ClientGone: _client_gone, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.broker = broker
    app.state.metrics = metrics
    app.add_middleware(Guard, api_key=api_key, metrics=metrics, paths={r.path: r.path for r in routes})
    broker.start()
    return app


# --- the pieces of a request ------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes: by its Content-Length when it has one, else as it arrives."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(int(length), limit)
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(None, limit)
    except ClientDisconnect:
        raise ApiError(400, "the client went away before sending the whole body") from None
    return bytes(body)


def _too_large(length: int | None, limit: int) -> ApiError:
    size = f"{length} bytes" if length is not None else "more than that"
    return ApiError(413, f"the body is {size}; this server takes at most {limit} bytes", code="body_too_large")


def _unknown_model(name: str, served: str) -> ApiError:
    return ApiError(404, f"the model {name!r} does not exist here; this server serves {served!r} (GET /v1/models)",
                    param="model", code="model_not_found")  # fmt: skip


def _failure(kind: str, value) -> Exception:
    if kind == "gone":
        return ClientGone()
    if isinstance(value, ShuttingDown):
        return ApiError(503, "the server is shutting down", code="shutting_down")
    return value if isinstance(value, Exception) else RuntimeError(f"unexpected event {kind!r}")


class ClientGone(Exception):
    """The client disconnected: nobody reads the answer."""


async def _watch_disconnect(request: Request, broker: Broker, job: Job) -> None:
    """Wait for the client to go away; then free the pair for the next request within a round."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            broker.abandon(job)
            job.events.put_nowait(("gone", None))
            return


async def _stream(req: GenRequest, job: Job, rid: str, stamp: int) -> AsyncIterator[bytes]:
    """Server-sent events: deltas as the engine releases text, a last chunk with finish_reason
    (and timings), a usage chunk if asked, then `data: [DONE]`."""
    if req.kind == "chat":
        yield sse(chunk(req, rid, stamp, text="", role=True))
    while True:
        kind, value = await job.events.get()
        if kind == "text":
            parts = [value]
            while not job.events.empty():  # what arrived meanwhile goes out in one event
                k, v = job.events.get_nowait()
                if k != "text":
                    job.events.put_nowait((k, v))  # never happens twice: done/error/gone end the stream
                    break
                parts.append(v)
            yield sse(chunk(req, rid, stamp, text="".join(parts)))
        elif kind == "done":
            yield sse(chunk(req, rid, stamp, finish=value.finish_reason, out=value))
            if req.include_usage:
                yield sse(chunk(req, rid, stamp, out=value, usage_only=True))
            yield sse("[DONE]")
            return
        elif kind == "gone":
            return
        else:  # the generation failed after it had started: say so in the stream, as OpenAI does
            err = value if isinstance(value, ApiError) else ApiError(500, "the generation failed; see the server's log")
            if not isinstance(value, ApiError):
                log.error("generation failed", exc_info=value)
            yield sse(err.body())
            yield sse("[DONE]")
            return


class EventStream(Response):
    """text/event-stream from an async iterator; `on_close` runs however the stream ends."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], object]):
        self.body_iterator = body
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for data in self.body_iterator:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.on_close()


# --- errors -------------------------------------------------------------------------------


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        err = ApiError(404, f"no such endpoint: {request.method} {request.url.path}", code="unknown_url")
    elif exc.status_code == 405:
        err = ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
    else:
        err = ApiError(exc.status_code, str(exc.detail))
    return error_response(err)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nginx's "client closed request": nobody is there to read it


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("request failed", exc_info=exc)
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}; see the server's log", code="internal_error"))


class Guard:
    """ASGI middleware: the API key (every path but /health), and the request counters by endpoint and status."""

    def __init__(self, app, api_key: str | None, metrics: metrics_mod.Metrics, paths: dict[str, str]):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = self.paths.get(path, "/v1/models/{name}" if path.startswith("/v1/models/") else "other")
        status = [500]

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.key is not None and path not in OPEN and not self._authorized(scope):
                err = ApiError(401, "a valid API key is required: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")
                err.headers = {"WWW-Authenticate": "Bearer"}
                await error_response(err)(scope, receive, counted)
                return
            await self.app(scope, receive, counted)
        finally:
            self.metrics.count_request(endpoint, status[0])

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                # compare_digest takes as long whatever the token holds, so timing says nothing about the key
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False


# --- serving -----------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A socket bound before uvicorn starts, so that the address printed is the one in use (port 0 included)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(app: Starlette, sock: socket.socket, log_level: str = "warning") -> None:
    """Run uvicorn on `sock` until SIGTERM or Ctrl-C; then stop taking connections, end open streams, return."""
    import uvicorn

    broker: Broker = app.state.broker

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn raises the signal again once it has shut down; spec exits 0 instead.
            self._captured_signals.clear()
            loop = getattr(self, "_spec_loop", None)
            if loop is not None:
                loop.call_soon_threadsafe(broker.close)  # streams end within a round, queued requests get 503

        async def startup(self, sockets=None) -> None:
            self._spec_loop = asyncio.get_running_loop()
            await super().startup(sockets)

    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=30, lifespan="on")
    Server(config).run(sockets=[sock])
    broker.close(wait=60)  # after a forced exit too: the caller closes the models next, off the engine thread
