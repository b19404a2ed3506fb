#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager v1.20.2 from Debian's
# `kubernetes` source package into a cache outside the checkout, and installs
# the Debian packages the local control plane needs. Does nothing when the
# binaries are already cached.
set -euo pipefail

CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
BIN="$CACHE/kube-v1.20.2"
SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"

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

install_packages etcd-server openssl curl ca-certificates

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
  exit 0
fi

install_packages golang-1.19-go golang-github-modern-go-reflect2-dev make rsync dpkg-dev xz-utils

log "building kube-apiserver and kube-controller-manager v1.20.2 from Debian's source package"
log "this happens once per machine and takes about 5-10 minutes on 2 cores; the result is cached in $BIN"

WORK="$CACHE/build"
rm -rf "$WORK"
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial" "$WORK/src"
cat > "$WORK/apt/sources.list" <<SRC
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian-security bookworm-security main
SRC
APT_OPTS=(-o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache" -o "APT::Sandbox::User=root")
log "fetching the source package"
apt-get "${APT_OPTS[@]}" update -qq
(cd "$WORK/src" && apt-get "${APT_OPTS[@]}" source --download-only -qq "kubernetes=$SRC_VERSION")
orig=$(ls "$WORK/src"/kubernetes_*.orig.tar.* | head -n1)
log "unpacking $(basename "$orig")"
mkdir -p "$WORK/tree"
tar -xf "$orig" -C "$WORK/tree" --strip-components=1

# The vendored reflect2 v1.0.1 crashes under Go >= 1.18 on the first
# custom-resource write; Debian's v1.0.2 copy fixes it.
rm -rf "$WORK/tree/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$WORK/tree/vendor/github.com/modern-go/reflect2"

log "compiling (progress below)"
(
  cd "$WORK/tree"
  export PATH="/usr/lib/go-1.19/bin:$PATH" GOPROXY=off GOFLAGS=-mod=vendor \
    KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" \
    KUBE_BUILD_PLATFORMS=linux/amd64 GOLDFLAGS="-s -w"
) 2>&1 | sed -u 's/^/[build-kube]   /' >&2

mkdir -p "$BIN"
cp "$WORK/tree/_output/local/bin/linux/amd64/kube-apiserver" \
   "$WORK/tree/_output/local/bin/linux/amd64/kube-controller-manager" "$BIN/"
rm -rf "$WORK"
log "done: $BIN"
