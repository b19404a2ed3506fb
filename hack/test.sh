#!/usr/bin/env bash
# Runs every test: unit tests, the token client against mock endpoints, and the
# reconciler against a mocked API server.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "[test] installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
cargo nextest run --all-targets --no-fail-fast "$@"
