#!/usr/bin/env bash
# The API server's CPU per status write of a RunaiCredential, for each way of
# writing it (server-side apply, merge patch, replace, JSON patch), and per
# create of a target Secret, on a control plane of its own:
#
#   hack/write-cost.sh [COUNT]       (default 1500 RunaiCredentials per way)
#
# hack/write-cost.py does the measuring; see the README's benchmark section.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
STATE="$CACHE/plane-write-cost"
source hack/lib.sh
# A second Ctrl-C must not stop the cleanup half way: it ignores INT.
trap 'trap "" INT TERM HUP PIPE; hack/plane.sh down "$STATE" >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT TERM HUP
cargo build --release --quiet --bin runai-token-sync
PATH="$(hack/tools.sh):$PATH"
KUBECONFIG="$(hack/plane.sh up "$STATE")"
export KUBECONFIG PATH
target/release/runai-token-sync crd | kubectl apply -f - >/dev/null 2> >(grep -v 'version difference' >&2)
wait_crd_served runaicredentials.tokensync.dev
python3 hack/write-cost.py --state "$STATE" --count "${1:-1500}"
