# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts sourcing this
# Shared settings for build.sh, up.sh and down.sh (sourced, not run).
# Versions of Kubernetes and etcd come from the committed go.mod of this wrapper
# module; kwok is installed with `go install`, so its version is pinned here.
kube_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KWOK_VERSION=v0.8.0
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$kube_dir/go.mod")
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$kube_dir/go.mod")
if [ -z "$K8S_VERSION" ] || [ -z "$ETCD_VERSION" ]; then
  echo "kube: cannot read versions from $kube_dir/go.mod" >&2
  exit 1
fi

cache_root="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"
bin_dir="$cache_root/kube-$K8S_VERSION/bin"   # built binaries, keyed by Kubernetes version
run_dir="$cache_root/run/kube"                # pid files, logs, certs, etcd data of the running plane
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)

# running_binary NAME PID: PID is alive and runs our bin/NAME. A recycled pid runs
# something else; a zombie (exited, not yet reaped) has no executable at all. The
# kernel appends " (deleted)" when the binary was rebuilt while running.
running_binary() { [[ "$(readlink "/proc/$2/exe" 2>/dev/null)" == "$bin_dir/$1"* ]]; }

log() { echo "kube: [${SECONDS}s] $*" >&2; }
die() { echo "kube: ERROR: $*" >&2; exit 1; }
