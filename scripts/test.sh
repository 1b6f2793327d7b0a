#!/usr/bin/env bash
# Installs what the tests need and runs them all. Safe to run again; CI runs it too.
#
# Today the workspace is pure Rust (fencelock-core). As the server, compat tests and
# bindings land, their set-up goes here: Debian packages (redis-tools, redis-server,
# etcd), a local Python venv (.venv) and local node_modules.
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

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "doc (missing docs are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "all checks passed"
