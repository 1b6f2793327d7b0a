#!/usr/bin/env bash
# Runs the real-client compat tests against the fencelock binary at $FENCELOCK_BIN.
# scripts/test.sh installs what they need first (redis-tools, .venv, node_modules).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${FENCELOCK_BIN:?set FENCELOCK_BIN to a built fencelock binary}"
export FENCELOCK_BIN
echo "==> compat: redis-py and redis-cli"
.venv/bin/python -m pytest -q compat-tests/python
echo "==> compat: ioredis and node-redlock"
node --test compat-tests/node/
