#!/usr/bin/env bash
# fencelock (a single durable node, and a 3-node cluster on this machine, through its
# leader and through a follower that forwards) vs Debian's redis-server (no
# persistence) in one run: redis-benchmark, 50 clients, `SET key:<random> v NX PX 30000`
# on random keys. Prints throughputs, p50/p99 where redis-benchmark reports them, and
# the single node's ratio to Redis.
#
#   compat-tests/bench/redis-benchmark.sh [requests]   (default 200000)
#
# Both servers run on 127.0.0.1 ephemeral ports with temp data dirs, and are stopped
# at the end. The fencelock binary is built in release mode if FENCELOCK_BIN is unset.
set -euo pipefail
cd "$(dirname "$0")/../.."
requests="${1:-200000}"
clients=50
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fencelock/target}"
if [ -z "${FENCELOCK_BIN:-}" ]; then
    cargo build --release --locked --bin fencelock >&2
    FENCELOCK_BIN="$CARGO_TARGET_DIR/release/fencelock"
fi
for tool in redis-server redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install redis-server redis-tools" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
    scripts/cluster.sh down --dir "$work/cluster" >/dev/null 2>&1 || true
    for pid in "${pids[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

echo "starting fencelock ($FENCELOCK_BIN) ..." >&2
"$FENCELOCK_BIN" --port 0 --bind 127.0.0.1 --data-dir "$work/fencelock" > "$work/fencelock.out" 2> "$work/fencelock.err" &
pids+=($!)
for _ in $(seq 1 300); do grep -q "ready on" "$work/fencelock.out" 2>/dev/null && break; sleep 0.1; done
fl_port=$(grep -o 'ready on 127.0.0.1:[0-9]*' "$work/fencelock.out" | cut -d: -f2)
[ -n "$fl_port" ] || { echo "fencelock did not start" >&2; cat "$work/fencelock.err" >&2; exit 1; }

rd_port=$(free_port)
echo "starting redis-server on $rd_port (persistence off) ..." >&2
redis-server --port "$rd_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize no > "$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$rd_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

run() { # name port -> "rps p50 p99"
    echo "benchmarking $1: $requests requests, $clients clients ..." >&2
    redis-benchmark -h 127.0.0.1 -p "$2" -c "$clients" -n "$requests" -r 100000000 --csv \
        SET 'key:__rand_int__' v NX PX 30000 | tail -n 1 | python3 -c '
import csv, sys
row = next(csv.reader(sys.stdin))
# redis-benchmark 7 CSV: test, rps, avg, min, p50, p95, p99, max
print(row[1], row[4] if len(row) > 4 else "-", row[6] if len(row) > 6 else "-")'
}

read -r fl_rps fl_p50 fl_p99 < <(run fencelock "$fl_port")
read -r rd_rps rd_p50 rd_p99 < <(run redis "$rd_port")
kill -9 "${pids[0]}" 2>/dev/null || true

# A 3-node cluster: client ports base..base+2, peer ports +10000; find a free block.
base=""
for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 20000))
    if python3 -c "
import socket, sys
for p in [$candidate, $candidate+1, $candidate+2, $candidate+10000, $candidate+10001, $candidate+10002]:
    s = socket.socket(); s.bind(('127.0.0.1', p)); s.close()
" 2>/dev/null; then base=$candidate; break; fi
done
[ -n "$base" ] || { echo "no free port block for the cluster" >&2; exit 1; }
echo "starting a 3-node fencelock cluster on 127.0.0.1:$base-$((base + 2)) ..." >&2
FENCELOCK_BIN="$FENCELOCK_BIN" scripts/cluster.sh up 3 --base-port "$base" --dir "$work/cluster" >&2
leader_port=""; follower_port=""
for port in $base $((base + 1)) $((base + 2)); do
    if redis-cli -p "$port" INFO replication | tr -d '\r' | grep -qx 'role:master'; then leader_port=$port
    elif [ -z "$follower_port" ]; then follower_port=$port; fi
done
[ -n "$leader_port" ] && [ -n "$follower_port" ] || { echo "the cluster has no leader" >&2; exit 1; }
# The first write after an election waits for the new leader's first commit.
for _ in $(seq 1 50); do [ "$(redis-cli -p "$leader_port" SET warm up)" = OK ] && break; sleep 0.1; done
read -r cl_rps cl_p50 cl_p99 < <(run "fencelock 3 nodes, via the leader" "$leader_port")
read -r cf_rps cf_p50 cf_p99 < <(run "fencelock 3 nodes, via a follower" "$follower_port")
ratio=$(python3 -c "print(f'{100 * float($fl_rps) / float($rd_rps):.1f}')")
echo
echo "| server | durability | SET NX PX ops/s | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
echo "| fencelock 1 node | fdatasync before every ack (group commit) | $fl_rps | $fl_p50 | $fl_p99 |"
echo "| fencelock 3 nodes, clients on the leader | on 2 of 3 disks (fdatasync) before every ack | $cl_rps | $cl_p50 | $cl_p99 |"
echo "| fencelock 3 nodes, clients on a follower | same, plus one forwarding hop | $cf_rps | $cf_p50 | $cf_p99 |"
echo "| redis-server $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2) | none (save \"\", appendonly no) | $rd_rps | $rd_p50 | $rd_p99 |"
echo
echo "fencelock / redis: ${ratio}% (goal >= 40%)"
