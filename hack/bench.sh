#!/usr/bin/env bash
# Measures the controller at scale on a local control plane of its own and
# prints its figures as a table (hack/bench.py does the measuring):
#
#   hack/bench.sh [--count N] [--clients K] [--probes P]
#   hack/bench.sh N                  (the same as --count N --clients N)
#
# N RunaiCredentials (default 1000) share K Run:ai applications (default N:
# each its own), K credentials Secrets in one namespace, all created before
# the controller starts. Figures: cold start to all Ready, token requests,
# RSS, the API server's own request counters (writes and reads per
# RunaiCredential), 60 s of steady state, a forced refresh, a restart with
# every token fresh, and apply→Ready of P single new RunaiCredentials while
# the N exist. The release build runs against the project's stand-in.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=1000
CLIENTS=""
PROBES=20
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --probes) PROBES=$2; shift 2 ;;
    [0-9]*) COUNT=$1; shift ;;
    *) echo "usage: $0 [--count N] [--clients K] [--probes P]" >&2; exit 2 ;;
  esac
done
CLIENTS="${CLIENTS:-$COUNT}"
CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
STATE="$CACHE/plane-bench"
say() { printf '[bench] %s\n' "$*" >&2; }

source hack/lib.sh

pids=()
cleanup() {
  # Ignored, not reset: a second Ctrl-C must not stop the cleanup half way.
  trap '' INT TERM HUP PIPE
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # The controller bench.py started, if bench.py itself was interrupted.
  [ -f "$STATE/controller.pid" ] && kill "$(cat "$STATE/controller.pid")" 2>/dev/null
  hack/plane.sh down "$STATE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

say "building release binaries"
cargo build --release --quiet --bins -p runai-token-sync -p runai-standin
PATH="$(hack/tools.sh):$PATH"
KUBECONFIG="$(hack/plane.sh up "$STATE")"
export KUBECONFIG PATH

# The applications, and one more per probe.
{
  for i in $(seq 0 $((CLIENTS - 1))); do echo "app-$i:secret-$i"; done
  for i in $(seq 0 $((PROBES - 1))); do echo "probe-$i:probe-secret-$i"; done
} > "$STATE/clients"
target/release/runai-standin --clients-file "$STATE/clients" --lifetime-seconds 3600 \
  --ca-file "$STATE/standin-ca.pem" --url-file "$STATE/standin-url" > "$STATE/standin.log" 2>&1 &
pids+=($!)
echo $! > "$STATE/standin.pid"
for _ in $(seq 1 100); do [ -s "$STATE/standin-url" ] && break; sleep 0.1; done
[ -s "$STATE/standin-url" ] || { say "the stand-in did not start:"; cat "$STATE/standin.log" >&2; exit 1; }
target/release/runai-token-sync crd | kubectl apply -f - >/dev/null 2> >(grep -v 'version difference' >&2)
wait_crd_served runaicredentials.tokensync.dev

python3 hack/bench.py --count "$COUNT" --clients "$CLIENTS" --probes "$PROBES" \
  --server "https://127.0.0.1:$(cat "$STATE/apiserver.port")" \
  --token "$(cut -d, -f1 "$STATE/tokens.csv")" --ca "$STATE/pki/ca.crt" \
  --kubeconfig "$KUBECONFIG" --binary "${RUNAI_TOKEN_SYNC_BENCH_BINARY:-target/release/runai-token-sync}" \
  --standin-url "$STATE/standin-url" --standin-ca "$STATE/standin-ca.pem" --state "$STATE"
