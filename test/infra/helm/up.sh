#!/usr/bin/env bash
# Installs Helm 3 (first time) with `go install` into a version-keyed cache and prints
#   HELM=/abs/path/helm
# on stdout; everything else goes to stderr. Helm's go.mod has no replace lines, so a
# plain `go install helm.sh/helm/v3/cmd/helm@version` works (Go >= 1.26 needed).
set -euo pipefail
HELM_VERSION=v3.22.0
cache_root="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"
bin_dir="$cache_root/helm-$HELM_VERSION/bin"
helm="$bin_dir/helm"

if [ ! -x "$helm" ]; then
  command -v go >/dev/null || { echo "helm: ERROR: go is not installed (need Go >= 1.26 on PATH to build helm $HELM_VERSION)" >&2; exit 1; }
  echo "helm: building helm $HELM_VERSION into $bin_dir (a few minutes, first time only)" >&2
  mkdir -p "$bin_dir"
  # Install into a temp dir first so an interrupted build never leaves a broken binary.
  tmp=$(mktemp -d "$bin_dir/.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # Without the version ldflag, `helm version` prints only "v3.22". The k8sVersion ones
  # set the default Kubernetes version of `helm template`/`lint` (Helm's Makefile derives
  # them from its client-go v0.37, i.e. Kubernetes 1.37).
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=37"
  done
  # Run outside any module (the repo root has none, but be explicit); static like upstream.
  (cd "$tmp" && GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$tmp" \
    go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >&2
  mv -f "$tmp/helm" "$helm"
fi
echo "HELM=$helm"
