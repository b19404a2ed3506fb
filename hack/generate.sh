#!/usr/bin/env bash
# Regenerates every generated file: the CRDs (from the Rust types) under
# crds/, the chart's template of them (templates/crds.yaml: installed and
# upgraded with the release, kept on uninstall, `crds.enabled`), and the
# plain manifests rendered from the chart. Tests fail when any of them is
# stale.
set -euo pipefail
cd "$(dirname "$0")/.."
template=deploy/helm/runai-token-sync/templates/crds.yaml
{
  echo "{{- /* Generated from the Rust types by hack/generate.sh; do not edit. */ -}}"
  echo "{{- if .Values.crds.enabled }}"
} > "$template.tmp"
first=1
for kind in RunaiCredential ClusterRunaiCredential; do
  file="$(echo "$kind" | tr '[:upper:]' '[:lower:]')s.tokensync.dev.yaml"
  cargo run --quiet -- crd --kind "$kind" > "crds/$file"
  [ "$first" = 1 ] || echo "---" >> "$template.tmp"
  first=0
  # Kept when the release is uninstalled: deleting a CRD deletes every
  # credential of that kind.
  sed 's/^metadata:$/metadata:\n  annotations:\n    helm.sh\/resource-policy: keep/' "crds/$file" >> "$template.tmp"
done
echo "{{- end }}" >> "$template.tmp"
mv "$template.tmp" "$template"
rm -rf deploy/helm/runai-token-sync/crds
hack/render-manifests.sh
