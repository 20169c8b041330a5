#!/usr/bin/env bash
# Builds the control-plane binaries from source into
#   ${SWITCHBOARD_CACHE:-~/.cache/switchboard}/kube-<k8s version>/bin
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd come from
# this wrapper module (go.mod pins k8s.io/kubernetes, its staging modules and etcd);
# coredns from the second wrapper module in coredns/ (our main package, only the plugins
# we use); kwok comes from `go install` at a pinned version. Binaries already built for the
# pinned versions are skipped (a <name>.version stamp records what each was built from).
# Cold build on 2 cores takes a while (see README numbers); run it with `nice`.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

mkdir -p "$bin_dir"

# What each binary must be built from; a mismatching or missing stamp means rebuild.
want() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    coredns) echo "$COREDNS_VERSION" ;;
    *) echo "$K8S_VERSION" ;;
  esac
}
missing=()
for b in "${BINARIES[@]}"; do
  if [ -x "$bin_dir/$b" ] && [ "$(cat "$bin_dir/$b.version" 2>/dev/null)" = "$(want "$b")" ]; then continue; fi
  missing+=("$b")
done
[ "${#missing[@]}" -eq 0 ] && { log "binaries up to date in $bin_dir"; exit 0; }
log "building ${missing[*]} into $bin_dir (this takes minutes when cold)"
command -v go >/dev/null || die "go is not installed (need Go >= 1.26 on PATH to build ${missing[*]})"
# Never let go download another toolchain: we only reach the module proxy.
export GOTOOLCHAIN=local

# Build into a temp dir and move into place, so an interrupted build never leaves a
# half-written binary that a later run would skip.
tmp="$bin_dir/.tmp.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

# Without these, /version reports v0.0.0-master+$Format:%H$, which breaks Helm's
# kubeVersion checks and anything else that parses the server version. Kubernetes sets
# them in both packages (hack/lib/version.sh).
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

kube_pkgs=()
for b in "${missing[@]}"; do
  case "$b" in kube-*|kubectl) kube_pkgs+=("k8s.io/kubernetes/cmd/$b") ;; esac
done
cd "$kube_dir"
if [ "${#kube_pkgs[@]}" -gt 0 ]; then
  # One go build for all of them, so shared packages compile once. -o DIR names each
  # binary after its package directory.
  go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmp/" "${kube_pkgs[@]}"
fi
if [[ " ${missing[*]} " == *" etcd "* ]]; then
  # The etcd main package is the module root; without -o the binary would be "v3".
  go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
fi
if [[ " ${missing[*]} " == *" coredns "* ]]; then
  # Its own module: CoreDNS requires newer k8s.io/client-go, grpc, ... than Kubernetes
  # v1.36 does, and sharing go.mod would change what the Kubernetes binaries build from.
  (cd "$kube_dir/coredns" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/coredns" .)
fi
if [[ " ${missing[*]} " == *" kwok "* ]]; then
  # kwok's go.mod has no replace lines, so a plain go install at a pinned version works.
  # Run it outside this module so our go.mod does not get in the way.
  (cd "$tmp" && GOBIN="$tmp" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
fi
for b in "${missing[@]}"; do
  [ -x "$tmp/$b" ] || die "build produced no $b"
  mv -f "$tmp/$b" "$bin_dir/$b"
  want "$b" > "$bin_dir/$b.version"
done
log "built ${missing[*]}"
