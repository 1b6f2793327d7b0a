#!/usr/bin/env bash
# A local fencelock cluster on 127.0.0.1.
#
#   scripts/cluster.sh up N [--base-port P] [--dir D]   start N nodes, wait for a leader
#   scripts/cluster.sh status [--dir D]                 role, term and applied index per node
#   scripts/cluster.sh down [--dir D]                   stop the nodes (data is kept)
#
# Client ports are P..P+N-1 (default 6379); peer ports are the client ports + 10000.
# Each node keeps its data in D/node-<id> (default ./fencelock-cluster) and its log in
# D/node-<id>.log. FENCELOCK_BIN picks the binary (default: cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
command="${1:-}"; shift || true
count=""
base_port=6379
dir="fencelock-cluster"
if [ "$command" = up ]; then
    count="${1:-}"; shift || true
    [[ "$count" =~ ^[1-9][0-9]*$ ]] || usage
fi
while [ $# -gt 0 ]; do
    case "$1" in
        --base-port) base_port="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        *) usage ;;
    esac
done
command -v redis-cli >/dev/null || { echo "cluster.sh needs redis-cli (apt-get install redis-tools)" >&2; exit 1; }

info_field() { # port field
    redis-cli -h 127.0.0.1 -p "$1" INFO replication 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

case "$command" in
up)
    if [ -z "${FENCELOCK_BIN:-}" ]; then
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fencelock/target}"
        cargo build --release --locked --bin fencelock >&2
        FENCELOCK_BIN="$CARGO_TARGET_DIR/release/fencelock"
    fi
    mkdir -p "$dir"
    peers=""
    for id in $(seq 1 "$count"); do
        peers="${peers:+$peers,}$id=127.0.0.1:$((base_port + id - 1 + 10000))"
    done
    for id in $(seq 1 "$count"); do
        port=$((base_port + id - 1))
        "$FENCELOCK_BIN" --port "$port" --bind 127.0.0.1 --node-id "$id" --peers "$peers" \
            --data-dir "$dir/node-$id" > "$dir/node-$id.out" 2> "$dir/node-$id.log" &
        echo $! > "$dir/node-$id.pid"
        echo "$port" > "$dir/node-$id.port"
    done
    # Wait (at most 30 s) until one node says it leads.
    for _ in $(seq 1 300); do
        for id in $(seq 1 "$count"); do
            if [ "$(info_field "$(cat "$dir/node-$id.port")" role)" = master ]; then
                for n in $(seq 1 "$count"); do
                    echo "node $n 127.0.0.1:$(cat "$dir/node-$n.port") pid $(cat "$dir/node-$n.pid")"
                done
                exit 0
            fi
        done
        sleep 0.1
    done
    echo "no leader after 30 s; see $dir/node-*.log" >&2
    exit 1
    ;;
status)
    found=0
    for pidfile in "$dir"/node-*.pid; do
        [ -e "$pidfile" ] || continue
        found=1
        id=$(basename "$pidfile" .pid); id=${id#node-}
        pid=$(cat "$pidfile"); port=$(cat "$dir/node-$id.port")
        if kill -0 "$pid" 2>/dev/null; then
            echo "node $id 127.0.0.1:$port pid $pid role $(info_field "$port" role) term $(info_field "$port" raft_term) applied $(info_field "$port" raft_applied_index)"
        else
            echo "node $id 127.0.0.1:$port pid $pid down"
        fi
    done
    [ "$found" = 1 ] || { echo "no cluster in $dir" >&2; exit 1; }
    ;;
down)
    for pidfile in "$dir"/node-*.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    echo "stopped; data kept in $dir"
    ;;
*) usage ;;
esac
