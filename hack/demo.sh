#!/usr/bin/env bash
# The main job, end to end on this machine, without any existing cluster:
# builds the controller, starts a local Kubernetes control plane and a Run:ai
# stand-in, installs the CRD, runs the controller, applies the manifests from
# examples/, shows the result, then keeps refreshing until interrupted, and
# cleans up everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
STATE="$CACHE/plane-demo"
LIFETIME="${DEMO_TOKEN_LIFETIME_SECONDS:-90}"
NS=ml-team

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

source hack/lib.sh

pids=()
cleanup() {
  # Ignored, not reset: a second Ctrl-C while cleaning up must not stop the
  # cleanup half way (the plane's processes run in sessions of their own and
  # only `hack/plane.sh down` stops them). Children inherit the ignore.
  trap '' INT TERM HUP PIPE
  set +e
  trap - EXIT
  say "cleaning up"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  hack/plane.sh down "$STATE" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

say "building the controller and the Run:ai stand-in"
cargo build --workspace --bins

if [ ! -x "$CACHE/kube-v${KUBE_VERSION:-1.37.2}/kube-apiserver" ]; then
  say "first run on this machine: building Kubernetes and etcd from their Go modules (about 9 minutes, once)"
fi
PATH="$(hack/tools.sh):$PATH"
say "starting a local Kubernetes control plane"
KUBECONFIG="$(hack/plane.sh up "$STATE")"
export KUBECONFIG PATH
kubectl() { command kubectl "$@" 2> >(grep -v 'version difference' >&2); }

say "starting the Run:ai stand-in (tokens live ${LIFETIME}s)"
target/debug/runai-standin --client my-application-client-id:my-application-client-secret \
  --lifetime-seconds "$LIFETIME" --ca-file "$STATE/standin-ca.pem" --url-file "$STATE/standin-url" \
  > "$STATE/standin.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$STATE/standin-url" ] && break; sleep 0.1; done
URL=$(cat "$STATE/standin-url")
echo "Run:ai stand-in at $URL"

say "installing the CRD"
target/debug/runai-token-sync crd | kubectl apply -f -
wait_crd_served runaicredentials.tokensync.dev
kubectl version 2>/dev/null | grep -i server || true

say "starting the controller (log: $STATE/controller.log)"
target/debug/runai-token-sync run --controller-namespace default > "$STATE/controller.log" 2>&1 &
pids+=($!)

say "applying examples/ (pointed at the stand-in, trusting its CA)"
kubectl create namespace "$NS"
kubectl apply -f examples/credentials-secret.yaml
kubectl create --dry-run=client -o json -f examples/runaicredential.yaml \
  | python3 -c 'import json, sys
cr = json.load(sys.stdin)
cr["spec"]["url"] = sys.argv[1]
cr["spec"]["caBundle"] = open(sys.argv[2]).read()
print(json.dumps(cr))' "$URL" "$STATE/standin-ca.pem" \
  | kubectl apply -f -
kubectl -n "$NS" wait --for condition=Ready --timeout=60s runaicredential/trainer

show() {
  kubectl -n "$NS" get runaicredentials
  local keys expires
  keys=$(kubectl -n "$NS" get secret trainer-runai-token -o go-template='{{range $k, $v := .data}}{{$k}} {{end}}')
  expires=$(kubectl -n "$NS" get secret trainer-runai-token -o jsonpath='{.data.expiresAt}' | base64 -d)
  echo "Secret trainer-runai-token holds keys: $keys"
  echo "The token in it expires at $expires (the token itself is never shown)"
}
say "result"
show

say "the controller keeps the token fresh (about every $((LIFETIME * 2 / 3))s); Ctrl-C to stop"
last=$(kubectl -n "$NS" get secret trainer-runai-token -o jsonpath='{.metadata.annotations.tokensync\.dev/issued-at}')
while true; do
  sleep 5
  now=$(kubectl -n "$NS" get secret trainer-runai-token -o jsonpath='{.metadata.annotations.tokensync\.dev/issued-at}' 2>/dev/null || true)
  if [ -n "$now" ] && [ "$now" != "$last" ]; then
    say "refreshed at $now"
    show
    last=$now
  fi
done
