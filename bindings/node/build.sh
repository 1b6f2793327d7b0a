#!/usr/bin/env bash
# Builds the addon with plain cargo (no npm CLI) and puts it where index.js loads it.
#   bindings/node/build.sh           release build
#   bindings/node/build.sh --dev     debug build (what the tests use in CI)
set -euo pipefail
cd "$(dirname "$0")"
target="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "${1:-}" = --dev ]; then
    cargo build --locked
    profile=debug
else
    cargo build --locked --release
    profile=release
fi
case "$(uname -s)" in
    Darwin) lib=libfencelock_node.dylib ;;
    *) lib=libfencelock_node.so ;;
esac
cp "$target/$profile/$lib" fencelock.node
echo "built bindings/node/fencelock.node ($profile)"
