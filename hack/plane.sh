#!/usr/bin/env bash
# A local Kubernetes control plane on loopback: etcd, kube-apiserver (TLS,
# RBAC, token auth) and kube-controller-manager (garbage collector, namespace
# controller), of the version hack/build-kube.sh builds (Kubernetes 1.37.2
# and etcd 3.6 by default; KUBE_VERSION=X.Y.Z selects another). No kubelet:
# Pods never run, every other object behaves as on any cluster.
#
#   hack/plane.sh up   [STATE_DIR]   stop and clear whatever an earlier run left
#                                    in STATE_DIR, start afresh; prints the
#                                    kubeconfig path
#   hack/plane.sh down [STATE_DIR]   stop exactly what `up` started, remove
#                                    STATE_DIR (idempotent)
#   hack/plane.sh env  [STATE_DIR]   print `export KUBECONFIG=...`
#   hack/plane.sh restart-apiserver [STATE_DIR]
#                                    restart kube-apiserver alone (same etcd and port)
#
# STATE_DIR defaults to $RUNAI_TOKEN_SYNC_PLANE or ~/.cache/runai-token-sync/plane;
# a second plane runs beside the first with another STATE_DIR.
#
# Each process runs in a session (and so a process group) of its own: a
# Ctrl-C in the terminal that started it reaches the script that owns the
# plane, never the plane itself, and that script's cleanup stops it by
# group with `down`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
cmd="${1:-}"
STATE="${2:-${RUNAI_TOKEN_SYNC_PLANE:-$CACHE/plane}}"

log() { printf '[plane] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

# Starts a command in a new session. The child writes its own pid, which
# is also its process group's id, to $STATE/NAME.pid before it becomes the
# command: no moment passes with a plane process that no pid file names,
# whether or not the shell runs with job control.
spawn() {
  local name=$1; shift
  rm -f "$STATE/$name.pid"
  # shellcheck disable=SC2016
  setsid sh -c 'echo $$ > "$0" && exec "$@"' "$STATE/$name.pid" "$@" \
    > "$STATE/$name.log" 2>&1 < /dev/null &
  for _ in $(seq 1 50); do [ -s "$STATE/$name.pid" ] && return 0; sleep 0.1; done
  log "$name did not start"; return 1
}

# Stops a process started by `spawn`, with every process of its group:
# SIGTERM, then SIGKILL after 5 s. Only a process whose command line names
# this state folder: after a reboot, a stale pid may be another program's.
stop_one() {
  local name=$1 pid
  pid=$(cat "$STATE/$name.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && grep -qaF -- "$STATE" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$name.pid"
}

down() {
  # A second Ctrl-C must not leave half a plane behind.
  trap '' INT TERM HUP PIPE
  [ -d "$STATE" ] || return 0
  stop_one kube-controller-manager
  stop_one kube-apiserver
  stop_one etcd
  rm -rf "$STATE"
  log "stopped and removed $STATE"
}

certs() {
  local d="$STATE/pki"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=runai-token-sync-local-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' > "$d/san.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/san.ext" -out "$d/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

# Starts kube-apiserver on the ports recorded in the state directory.
start_apiserver() {
  local etcd_port api_port
  etcd_port=$(cat "$STATE/etcd.port"); api_port=$(cat "$STATE/apiserver.port")
  # --endpoint-reconciler-type=none: the `kubernetes` Service's endpoint
  # reconciler refuses a loopback --advertise-address.
  spawn kube-apiserver "$(cat "$STATE/bin")/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
    --endpoint-reconciler-type=none \
    --tls-cert-file="$STATE/pki/apiserver.crt" --tls-private-key-file="$STATE/pki/apiserver.key" \
    --client-ca-file="$STATE/pki/ca.crt" --token-auth-file="$STATE/tokens.csv" \
    --authorization-mode=RBAC --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$STATE/pki/sa.pub" --service-account-signing-key-file="$STATE/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --enable-admission-plugins=NamespaceLifecycle
}

# Restarts kube-apiserver alone (same etcd, same port), for chaos tests;
# returns once it answers again.
restart_apiserver() {
  alive kube-apiserver || { log "no kube-apiserver running in $STATE"; exit 1; }
  stop_one kube-apiserver
  start_apiserver
  local token; token=$(cut -d, -f1 "$STATE/tokens.csv")
  for _ in $(seq 1 120); do
    curl -sf --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $token" \
      "https://127.0.0.1:$(cat "$STATE/apiserver.port")/readyz" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "kube-apiserver not ready 60s after its restart"; exit 1
}

up() {
  local bin
  bin=$("$HERE/build-kube.sh" | tail -n 1)
  # Whatever an earlier run of this state folder left (a plane still
  # running after its owner was killed, or its files), is stopped and
  # cleared first.
  ( down >/dev/null 2>&1 ) || true
  mkdir -p "$STATE"
  echo "$bin" > "$STATE/bin"
  certs
  local etcd_port etcd_peer api_port admin_token
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  admin_token=$(openssl rand -hex 24)
  printf '%s,admin,admin,"system:masters"\n' "$admin_token" > "$STATE/tokens.csv"
  echo "$api_port" > "$STATE/apiserver.port"

  spawn etcd "$bin/etcd" --name plane --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "plane=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync=true

  echo "$etcd_port" > "$STATE/etcd.port"
  start_apiserver

  cat > "$STATE/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: plane
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $STATE/pki/ca.crt
users:
- name: admin
  user:
    token: $admin_token
contexts:
- name: plane
  context: {cluster: plane, user: admin}
current-context: plane
KC
  chmod 600 "$STATE/kubeconfig" "$STATE/tokens.csv"

  log "waiting for kube-apiserver on 127.0.0.1:$api_port"
  for i in $(seq 1 120); do
    if curl -sf --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $admin_token" \
      "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; then
      break
    fi
    if ! alive kube-apiserver || ! alive etcd; then
      log "the control plane died; last lines of its logs:"
      tail -n 20 "$STATE/etcd.log" "$STATE/kube-apiserver.log" >&2 || true
      exit 1
    fi
    [ "$i" -eq 120 ] && { log "kube-apiserver not ready after 60s"; tail -n 20 "$STATE/kube-apiserver.log" >&2; exit 1; }
    sleep 0.5
  done

  spawn kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$STATE/kubeconfig" \
    --controllers=garbagecollector,namespace,clusterrole-aggregation --leader-elect=false --secure-port=0 \
    --use-service-account-credentials=false
  log "ready: export KUBECONFIG=$STATE/kubeconfig"
  echo "$STATE/kubeconfig"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  env) echo "export KUBECONFIG=$STATE/kubeconfig" ;;
  restart-apiserver) restart_apiserver ;;
  # Without it, a deleted namespace stays Terminating with its objects.
  stop-controller-manager) stop_one kube-controller-manager ;;
  *) echo "usage: $0 up|down|env|restart-apiserver|stop-controller-manager [STATE_DIR]" >&2; exit 2 ;;
esac
