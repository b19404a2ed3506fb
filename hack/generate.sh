#!/usr/bin/env bash
# Regenerates every generated file: the CRD (from the Rust types) under crds/
# and in the Helm chart, and the plain manifests rendered from the chart.
# Tests fail when any of them is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -- crd > crds/runaicredentials.tokensync.dev.yaml
cp crds/runaicredentials.tokensync.dev.yaml deploy/helm/runai-token-sync/crds/
hack/render-manifests.sh
