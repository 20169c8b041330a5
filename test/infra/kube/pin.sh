#!/usr/bin/env bash
# Regenerates go.mod/go.sum of this wrapper module for a Kubernetes and etcd version.
# Only needed to bump versions; build.sh uses the committed go.mod as is.
# Usage: test/infra/kube/pin.sh 1.36.3 3.6.16
#
# Why a wrapper module: k8s.io/kubernetes requires its staging modules (k8s.io/api,
# k8s.io/apiserver, ...) at v0.0.0 and replaces them with ./staging/..., and etcd's
# server module does the same with ../api. `go install pkg@version` refuses modules
# with replace lines, so we replace every staging module with its published
# v0.<minor>.<patch> (what the Kubernetes maintainers recommend) and build from here.
set -euo pipefail
[ "$#" -eq 2 ] || { echo "usage: $0 K8S_VERSION ETCD_VERSION   (e.g. 1.36.3 3.6.16)" >&2; exit 2; }
k8s="${1#v}" etcd="${2#v}"
cd "$(dirname "$0")"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

rm -f go.mod go.sum
go mod init switchboard.local/test/infra/kube
# Any Go 1.26.x may build this (go mod init would write the local patch version).
go mod edit -go=1.26.0
upstream=$(go mod download -json "k8s.io/kubernetes@v$k8s" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
# Staging modules: required at v0.0.0 upstream; published as v0.<minor>.<patch>.
# shellcheck disable=SC2013 # module paths have no spaces
for m in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$upstream"); do
  go mod edit -replace="$m=$m@v0.${k8s#1.}"
done
# Upstream's godebug lines change runtime behaviour of the binaries; keep them.
# shellcheck disable=SC2013
for d in $(awk '$1 == "godebug" && $2 != "(" {print $2}' "$upstream"); do go mod edit -godebug="$d"; done

go get -tool \
  "k8s.io/kubernetes/cmd/kube-apiserver@v$k8s" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@v$k8s" \
  "k8s.io/kubernetes/cmd/kube-scheduler@v$k8s" \
  "k8s.io/kubernetes/cmd/kubectl@v$k8s" \
  "go.etcd.io/etcd/server/v3@v$etcd"
go mod tidy
echo "pinned k8s.io/kubernetes v$k8s, go.etcd.io/etcd/server/v3 v$etcd" >&2
