#!/usr/bin/env bash
# Regenerates every generated file: the CRD (from the Rust types) under crds/
# and in the Helm chart, and the plain manifests rendered from the chart.
# Tests fail when any of them is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
for kind in RunaiCredential ClusterRunaiCredential; do
  file="$(echo "$kind" | tr '[:upper:]' '[:lower:]')s.tokensync.dev.yaml"
  cargo run --quiet -- crd --kind "$kind" > "crds/$file"
  cp "crds/$file" deploy/helm/runai-token-sync/crds/
done
hack/render-manifests.sh
