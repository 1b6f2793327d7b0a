#!/usr/bin/env bash
# Watch notification latency on a 3-node fencelock cluster on this machine: 1,000
# connections (spread over the three nodes) OBSERVE one key; a client on the leader
# SETs it 200 times, one change at a time. Prints p50 / p99 / max from the SET being
# sent and from its acknowledgement to each watcher's push.
#
#   compat-tests/bench/watch-latency.sh [watchers] [changes]   (default 1000 200)
set -euo pipefail
cd "$(dirname "$0")/../.."
watchers="${1:-1000}"
changes="${2:-200}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fencelock/target}"
cargo build --release --locked --bin fencelock --example watch_latency >&2
FENCELOCK_BIN="$CARGO_TARGET_DIR/release/fencelock"
work=$(mktemp -d)
cleanup() { scripts/cluster.sh down --dir "$work/cluster" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 8192 2>/dev/null || true

base=""
for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 20000))
    if python3 -c "
import socket
for p in [$candidate, $candidate+1, $candidate+2, $candidate+10000, $candidate+10001, $candidate+10002]:
    s = socket.socket(); s.bind(('127.0.0.1', p)); s.close()
" 2>/dev/null; then base=$candidate; break; fi
done
[ -n "$base" ] || { echo "no free port block for the cluster" >&2; exit 1; }
FENCELOCK_BIN="$FENCELOCK_BIN" scripts/cluster.sh up 3 --base-port "$base" --dir "$work/cluster" >&2
leader=""
for port in $base $((base + 1)) $((base + 2)); do
    redis-cli -p "$port" INFO replication | tr -d '\r' | grep -qx 'role:master' && leader=$port
done
[ -n "$leader" ] || { echo "the cluster has no leader" >&2; exit 1; }
for _ in $(seq 1 50); do [ "$(redis-cli -p "$leader" SET warm up)" = OK ] && break; sleep 0.1; done
others=$(for port in $base $((base + 1)) $((base + 2)); do [ "$port" != "$leader" ] && echo -n ",$port"; done)
"$CARGO_TARGET_DIR/release/examples/watch_latency" --ports "$leader$others" --watchers "$watchers" --changes "$changes"
