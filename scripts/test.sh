#!/usr/bin/env bash
# Installs what the tests need and runs them all. Safe to run again; CI runs it too.
#
# Set-up: Debian's redis-tools (redis-cli), a local Python venv (.venv) with redis-py
# and pytest, and local node_modules for ioredis and node-redlock. Then: rustfmt,
# clippy, every Rust test, rustdoc, the real-client compat tests, and a short seeded
# fault-injection run.
set -euo pipefail
cd "$(dirname "$0")/.."

# A persistent target directory makes repeated runs on one machine incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fencelock/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi
cargo --version
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

step "packages"
# redis-cli for the compat tests; redis-server and etcd are the benchmark's peers;
# protoc and the protobuf includes build etcd-client's gRPC code.
missing=""
for need in redis-cli:redis-tools redis-server:redis-server etcd:etcd-server etcdctl:etcd-client \
    protoc:protobuf-compiler; do
    command -v "${need%%:*}" >/dev/null 2>&1 || missing="$missing ${need#*:}"
done
[ -f /usr/include/google/protobuf/timestamp.proto ] || missing="$missing libprotobuf-dev"
if [ -n "$missing" ]; then
    sudo_if_needed=""
    [ "$(id -u)" = 0 ] || sudo_if_needed="sudo"
    $sudo_if_needed apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq $missing >/dev/null
fi
redis-cli --version
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r compat-tests/python/requirements.txt \
    -r bindings/python/requirements-dev.txt
(cd compat-tests/node && npm ci --no-audit --no-fund --loglevel=error)

step "format"
cargo fmt --all -- --check
cargo fmt --manifest-path bindings/python/Cargo.toml -- --check
cargo fmt --manifest-path bindings/node/Cargo.toml -- --check
cargo fmt --manifest-path bindings/swift/Cargo.toml -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --manifest-path bindings/python/Cargo.toml --locked -- -D warnings
cargo clippy --manifest-path bindings/node/Cargo.toml --locked -- -D warnings
cargo clippy --manifest-path bindings/swift/Cargo.toml --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "doc (missing docs are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "compat tests with real clients"
cargo build --locked --bin fencelock
FENCELOCK_BIN="$CARGO_TARGET_DIR/debug/fencelock" ./compat-tests/run.sh

step "benchmark tool smoke run (every target and workload, tiny sizes; numbers are not judged here)"
cargo build --locked -p fencelock-bench
bench_out="$(mktemp -d)"
"$CARGO_TARGET_DIR/debug/fencelock-bench" --clients 1,4 --duration 1s --warmup 0.3s --half-load-at 4 \
    --clients-other 8 --renew-locks 200 --million 2000 --million-clients 4 --connections 200 --active 20 \
    --out "$bench_out" --binary "$CARGO_TARGET_DIR/debug/fencelock"
test -s "$bench_out/lock.png"
# A fixed operation count instead of a fixed time (--ops): every cell ends after 300.
"$CARGO_TARGET_DIR/debug/fencelock-bench" --targets fencelock,redis --workloads lock --clients 2 --half-load-at 2 \
    --paced-rate 500 --ops 300 --warmup 0.2s --out "$bench_out/ops" --binary "$CARGO_TARGET_DIR/debug/fencelock"
test "$(grep -c '^| \(fencelock\|redis\) | lock |' "$bench_out/ops/results.md")" = 6
rm -rf "$bench_out"

step "python binding: build the wheel (maturin) and test it against real servers"
rm -rf "$CARGO_TARGET_DIR/wheels/python"
(cd bindings/python && ../../.venv/bin/maturin build --profile dev --locked --quiet \
    --interpreter ../../.venv/bin/python --out "$CARGO_TARGET_DIR/wheels/python")
.venv/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps "$CARGO_TARGET_DIR"/wheels/python/fencelock-*.whl
FENCELOCK_BIN="$CARGO_TARGET_DIR/debug/fencelock" .venv/bin/python -m pytest -q bindings/python/tests

step "node binding: build the addon (plain cargo) and test it against real servers"
./bindings/node/build.sh --dev
FENCELOCK_BIN="$CARGO_TARGET_DIR/debug/fencelock" node --test bindings/node/test/

step "swift binding: the generated package matches the Rust API (no Swift toolchain here)"
./bindings/swift/generate.sh --check

step "fault injection: 60 s seeded run on 5 nodes (compat-tests/chaos)"
cargo build --locked -p fencelock-chaos
"$CARGO_TARGET_DIR/debug/fencelock-chaos" --nodes 5 --time 60s --seed 1 \
    --faults kill,pause,partition,clock,restart,reorder --binary "$CARGO_TARGET_DIR/debug/fencelock"
echo "all checks passed"
