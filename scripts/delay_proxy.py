#!/usr/bin/env python3
"""A TCP proxy that adds network latency: a slower network on loopback, without root.

    python scripts/delay_proxy.py --listen 127.0.0.1:50152 --to 127.0.0.1:50052 --rtt-ms 5

Every chunk of bytes is held for half the added round-trip time in each direction before
it is passed on, so a request and its answer take `--rtt-ms` longer, while the chunks
behind it keep flowing (latency is added, bandwidth is not cut), as `tc qdisc ... netem
delay` would do on a real interface. Used by the RPC measurements in docs/benchmark-log.md:
`spec --rpc` talks to the proxies, the proxies to the rpc-servers.
"""

from __future__ import annotations

import argparse
import collections
import socket
import sys
import threading
import time


def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Copy src to dst, each chunk `delay` seconds after it arrived."""
    queue: collections.deque = collections.deque()
    ready = threading.Condition()

    def read() -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                with ready:
                    queue.append((time.monotonic() + delay, data))
                    ready.notify()
                if not data:
                    return
        except OSError:
            with ready:
                queue.append((0.0, b""))
                ready.notify()

    threading.Thread(target=read, daemon=True).start()
    try:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (dst, src):  # one side gone: so is the connection
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def serve(listen: tuple[str, int], to: tuple[str, int], rtt: float, ready: threading.Event | None = None) -> None:
    server = socket.create_server(listen)
    if ready is not None:
        ready.set()
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(to, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()  # the server behind is down: so is the proxy, for this client
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b, rtt / 2), daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT to accept connections on")
    ap.add_argument("--to", required=True, help="HOST:PORT of the server behind the proxy")
    ap.add_argument("--rtt-ms", type=float, default=1.0, help="round-trip time to add, in milliseconds")
    args = ap.parse_args(argv)
    try:
        serve(_endpoint(args.listen), _endpoint(args.to), args.rtt_ms / 1000.0)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
