#!/usr/bin/env bash
# spec bench with the target over llama.cpp RPC servers on loopback, optionally behind a
# proxy that adds network latency: the measurements of BENCHMARKS.md, "Issue 12".
#
# Usage: scripts/rpc-bench.sh RTT_MS [spec bench args...]
#   RTT_MS  round-trip time added to every server connection (0: servers reached directly)
# Environment:
#   PYTHON     interpreter with spec and an RPC-enabled llama-cpp-python (default: .venv/bin/python)
#   SERVERS    number of loopback servers the target is split over (default 2)
#   THREADS    CPU threads of each server (default 1)
#   BASE_PORT  first server port (default 50252; proxies listen 100 above)
#   OMP_WAIT_POLICY  default PASSIVE (see below)
# Servers and proxies are started here and killed when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
rtt="${1:?usage: scripts/rpc-bench.sh RTT_MS [spec bench args...]}"
shift
python="${PYTHON:-.venv/bin/python}"
n="${SERVERS:-2}"
threads="${THREADS:-1}"
base="${BASE_PORT:-50252}"
# Servers and client stand for separate hosts but share this machine's cores: OpenMP threads
# that spin while they wait for work (llama.cpp's CPU backend) would take the cores from the
# process whose turn it is. Here they wait passively; set OMP_WAIT_POLICY to override.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 300); do
        if "$python" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), timeout=1).close()" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "rpc-bench: nothing listens on port $1" >&2
    return 1
}

endpoints=()
for i in $(seq 0 $((n - 1))); do
    port=$((base + i))
    "$python" -m spec_cli.rpc_server --port "$port" --threads "$threads" >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$port"
    if [ "$rtt" != "0" ]; then
        "$python" scripts/delay_proxy.py --listen "127.0.0.1:$((port + 100))" --to "127.0.0.1:$port" --rtt-ms "$rtt" &
        pids+=($!)
        port=$((port + 100))
        wait_port "$port"
    fi
    endpoints+=("127.0.0.1:$port")
done
rpc="$(IFS=,; echo "${endpoints[*]}")"
echo "rpc-bench: $n servers, ${rtt} ms added round trip: --rpc $rpc" >&2
"$python" -m spec_cli bench --rpc "$rpc" "$@"
