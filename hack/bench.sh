#!/usr/bin/env bash
# Measures the controller with many RunaiCredentials on the local control
# plane and prints its figures: time until all are Ready, token requests,
# memory (RSS), writes and token requests in steady state, and after a restart.
#
#   hack/bench.sh [COUNT]     (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT="${1:-500}"
CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
STATE="$CACHE/plane-bench"
NS=bench
say() { printf '[bench] %s\n' "$*" >&2; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  hack/plane.sh down "$STATE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "building release binaries"
cargo build --release --quiet --bins -p runai-token-sync -p runai-standin
PATH="$(hack/tools.sh):$PATH"
KUBECONFIG="$(hack/plane.sh up "$STATE")"
export KUBECONFIG PATH
k() { kubectl "$@" 2> >(grep -v 'version difference' >&2); }

target/release/runai-standin --client bench-id:bench-secret --lifetime-seconds 3600 \
  --ca-file "$STATE/standin-ca.pem" --url-file "$STATE/standin-url" > "$STATE/standin.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$STATE/standin-url" ] && break; sleep 0.1; done
[ -s "$STATE/standin-url" ] || { say "the stand-in did not start:"; cat "$STATE/standin.log" >&2; exit 1; }
target/release/runai-token-sync crd | k apply -f - >/dev/null
k wait --for condition=established --timeout=30s crd/runaicredentials.tokensync.dev >/dev/null
k create namespace "$NS" >/dev/null
k -n "$NS" create secret generic runai-client --from-literal=clientId=bench-id --from-literal=clientSecret=bench-secret >/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_controller() {
  METRICS_PORT=$(port)
  target/release/runai-token-sync run --namespace "$NS" --controller-namespace "$NS" \
    --metrics-address "127.0.0.1:$METRICS_PORT" > "$STATE/controller-$1.log" 2>&1 &
  CONTROLLER=$!
  pids+=("$CONTROLLER")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null && return; sleep 0.1; done
  say "the controller did not become ready"; exit 1
}
requests() {
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" \
    | awk '/^runai_token_sync_token_requests_total/ {n += $2} END {print n + 0}'
}
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$CONTROLLER/status"; }
ready_count() {
  k -n "$NS" get runaicredentials -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true
}
versions() {
  k -n "$NS" get runaicredentials,secrets -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.resourceVersion}{"\n"}{end}' | sort | md5sum
}

start_controller first
URL=$(cat "$STATE/standin-url")
CA=$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$STATE/standin-ca.pem")
say "creating $COUNT RunaiCredentials"
for i in $(seq 1 "$COUNT"); do
  printf -- '---\napiVersion: tokensync.dev/v1alpha1\nkind: RunaiCredential\nmetadata: {name: c%d, namespace: %s}\nspec: {url: "%s", clientCredentialsSecretRef: {name: runai-client}, caBundle: %s}\n' \
    "$i" "$NS" "$URL" "$CA"
done > "$STATE/credentials.yaml"
started=$(date +%s.%N)
k apply -f "$STATE/credentials.yaml" >/dev/null
while [ "$(ready_count)" -lt "$COUNT" ]; do sleep 0.5; done
all_ready=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)")
requests_to_ready=$(requests)
rss_ready=$(rss_mib)

say "steady state: 30 s with nothing due"
before=$(versions); requests_before=$(requests)
sleep 30
after=$(versions)
steady_writes=$([ "$before" = "$after" ] && echo 0 || echo "some")
steady_requests=$(( $(requests) - requests_before ))
rss_steady=$(rss_mib)

say "restart"
kill -TERM "$CONTROLLER"; wait "$CONTROLLER" 2>/dev/null || true
start_controller second
sleep 10
restart_requests=$(requests)
restart_writes=$([ "$before" = "$(versions)" ] && echo 0 || echo "some")
rss_restart=$(rss_mib)

cat <<TABLE
runai-token-sync, $COUNT RunaiCredentials sharing one credentials Secret, release build, local kube-apiserver v1.20.2
| measure                                         | value |
| ----------------------------------------------- | ----- |
| time from apply until all Ready                 | ${all_ready} s |
| token requests until all Ready                  | ${requests_to_ready} |
| controller RSS when all Ready                   | ${rss_ready} MiB |
| objects written in 30 s of steady state         | ${steady_writes} |
| token requests in 30 s of steady state          | ${steady_requests} |
| controller RSS in steady state                  | ${rss_steady} MiB |
| token requests in the 10 s after a restart      | ${restart_requests} |
| objects written after the restart               | ${restart_writes} |
| controller RSS after the restart                | ${rss_restart} MiB |
TABLE
