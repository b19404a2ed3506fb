#!/usr/bin/env bash
# Chaos run with printed figures (tests/e2e/chaos.rs): RunaiCredentials with
# short-lived tokens while the token endpoint fails or stalls about half of
# the time, the API server restarts and the controller is killed with kill -9
# every 30 s (two replicas with leader election for the middle third), and
# the replicas reach the API server through a fault-injecting proxy that
# plays one bad day every 30 s in turn, between the kills: idle connections
# black-holed, an outage (connections refused), a hang shorter than the
# renew deadline, and the leader Lease taken by another identity.
#
#   hack/chaos.sh [SECONDS]   default 300
#
# It starts a control plane of its own (hack/plane.sh, in a temporary state
# directory) and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(hack/tools.sh):$PATH"
export PATH
export RUNAI_TOKEN_SYNC_CHAOS_SECONDS="${1:-300}"
hack/build-kube.sh >&2
# The test's own plane goes here, and is stopped here however the run ends.
RUNAI_TOKEN_SYNC_OWN_PLANES="$(mktemp -d "${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}/chaos.XXXXXX")"
export RUNAI_TOKEN_SYNC_OWN_PLANES
source hack/lib.sh
cleanup() {
  # Ignored, not reset: a second Ctrl-C must not stop the cleanup half way.
  trap '' INT TERM HUP PIPE
  set +e
  stop_planes_under "$RUNAI_TOKEN_SYNC_OWN_PLANES"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
cargo build --bin runai-token-sync >&2
# The plane is the test's own; this variable only satisfies the harness.
export RUNAI_TOKEN_SYNC_E2E_KUBECONFIG="${RUNAI_TOKEN_SYNC_E2E_KUBECONFIG:-unused}"
cargo nextest run --test e2e --run-ignored all --no-capture -E 'test(chaos_keeps_every_token_fresh)'
