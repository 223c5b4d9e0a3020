"""The target over the network: llama.cpp's own RPC backend.

Each remote host runs llama.cpp's `rpc-server` (scripts/build-rpc-server.sh builds it from
the pinned sources, or `python -m spec_cli.rpc_server` starts the same server code from the
libraries llama-cpp-python ships). `--rpc HOST:PORT,...` turns each server into one ggml
device; the target is loaded with those devices in `llama_model_params.devices`, so
llama.cpp splits its offloaded layers (`--ngl`) over them in proportion to their memory.
The devices are not registered in ggml's global registry: a model loaded without an
explicit device list (the draft, unless --rpc-draft) keeps to the local machine.

llama.cpp's RPC client treats every network failure as fatal: a failed connect, a failed
handshake and a lost connection mid-decode all end in GGML_ABORT, which calls abort().
Hence spec checks each server itself before llama.cpp sees it (a TCP connect and the
protocol's HELLO, both with a timeout), and installs ggml's abort callback to turn a
failure during a run into one line naming the server and a clean exit. Nothing spec
keeps on disk can be left half-written by that exit: the cache files are written through
a temporary file and a rename, and the KV caches die with the process.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence

from .errors import SpecError
from .limits import LLAMA_CPP_PYTHON_PIN

DEFAULT_PORT = 50052  # rpc-server's default
CONNECT_TIMEOUT = 3.0  # seconds for a TCP connect and for the handshake's answer
# The RPC protocol of the pinned llama.cpp (ggml/include/ggml-rpc.h, ggml/src/ggml-rpc).
PROTO_MAJOR, PROTO_MINOR = 7, 0
_CMD_HELLO = 14
_CONN_CAPS = 24  # rpc_msg_hello_req: conn_caps[24]; all zero = plain TCP, no RDMA
_HELLO_RSP = 4 + _CONN_CAPS  # major, minor, patch, padding, conn_caps
# ggml's enum ggml_backend_dev_type
_DEV_GPU, _DEV_IGPU = 1, 2


def parse_endpoints(value: str | Sequence[str] | None) -> list[str]:
    """`host:port,host:port` (or a list of them) -> ["host:port", ...]; a bare host gets port 50052."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in parts:
        if not isinstance(raw, str):
            raise SpecError(f"RPC servers are HOST:PORT strings, got {raw!r}")
        ep = raw.strip()
        if not ep:
            continue
        host, sep, port = ep.rpartition(":")
        if not sep:
            host, port = ep, str(DEFAULT_PORT)
        # llama.cpp splits an endpoint at its first ':', so an IPv6 literal cannot be passed on.
        if not host or ":" in host or "[" in host or any(c.isspace() for c in host):
            raise SpecError(f"RPC server {ep!r}: expected HOST:PORT with a host name or an IPv4 address")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SpecError(f"RPC server {ep!r}: the port must be a number from 1 to 65535")
        ep = f"{host}:{int(port)}"
        if ep in out:
            raise SpecError(f"RPC server {ep} is listed twice")
        out.append(ep)
    if not out:
        raise SpecError("--rpc needs at least one HOST:PORT")
    if len(out) > 16:  # GGML_RPC_MAX_SERVERS
        raise SpecError(f"at most 16 RPC servers, got {len(out)}")
    return out


def probe(endpoint: str, timeout: float = CONNECT_TIMEOUT) -> tuple[int, int, int]:
    """Connect to one server and exchange the protocol's HELLO; its version, or a SpecError naming it.

    rpc-server serves one client at a time and closes a client that hangs up after HELLO,
    so the probe leaves it free for llama.cpp's own connection.
    """
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except ConnectionRefusedError:
        raise SpecError(f"RPC server {endpoint}: connection refused (is rpc-server running there, on that port?)") from None
    except socket.gaierror:
        raise SpecError(f"RPC server {endpoint}: unknown host {host!r}") from None
    except TimeoutError:
        raise SpecError(f"RPC server {endpoint}: unreachable (no answer to a connect within {timeout:g} s)") from None
    except OSError as e:
        raise SpecError(f"RPC server {endpoint}: unreachable ({e.strerror or e})") from None
    with sock:
        try:
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS) + bytes(_CONN_CAPS))
            reply = _recv_exactly(sock, 8 + _HELLO_RSP)
        except TimeoutError:
            raise SpecError(
                f"RPC server {endpoint}: connected, but no answer to the handshake within {timeout:g} s "
                "(rpc-server serves one client at a time: is another one using it?)"
            ) from None
        except OSError as e:
            raise SpecError(f"RPC server {endpoint}: the handshake failed ({e.strerror or e})") from None
    if len(reply) < 8 + _HELLO_RSP or struct.unpack_from("<Q", reply)[0] != _HELLO_RSP:
        raise SpecError(
            f"RPC server {endpoint}: not a llama.cpp rpc-server speaking protocol {PROTO_MAJOR}.x "
            "(build it from the same llama.cpp with scripts/build-rpc-server.sh)"
        )
    major, minor, patch = reply[8], reply[9], reply[10]
    if major != PROTO_MAJOR or minor > PROTO_MINOR:
        raise SpecError(
            f"RPC server {endpoint}: protocol {major}.{minor}.{patch}, this llama.cpp speaks {PROTO_MAJOR}.{PROTO_MINOR}.x; "
            "build rpc-server from the same llama.cpp with scripts/build-rpc-server.sh"
        )
    return major, minor, patch


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break  # closed: the caller reports a short answer
        data += chunk
    return data


# --- ggml's backend registry, through ctypes ---------------------------------------------

_ggml_lib = None
_servers: dict[str, list[int]] = {}  # endpoint -> its ggml devices (the registry keeps them for the process)
_arrays: list = []  # device lists handed to llama.cpp, kept alive
_watched: list[str] = []  # endpoints the abort handler names
_abort_handler = None  # kept alive: ggml holds a raw pointer to it
_last_words: list = []  # callables run before the process ends on a lost server (chat saves its conversation)


def on_lost(fn) -> None:
    """Run fn() before a lost RPC server ends the process; a string it returns is added to the error line."""
    if fn not in _last_words:
        _last_words.append(fn)


def forget(fn) -> None:
    """Undo on_lost(fn)."""
    if fn in _last_words:
        _last_words.remove(fn)


def _ggml():
    """ggml's library as llama-cpp-python ships it, with the signatures used here declared."""
    global _ggml_lib
    if _ggml_lib is not None:
        return _ggml_lib
    from .llama import ggml_lib, llama_lib

    L = llama_lib()
    if not L.llama_supports_rpc():
        raise SpecError(
            "this llama-cpp-python was built without the RPC backend; reinstall it with: "
            f'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir {LLAMA_CPP_PYTHON_PIN}'
        )
    g = ggml_lib()
    if g is None:
        raise SpecError("cannot find the ggml library of llama-cpp-python (needed for --rpc)")
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    for name, res, args in (
        ("ggml_backend_reg_by_name", vp, [ctypes.c_char_p]),
        ("ggml_backend_reg_get_proc_address", vp, [vp, ctypes.c_char_p]),
        ("ggml_backend_reg_name", ctypes.c_char_p, [vp]),
        ("ggml_backend_reg_dev_count", sz, [vp]),
        ("ggml_backend_reg_dev_get", vp, [vp, sz]),
        ("ggml_backend_dev_count", sz, []),
        ("ggml_backend_dev_get", vp, [sz]),
        ("ggml_backend_dev_by_type", vp, [ctypes.c_int]),
        ("ggml_backend_dev_type", ctypes.c_int, [vp]),
        ("ggml_backend_dev_backend_reg", vp, [vp]),
        ("ggml_set_abort_callback", vp, [vp]),
    ):
        fn = getattr(g, name)
        fn.restype, fn.argtypes = res, args
    _ggml_lib = g
    return g


def _proc(name: str):
    g = _ggml()
    reg = g.ggml_backend_reg_by_name(b"RPC")
    addr = g.ggml_backend_reg_get_proc_address(reg, name.encode()) if reg else None
    if not addr:
        raise SpecError(f"the RPC backend of this llama.cpp build has no {name}")
    return addr


def connect(endpoints: Sequence[str]) -> int:
    """Check every server, add it as a ggml device, and return the device list for the target.

    The list (a NULL-terminated `ggml_backend_dev_t *`, as an address for
    `llama_model_params.devices`) holds the servers' devices in the order given, then any
    local GPU, as llama.cpp's own default order does (RPC servers first).
    """
    if not endpoints:
        raise SpecError("--rpc needs at least one HOST:PORT")
    g = _ggml()
    for ep in endpoints:
        if ep not in _servers:
            probe(ep)
    _watch(endpoints)
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(_proc("ggml_backend_rpc_add_server"))
    devices: list[int] = []
    for ep in endpoints:
        if ep not in _servers:
            reg = add_server(ep.encode())  # connects and asks the server for its devices
            if not reg:
                raise SpecError(f"RPC server {ep} offers no devices")
            _servers[ep] = [g.ggml_backend_reg_dev_get(reg, i) for i in range(g.ggml_backend_reg_dev_count(reg))]
        devices += _servers[ep]
    devices += local_gpus()
    arr = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
    _arrays.append(arr)
    return ctypes.addressof(arr)


def local_gpus() -> list[int]:
    """This machine's GPUs as llama.cpp's default device choice takes them (integrated ones only without others)."""
    g = _ggml()
    gpus, igpus = [], []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        kind = g.ggml_backend_dev_type(dev)
        if kind == _DEV_GPU and g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(dev)) != b"RPC":
            gpus.append(dev)
        elif kind == _DEV_IGPU:
            igpus.append(dev)
    return gpus or igpus[:1]


def _watch(endpoints: Sequence[str]) -> None:
    """From now on, a fatal error of the RPC client ends the process with one line naming the server."""
    global _abort_handler
    for ep in endpoints:
        if ep not in _watched:
            _watched.append(ep)
    if _abort_handler is not None:
        return
    g = _ggml()

    @ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    def on_abort(message):
        text = (message or b"").decode("utf-8", "replace").strip()
        if "ggml-rpc" not in text:
            sys.stderr.write(text + "\n")  # what ggml prints by default; abort() follows
            sys.stderr.flush()
            return
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001  (exiting anyway)
            pass
        line = lost_server_message(list(_watched), text)
        for fn in list(_last_words):
            try:
                said = fn()
            except Exception as e:  # noqa: BLE001  (the error line must still be written)
                said = f"could not save what was open: {e}"
            if said:
                line += "; " + said
        sys.stderr.write("\nerror: " + line + "\n")
        sys.stderr.flush()
        # Runs on llama.cpp's RPC thread, and the thread that waits for it cannot be woken:
        # the only way on is out. _exit skips interpreter teardown, which would wait for it.
        os._exit(SpecError.exit_code)

    _abort_handler = on_abort
    g.ggml_set_abort_callback(ctypes.cast(on_abort, ctypes.c_void_p))


def lost_server_message(endpoints: Sequence[str], ggml_message: str, wait: float = 1.5) -> str:
    """One line for a fatal RPC error: which server is gone, found by connecting to each again.

    A server process that dies closes its client connections a moment before its listening
    socket (seen on Linux), so a server that still accepts at first is asked again for a while.
    """
    reason = ggml_message.split(": ", 1)[-1].strip() or "RPC failure"
    named = [ep for ep in endpoints if ep in ggml_message]
    deadline = time.monotonic() + wait
    while not named:
        for ep in endpoints:
            host, _, port = ep.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=max(0.1, deadline - time.monotonic())).close()
            except OSError:
                named.append(ep)
        if named or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if len(named) == 1:
        who = f"RPC server {named[0]}"
    elif named:
        who = "RPC servers " + ", ".join(named)
    else:
        who = "an RPC server (" + ", ".join(endpoints) + ")"
    return f"{who} went away or failed ({reason}); llama.cpp cannot go on without it, so spec stops here"
