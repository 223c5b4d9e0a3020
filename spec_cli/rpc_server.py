"""llama.cpp's rpc-server, started from the libraries llama-cpp-python ships.

    python -m spec_cli.rpc_server [--host 127.0.0.1] [--port 50052] [--threads N] [--cache]

The same server code as llama.cpp's `rpc-server` program (tools/rpc/rpc-server.cpp calls
`ggml_backend_rpc_start_server` exactly so), without building anything beyond spec's own
install: it needs llama-cpp-python built with -DGGML_RPC=on. It serves this machine's GPUs
if the build has any, else its CPU. Like rpc-server it has no authentication: bind it to
127.0.0.1 or to a trusted network only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from pathlib import Path

from .errors import SpecError
from .rpc import _DEV_GPU, DEFAULT_PORT, _ggml, _proc, parse_endpoints

_DEV_CPU = 0


def serve(host: str, port: int, threads: int, cache: bool = False) -> None:
    """Run the server in this thread until the process is killed (llama.cpp's loop never returns)."""
    (endpoint,) = parse_endpoints(f"{host}:{port}")
    g = _ggml()
    devices = [g.ggml_backend_dev_get(i) for i in range(g.ggml_backend_dev_count())]
    devices = [d for d in devices if g.ggml_backend_dev_type(d) == _DEV_GPU] or [g.ggml_backend_dev_by_type(_DEV_CPU)]
    cache_dir = None
    if cache:
        base = os.environ.get("LLAMA_CACHE") or str(
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llama.cpp"
        )
        cache_dir = Path(base) / "rpc"
        cache_dir.mkdir(parents=True, exist_ok=True)
    start = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)
    )(_proc("ggml_backend_rpc_start_server"))
    arr = (ctypes.c_void_p * len(devices))(*devices)
    # The C loop never hands control back to Python, so Python's own Ctrl-C handler would never run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    start(endpoint.encode(), str(cache_dir).encode() if cache_dir else None, threads, len(devices), arr)
    # It returns only when it could not start (the message is on stderr: port in use, ...).
    raise SpecError(f"rpc-server could not serve on {endpoint}")


def main(argv: list[str] | None = None) -> None:
    from .llama import default_threads

    ap = argparse.ArgumentParser(prog="python -m spec_cli.rpc_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", "-H", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    ap.add_argument("--port", "-p", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    ap.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: as spec run)")
    ap.add_argument("--cache", "-c", action="store_true", help="keep received tensors in a local file cache (as rpc-server -c)")
    args = ap.parse_args(argv)
    try:
        if args.threads is not None and args.threads < 1:
            raise SpecError("--threads must be at least 1")
        if args.host != "127.0.0.1":
            print(
                f"warning: serving on {args.host}: the RPC protocol has no authentication; use a trusted network only",
                file=sys.stderr,
            )
        serve(args.host, args.port, args.threads or default_threads(), args.cache)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
