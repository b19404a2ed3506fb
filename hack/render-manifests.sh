#!/usr/bin/env bash
# Renders the plain manifests in deploy/ from the Helm chart, for users
# without Helm: deploy/runai-token-sync.yaml (CRD included, default values,
# namespace runai-token-sync). A test keeps the committed file in sync.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(hack/tools.sh):$PATH"
{
  echo "# Rendered from deploy/helm/runai-token-sync by hack/render-manifests.sh; do not edit."
  echo "# Install: kubectl create namespace runai-token-sync && kubectl apply -f deploy/runai-token-sync.yaml"
  helm template runai-token-sync deploy/helm/runai-token-sync --namespace runai-token-sync --include-crds
} > deploy/runai-token-sync.yaml
echo "wrote deploy/runai-token-sync.yaml" >&2
