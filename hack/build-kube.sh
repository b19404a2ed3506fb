#!/usr/bin/env bash
# Builds the local control plane's binaries from their Go modules and caches
# them outside the checkout, one folder per version:
#   $CACHE/kube-vX.Y.Z/{kube-apiserver,kube-controller-manager}
#   $CACHE/etcd-vA.B.C/etcd
#
#   hack/build-kube.sh [KUBE_VERSION]
#
# KUBE_VERSION defaults to $KUBE_VERSION or 1.37.2. Prints, on its last line of
# stdout, the folder holding all three binaries (etcd linked in), so that
# `BIN=$(hack/build-kube.sh)` is all a caller needs. Idempotent: does nothing
# when they are cached.
#
# Without KUBE_VERSION set, a version the Go module proxy refuses falls back
# to the next older one of DEFAULT_VERSIONS, saying which module was refused.
#
# Why not `go install k8s.io/kubernetes/cmd/kube-apiserver@vX`: that module's
# go.mod replaces its staging modules (k8s.io/api, k8s.io/apiserver, ...) by
# `./staging/...` folders that are not in the module zip. A throwaway main
# module requires k8s.io/kubernetes and replaces each staging module by its
# own release (v0.Y.Z), read from that version's go.mod as the proxy serves
# it.
set -euo pipefail

CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
DEFAULT_VERSIONS=(1.37.2 1.36.3 1.35.4 1.34.4)
# Go's caches for these builds live beside the binaries, so that removing
# $CACHE removes all of it.
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOPATH="$CACHE/go/path"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -modcacherw -buildvcs=false" GOPROXY="${GOPROXY:-https://proxy.golang.org}"

log() { printf '[build-kube] %s\n' "$*" >&2; }

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Prefixes every line of a build's output, so that progress shows as it goes.
progress() { sed -u 's/^/[build-kube]   /' >&2; }

build_etcd() {
  local out="$CACHE/etcd-v$ETCD_VERSION"
  [ -x "$out/etcd" ] && return 0
  need_go
  log "building etcd v$ETCD_VERSION from go.etcd.io/etcd/server/v3 (once; about 2 minutes, 30 MB)"
  BUILT=1
  local work; work=$(mktemp -d "$CACHE/etcd-build.XXXXXX")
  (
    cd "$work"
    go mod init local/etcd-build >/dev/null 2>&1
    # In a module that only requires etcd, the server's own `replace` lines
    # do not apply; its go.mod's requirements resolve from the proxy.
    go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" 2>&1 | progress
    [ "${PIPESTATUS[0]}" -eq 0 ]
    go build -trimpath -ldflags "-s -w" -o "$work/etcd" go.etcd.io/etcd/server/v3
  ) || { rm -rf "$work"; return 1; }
  mkdir -p "$out" && mv "$work/etcd" "$out/etcd.tmp" && mv "$out/etcd.tmp" "$out/etcd" || return 1
  rm -rf "$work"
  log "etcd v$ETCD_VERSION: $out/etcd"
}

# Builds kube-apiserver and kube-controller-manager of one version. Returns 3
# when the proxy refuses a module (the caller may fall back), 1 on any other
# failure.
build_kube() {
  local version=$1 out="$CACHE/kube-v$1"
  if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ]; then return 0; fi
  local minor=${version#*.}; minor=${minor%%.*}
  local staging="0.${version#*.}"
  need_go
  log "building kube-apiserver and kube-controller-manager v$version from the Go module proxy"
  log "once per machine and version: about 9 minutes on 2 cores and 5 GB of disk while it builds;"
  log "kept: 250 MB of binaries and 1.4 GB of Go modules (in $CACHE/go/mod, shared by the versions)"
  BUILT=1
  local work; work=$(mktemp -d "$CACHE/kube-build.XXXXXX")
  local rc=0
  (
    cd "$work"
    go mod init local/kube-build >/dev/null 2>&1
    log "fetching k8s.io/kubernetes@v$version's go.mod"
    local modfile
    go mod download -json "k8s.io/kubernetes@v$version" > "$work/download.json" 2>"$work/download.err" || true
    modfile=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("GoMod",""))' \
      "$work/download.json" 2>/dev/null) || true
    if [ -z "$modfile" ] || [ ! -f "$modfile" ]; then
      local why
      why=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("Error",""))' \
        "$work/download.json" 2>/dev/null || true)
      log "the Go module proxy refused k8s.io/kubernetes@v$version: ${why:-$(tr '\n' ' ' < "$work/download.err")}"
      exit 3
    fi
    go mod edit -require="k8s.io/kubernetes@v$version"
    # Every staging module that go.mod replaces by ./staging/..., replaced
    # here by its own release.
    local mods
    mods=$(sed -nE 's#^[[:space:]]*(replace[[:space:]]+)?(k8s\.io/[A-Za-z0-9._/-]+)[[:space:]]+=>[[:space:]]+\./staging/.*#\2#p' "$modfile")
    [ -n "$mods" ] || { log "no staging modules found in $modfile"; exit 1; }
    log "replacing $(echo "$mods" | wc -l) staging modules by their v$staging releases"
    local m
    for m in $mods; do go mod edit -replace="$m=$m@v$staging"; done
    local godebug
    godebug=$(sed -nE 's/^godebug[[:space:]]+(.*)$/\1/p' "$modfile" | head -n1)
    [ -z "$godebug" ] || go mod edit -godebug="$godebug"
    log "resolving dependencies (downloads only)"
    if ! go list -deps k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      >/dev/null 2> >(tee "$work/list.err" | progress); then
      if grep -qE '403 Forbidden|404 Not Found|410 Gone|not available|not found: |unknown revision|invalid version' "$work/list.err"; then
        log "the Go module proxy refused a module needed by v$version:"
        grep -E '403 Forbidden|404 Not Found|410 Gone|not available|not found: |unknown revision|invalid version' "$work/list.err" | head -n 5 | progress
        exit 3
      fi
      exit 1
    fi
    local ld="-s -w" pkg
    local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ld+=" -X $pkg.gitCommit=v$version -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    log "compiling (each package is listed as it is built)"
    go build -v -trimpath -pgo=off -ldflags "$ld" -o "$work/bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager 2>&1 \
      | awk '{ n++; if (n % 25 == 0 || $0 !~ /^[a-z0-9.\/_-]+$/) { print "(" n " packages) " $0; fflush() } }' | progress
    [ -x "$work/bin/kube-apiserver" ] && [ -x "$work/bin/kube-controller-manager" ]
  ) || rc=$?
  if [ "$rc" -ne 0 ]; then rm -rf "$work"; return "$rc"; fi
  mkdir -p "$out" && mv "$work/bin/kube-apiserver" "$work/bin/kube-controller-manager" "$out/" || return 1
  rm -rf "$work"
  log "kube v$version: $out"
}

mkdir -p "$CACHE"
# One build at a time per cache (a demo and a test run started together);
# the second waits, then finds the binaries there. A build interrupted
# earlier left its work folder: cleared under the lock.
exec 9> "$CACHE/build.lock"
if ! flock -n 9; then
  log "another build is running in $CACHE; waiting for it"
  flock 9
fi
rm -rf "$CACHE"/kube-build.* "$CACHE"/etcd-build.*
install_packages openssl curl ca-certificates python3

# Go only when something is to be built.
need_go() {
  command -v go >/dev/null && return 0
  log "Go 1.26 or later is needed to build the control plane (Debian 12's golang is too old)"
  exit 1
}

if [ -n "${1:-${KUBE_VERSION:-}}" ]; then
  candidates=("${1:-$KUBE_VERSION}")
else
  candidates=("${DEFAULT_VERSIONS[@]}")
fi

built="" BUILT=0
for v in "${candidates[@]}"; do
  v=${v#v}
  rc=0; build_kube "$v" || rc=$?
  if [ "$rc" -eq 0 ]; then built=$v; break; fi
  if [ "$rc" -eq 3 ] && [ "${#candidates[@]}" -gt 1 ]; then
    log "falling back from v$v to the next older version"
    continue
  fi
  log "building Kubernetes v$v failed"; exit 1
done
[ -n "$built" ] || { log "no Kubernetes version of ${candidates[*]} could be built"; exit 1; }
build_etcd
if [ "$BUILT" -eq 1 ]; then
  # The compiled packages serve no later build: each version's binaries are
  # kept, and another version compiles other packages. The modules stay.
  log "clearing Go's build cache ($(du -sh "$GOCACHE" 2>/dev/null | cut -f1)) in $GOCACHE"
  go clean -cache
fi
ln -sfn "../etcd-v$ETCD_VERSION/etcd" "$CACHE/kube-v$built/etcd"
echo "$CACHE/kube-v$built"
