#!/usr/bin/env bash
# Generates the Swift package's sources from the Rust exports (uniffi library mode).
#   bindings/swift/generate.sh           write into Sources/
#   bindings/swift/generate.sh --check   regenerate into a temp dir and fail if Sources/ differ
set -euo pipefail
cd "$(dirname "$0")"
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --locked --quiet --lib --bin uniffi-bindgen
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$target/debug/uniffi-bindgen" generate --library "$target/debug/libfencelock_swift.so" \
    --language swift --out-dir "$out/gen" >/dev/null
mkdir -p "$out/Sources/Fencelock" "$out/Sources/FencelockFFI/include"
cp "$out/gen/fencelock_swift.swift" "$out/Sources/Fencelock/Fencelock.swift"
cp "$out/gen/fencelock_swiftFFI.h" "$out/Sources/FencelockFFI/include/fencelock_swiftFFI.h"
cp "$out/gen/fencelock_swiftFFI.modulemap" "$out/Sources/FencelockFFI/include/module.modulemap"
if [ "${1:-}" = --check ]; then
    if ! diff -ru Sources "$out/Sources"; then
        echo "bindings/swift/Sources is out of date with the Rust API: run bindings/swift/generate.sh" >&2
        exit 1
    fi
    echo "bindings/swift/Sources is up to date"
else
    rm -rf Sources
    cp -r "$out/Sources" Sources
    echo "generated bindings/swift/Sources"
fi
