#!/usr/bin/env bash
# Runs every test: unit tests, the token client against mock endpoints, the
# reconciler against a mocked API server, and the end-to-end suite against a
# local Kubernetes control plane that this script starts and stops.
#
# RUNAI_TOKEN_SYNC_E2E_KUBECONFIG=path: run the end-to-end suite against that
# cluster instead of a local plane (for example a kind cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test] %s\n' "$*" >&2; }

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
PATH="$(hack/tools.sh):$PATH"
export PATH

if [ -z "${RUNAI_TOKEN_SYNC_E2E_KUBECONFIG:-}" ]; then
  state="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}/plane-test-$$"
  trap 'hack/plane.sh down "$state" >/dev/null 2>&1 || true' EXIT
  # Without a plane the end-to-end tests cannot run: that fails the run.
  RUNAI_TOKEN_SYNC_E2E_KUBECONFIG="$(hack/plane.sh up "$state")"
  export RUNAI_TOKEN_SYNC_E2E_KUBECONFIG
fi
log "end-to-end tests against $RUNAI_TOKEN_SYNC_E2E_KUBECONFIG"

# --run-ignored all: the end-to-end tests are ignored only for a plain `cargo test`.
cargo nextest run --workspace --all-targets --no-fail-fast --run-ignored all "$@"
