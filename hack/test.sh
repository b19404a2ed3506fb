#!/usr/bin/env bash
# Runs every test: unit tests, the token client against mock endpoints, the
# reconciler against a mocked API server, and the end-to-end suite against a
# local Kubernetes control plane (Kubernetes 1.37.2 unless KUBE_VERSION says
# otherwise; hack/build-kube.sh builds it on first use) that this script
# starts and stops.
#
#   hack/test.sh [NEXTEST ARGS...]
#   hack/test.sh --smoke [NEXTEST ARGS...]
#       the smoke subset alone: the happy path, a conflict, deletion, one
#       fan-out and leader election (with KUBE_VERSION=1.34.4, the oldest
#       Kubernetes tested: see the README)
#
# RUNAI_TOKEN_SYNC_E2E_KUBECONFIG=path: run the end-to-end suite against that
# cluster instead of a local plane (for example a kind cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test] %s\n' "$*" >&2; }
source hack/lib.sh

CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
SMOKE=(
  'test(=becomes_ready_with_a_well_formed_secret)'
  'test(=writes::a_secret_created_during_the_token_request_is_never_touched)'
  'test(=deletion_policies_with_real_garbage_collection)'
  'test(=cluster::one_token_reaches_every_matched_namespace)'
  'test(=ops::one_leader_writes_and_a_successor_takes_over)'
)
filter=()
if [ "${1:-}" = "--smoke" ]; then
  shift
  joined=$(printf ' | %s' "${SMOKE[@]}")
  filter=(-E "binary(e2e) & (${joined:3})")
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
PATH="$(hack/tools.sh):$PATH"
export PATH

# Planes of earlier runs that were killed before their cleanup (their
# folder names carry the run's pid).
for stale in "$CACHE"/plane-test-*; do
  [ -d "$stale" ] || continue
  pid=${stale##*plane-test-}; pid=${pid%%-*}
  if ! kill -0 "$pid" 2>/dev/null; then
    log "stopping a plane left by an earlier run: $stale"
    case "$stale" in
      *-own) stop_planes_under "$stale" ;;
      *) hack/plane.sh down "$stale" >/dev/null 2>&1 || rm -rf "$stale" ;;
    esac
  fi
done

if [ -z "${RUNAI_TOKEN_SYNC_E2E_KUBECONFIG:-}" ]; then
  state="$CACHE/plane-test-$$"
  # Tests that need a plane of their own (to restart its API server) start
  # it here, so that this cleanup stops it even when the test was killed.
  export RUNAI_TOKEN_SYNC_OWN_PLANES="$state-own"
  cleanup() {
    # Ignored, not reset: a second Ctrl-C must not stop the cleanup half way.
    trap '' INT TERM HUP PIPE
    set +e
    stop_planes_under "$RUNAI_TOKEN_SYNC_OWN_PLANES"
    hack/plane.sh down "$state" >/dev/null 2>&1 || true
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM HUP
  mkdir -p "$RUNAI_TOKEN_SYNC_OWN_PLANES"
  # Without a plane the end-to-end tests cannot run: that fails the run.
  RUNAI_TOKEN_SYNC_E2E_KUBECONFIG="$(hack/plane.sh up "$state")"
  export RUNAI_TOKEN_SYNC_E2E_KUBECONFIG
  log "$(KUBECONFIG="$RUNAI_TOKEN_SYNC_E2E_KUBECONFIG" kubectl version 2>/dev/null | grep -i '^server' || true)"
fi
log "end-to-end tests against $RUNAI_TOKEN_SYNC_E2E_KUBECONFIG"

# --run-ignored all: the end-to-end tests are ignored only for a plain `cargo test`.
cargo nextest run --workspace --all-targets --no-fail-fast --run-ignored all "${filter[@]}" "$@"
