# Shell functions shared by the scripts in hack/ (sourced, never run).

# Waits until every resource of the CRD named $1 is served: an `Established`
# condition comes first, and for a moment after it the API server may still
# answer 429 while the resource's storage initialises (Kubernetes 1.28+).
# Gives up after $2 seconds (default 60).
wait_crd_served() {
  local crd=$1 deadline=$((SECONDS + ${2:-60}))
  kubectl wait --for condition=established --timeout="${2:-60}s" "crd/$crd" >/dev/null
  until kubectl get "$crd" --all-namespaces --request-timeout=5s -o name >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf 'the resources of CRD %s are not served after %ss:\n' "$crd" "${2:-60}" >&2
      kubectl get "$crd" --all-namespaces -o name >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# Stops every plane under the folder $1 (the tests' own planes, started by
# `OwnPlane` in tests/e2e), then removes the folder.
stop_planes_under() {
  local own
  for own in "$1"/plane-own-*; do
    [ -d "$own" ] && hack/plane.sh down "$own" >/dev/null 2>&1
  done
  rm -rf "$1"
}
