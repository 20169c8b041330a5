# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts sourcing this
# Shared settings for build.sh, up.sh and down.sh (sourced, not run).
# Versions of Kubernetes and etcd come from the committed go.mod of this wrapper
# module, CoreDNS's from the second wrapper module in coredns/; kwok is installed with
# `go install`, so its version is pinned here.
kube_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KWOK_VERSION=v0.8.0
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$kube_dir/go.mod")
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$kube_dir/go.mod")
# (go mod tidy writes a lone direct requirement on one line: require MODULE VERSION)
COREDNS_VERSION=$(awk 'NF >= 2 && $(NF-1) == "github.com/coredns/coredns" {print $NF}' "$kube_dir/coredns/go.mod")
if [ -z "$K8S_VERSION" ] || [ -z "$ETCD_VERSION" ] || [ -z "$COREDNS_VERSION" ]; then
  echo "kube: cannot read versions from $kube_dir/go.mod and $kube_dir/coredns/go.mod" >&2
  exit 1
fi

cache_root="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"
bin_dir="$cache_root/kube-$K8S_VERSION/bin"   # built binaries, keyed by Kubernetes version
run_dir="$cache_root/run/kube"                # pid files, logs, certs, etcd data of the running plane
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok coredns)

# Cluster DNS (CoreDNS) listens on port 53 of this loopback address (all of 127/8 is
# local on Linux; no interface needs configuring). Fixed, so one plane per host.
DNS_IP=127.243.0.10
# kwok's Pod IPs. Not loopback: the API server refuses 127.0.0.0/8 in EndpointSlices
# ("may not be in the loopback range"), so Services of Pods with loopback IPs never get
# endpoints and DNS has nothing to answer with. 198.18.0.0/15 is reserved for network
# benchmarks (RFC 2544) and never a real network; up.sh makes this half of it local
# (`ip route add local ... dev lo`, like 127/8), so a test can still serve a fake Pod's
# ports on its IP. The route stays after down.sh (harmless; other processes may use it):
# `ip route del local 198.18.0.0/16 dev lo table local` removes it.
POD_CIDR=198.18.0.0/16
# Held by the running plane's processes (up.sh): both addresses above are the host's.
dns_lock=/tmp/switchboard-cluster-dns.lock

# running_binary NAME PID: PID is alive and runs our bin/NAME. A recycled pid runs
# something else; a zombie (exited, not yet reaped) has no executable at all. The
# kernel appends " (deleted)" when the binary was rebuilt while running.
running_binary() { [[ "$(readlink "/proc/$2/exe" 2>/dev/null)" == "$bin_dir/$1"* ]]; }

log() { echo "kube: [${SECONDS}s] $*" >&2; }
die() { echo "kube: ERROR: $*" >&2; exit 1; }
