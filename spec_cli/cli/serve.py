"""`spec serve`: the pair behind an OpenAI-compatible HTTP API (spec_cli/serve/)."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Optional

import typer

from .. import ui
from ..errors import SpecError
from ..pipeline import parse_overlap
from . import app
from .options import (
    Ctx,
    Draft,
    Drafter,
    DraftLen,
    DraftMinP,
    Ngl,
    NglDraft,
    NoSpec,
    Overlap,
    Preset,
    Rpc,
    RpcDraft,
    Target,
    Temp,
    Threads,
    TopK,
    TopP,
)
from .setup import ModelOptions

KEY_VARIABLE = "SPEC_API_KEY"

Host = Annotated[str, typer.Option("--host", help="Address to listen on; the default takes connections from this machine only.")]
Port = Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")]
ApiKey = Annotated[
    Optional[str],
    typer.Option(
        "--api-key",
        help=f"Require 'Authorization: Bearer KEY' on every endpoint but /health (default: ${KEY_VARIABLE}, which keeps the key out of ps).",
        show_default=False,
    ),
]
Queue = Annotated[
    int, typer.Option("--queue", help="Requests that may wait behind the running one; past that, 503 with Retry-After.")
]
MaxBody = Annotated[int, typer.Option("--max-body", help="Largest request body in bytes; a larger one gets 413.")]


@app.command("serve")
def serve_cmd(
    target: Target = None,
    draft: Draft = None,
    preset: Preset = None,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    api_key: ApiKey = None,
    draft_len: DraftLen = "auto",
    drafter: Drafter = "auto",
    draft_min_p: DraftMinP = 0.0,
    temp: Temp = 0.0,
    top_k: TopK = 40,
    top_p: TopP = 1.0,
    ctx: Ctx = 4096,
    threads: Threads = None,
    ngl: Ngl = None,
    ngl_draft: NglDraft = None,
    rpc: Rpc = None,
    rpc_draft: RpcDraft = False,
    no_spec: NoSpec = False,
    queue: Queue = 32,
    max_body: MaxBody = 2 * 1024 * 1024,
    overlap: Overlap = "auto",
) -> None:
    """Serve the target (default: the `chat` preset) with speculation behind an OpenAI-compatible API."""
    try:
        from ..serve.app import create_app, listen, serve
        from ..serve.engine import Defaults, open_pair
    except ImportError as e:
        raise SpecError(f"spec serve needs its web stack ({e.name} is missing): pip install 'spec-cli[serve]'") from None
    if not 0 <= port <= 65535:
        raise SpecError(f"--port must be between 0 and 65535, got {port}")
    if queue < 0:
        raise SpecError(f"--queue must be 0 or more, got {queue}")
    if max_body < 1024:
        raise SpecError(f"--max-body must be at least 1024 bytes, got {max_body}")
    key = api_key if api_key is not None else os.environ.get(KEY_VARIABLE) or None
    if key is not None and not key.strip():
        raise SpecError("--api-key is empty; give a key, or leave the option out to serve without one")
    overlap = parse_overlap(overlap)
    defaults = Defaults(temperature=temp, top_k=top_k, top_p=top_p)
    choice = ModelOptions(
        target=target, draft=draft, preset=preset, no_spec=no_spec, ctx=ctx, threads=threads, ngl=ngl,
        ngl_draft=ngl_draft, drafter=drafter, rpc=rpc, rpc_draft=rpc_draft,
    ).choice()  # fmt: skip
    try:
        sock = listen(host, port)  # first: a port in use fails before the models load
    except OSError as e:
        raise SpecError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        with ui.status("loading models"):
            pair = open_pair(choice, draft_len, defaults, draft_min_p=draft_min_p, notify=ui.info, overlap=overlap)
        try:
            web = create_app(pair, api_key=key, max_body=max_body, max_waiting=queue)
            bound_host, bound_port = sock.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            d = pair.describe()
            spec = "target alone (--no-spec)" if d["draft"] is None and d["drafter"] == "none" else (
                f"draft {d['draft'] or 'none'}, drafter {d['drafter']}, draft length {d['draft_len']}")  # fmt: skip
            ui.note(f"spec serve · model {pair.model_id!r}: {d['target']} · {spec} · context {d['n_ctx']} tokens")
            ui.note(
                f"listening on http://{shown}:{bound_port}/v1 · API key {'required' if key else 'not required'} · Ctrl-C stops"
            )
            if not key and not _loopback(bound_host):
                ui.info(
                    f"warning: listening on {bound_host} without an API key: anyone who can reach this port can use the models; set {KEY_VARIABLE}"
                )
            serve(web, sock)
            ui.note("spec serve: stopped")
        finally:
            pair.close()
    finally:
        sock.close()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
