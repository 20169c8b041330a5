#!/usr/bin/env bash
# Starts a real Kubernetes control plane on 127.0.0.1, without Docker or kubelets:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok faking one
# Node ("kwok-node-0") so that Pods get scheduled and report Running, and CoreDNS
# serving the cluster's DNS (cluster.local) on 127.243.0.10:53.
# Needs root: port 53, and the local route for Pod IPs (lib.sh, POD_CIDR).
# Prints exactly three lines on stdout:
#   KUBECONFIG=/abs/path/admin.kubeconfig   (client cert in group system:masters)
#   KUBECTL=/abs/path/kubectl
#   CLUSTER_DNS=127.243.0.10                (the nameserver for Pods' /etc/resolv.conf)
# Everything else goes to stderr. Reuses a plane that is already running; a partly
# running one is stopped and started afresh (new etcd data, new certificates).
# Pid files, logs, certificates and etcd data live in $SWITCHBOARD_CACHE/run/kube/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

for tool in openssl curl base64 ip; do
  command -v "$tool" >/dev/null || die "$tool is not installed (needed to start the control plane)"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (CoreDNS binds $DNS_IP:53; Pod IPs need a local route)"

# One up.sh at a time (parallel test workers): the others wait, then reuse the plane.
# The lock lives outside run_dir, which a cold start wipes. fd 9 is closed for the
# started processes, or they would hold the lock for their whole life.
mkdir -p "$(dirname "$run_dir")"
exec 9>"$run_dir.lock"
flock -w 1200 9 || die "timed out waiting for $run_dir.lock (another up.sh stuck?)"

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok coredns)
NODE=kwok-node-0
pki="$run_dir/pki"
kubeconfig="$run_dir/admin.kubeconfig"
kubectl="$bin_dir/kubectl"

alive() { # alive NAME: its pid file names a live process running our binary
  local pid
  pid=$(cat "$run_dir/$1.pid" 2>/dev/null) || return 1
  running_binary "$1" "$pid"
}
kc() { "$kubectl" --kubeconfig="$kubeconfig" "$@"; }
print_env() { echo "KUBECONFIG=$kubeconfig"; echo "KUBECTL=$kubectl"; echo "CLUSTER_DNS=$DNS_IP"; }
# Makes every address of POD_CIDR local, as 127.0.0.0/8 is (the same kind of route in
# the kernel's local table), so a test can bind a fake Pod's IP. Idempotent.
pod_route() {
  [ -n "$(ip route show table local type local "$POD_CIDR" 2>/dev/null)" ] ||
    ip route add local "$POD_CIDR" dev lo table local ||
    die "could not add the route for Pod IPs: ip route add local $POD_CIDR dev lo table local"
}

# --- reuse -----------------------------------------------------------------------
running=0
for c in "${COMPONENTS[@]}"; do alive "$c" && running=$((running + 1)); done
if [ "$running" -eq "${#COMPONENTS[@]}" ] && kc get --raw /readyz >/dev/null 2>&1; then
  log "control plane already running; reusing it"
  pod_route
  print_env
  exit 0
fi
if [ "$running" -gt 0 ] || ls "$run_dir"/*.pid >/dev/null 2>&1; then
  log "control plane only partly running; restarting it"
  "$kube_dir/down.sh"
fi

# --- binaries --------------------------------------------------------------------
"$kube_dir/build.sh" >&2

# --- failure reporting -----------------------------------------------------------
fail() { # fail COMPONENT MESSAGE: show its log tail, stop everything, exit 1
  echo "kube: ERROR: $1: $2" >&2
  if [ -f "$run_dir/$1.log" ]; then
    echo "----- last 30 lines of $run_dir/$1.log -----" >&2
    tail -n 30 "$run_dir/$1.log" >&2
    echo "-----" >&2
  fi
  "$kube_dir/down.sh" >&2 || true
  exit 1
}
# wait_for COMPONENT SECONDS CMD...: retry CMD until it succeeds; fail if the
# component dies or time runs out.
wait_for() {
  local c=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$c" || fail "$c" "exited during startup"
    sleep 0.2
  done
  fail "$c" "not ready after ${secs}s (waiting for: $*)"
}
start() { # start NAME ARGS...: run bin/NAME in the background, detached, logging to run/NAME.log
  local name=$1; shift
  # setsid: own session, so Ctrl-C or a test runner killing its process group does not
  # reach it. Closed stdio: it never holds the caller's stdout open (a caller reading our
  # KEY=value lines would otherwise hang). The inner shell writes its own pid and then
  # execs the binary, so the pid file is right whether or not setsid forks. fd 8 (the
  # host-wide lock, see "fresh state") stays open on purpose.
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$run_dir/$name.pid" "$bin_dir/$name" "$@" \
    </dev/null >"$run_dir/$name.log" 2>&1 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do alive "$name" && return 0; sleep 0.1; done
  fail "$name" "did not start"
}
free_port() { # a random local port nobody listens on (tiny race window; fine for tests)
  # Stay below the kernel's ephemeral range (usually 32768-60999): a port taken from it
  # can be grabbed by any outgoing connection (our own components' included) before
  # the component binds it.
  local p
  while :; do
    p=$((10000 + RANDOM % 22000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# --- fresh state -----------------------------------------------------------------
rm -rf "$run_dir"
mkdir -p "$pki"
etcd_port=$(free_port) etcd_peer_port=$(free_port) api_port=$(free_port)
kcm_port=$(free_port) sched_port=$(free_port)
# DNS_IP and POD_CIDR are the host's, not this cache's: one plane per host. CoreDNS binds
# with SO_REUSEPORT, so a second one on DNS_IP (a plane from another SWITCHBOARD_CACHE)
# would not fail but silently answer half of the queries. Every component started below
# inherits fd 8 and so holds this host-wide lock while it runs; a second plane refuses.
exec 8>"$dns_lock"
flock -n 8 || die "another control plane runs on this host (it holds $dns_lock); stop it first"
if (exec 3<>"/dev/tcp/$DNS_IP/53") 2>/dev/null; then
  die "something else already serves $DNS_IP:53"
fi
pod_route

# --- certificates (a throwaway CA, like envtest's TinyCA) ------------------------
log "generating certificates"
(
  cd "$pki"
  ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
  sign() { # sign NAME SUBJECT EXTENSIONS [CA]: NAME.key + NAME.crt signed by CA (default ca)
    ec "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "${4:-ca}.crt" -CAkey "${4:-ca}.key" -CAcreateserial \
      -days 365 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  new_ca() { # new_ca NAME CN: self-signed NAME.key + NAME.crt
    ec "$1.key"
    openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 365 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$1.crt" 2>/dev/null
  }
  new_ca ca switchboard-test-ca
  # Separate CA for the aggregation layer's front proxy, as kubeadm does.
  new_ca front-proxy-ca switchboard-test-front-proxy-ca
  # Serving cert: 127.0.0.1/localhost for us, the in-cluster names for pods' clients.
  sign apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
  # Admin client: the group system:masters bypasses RBAC (what envtest does too).
  sign admin "/O=system:masters/CN=switchboard-admin" \
    "$(printf '%s\n' "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth")"
  # The apiserver proxies to aggregated API servers (e.g. metrics-server) with this.
  sign front-proxy-client "/CN=front-proxy-client" \
    "$(printf '%s\n' "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth")" front-proxy-ca
  # Key pair that signs ServiceAccount tokens (apiserver) and legacy token secrets (KCM).
  # EC (ES256 tokens) rather than RSA: RSA key generation takes ~1 s on a busy machine.
  ec sa.key
  openssl pkey -in sa.key -pubout -out sa.pub
) || fail certificates "openssl failed"

b64() { base64 -w0 <"$1"; }
cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: switchboard
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: switchboard-admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: switchboard
  context: {cluster: switchboard, user: switchboard-admin}
current-context: switchboard
EOF
chmod 600 "$kubeconfig"

# --- etcd ------------------------------------------------------------------------
# --unsafe-no-fsync: the data is thrown away anyway, and fsync dominates latency.
log "starting etcd on 127.0.0.1:$etcd_port"
start etcd --name=default --data-dir="$run_dir/etcd-data" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster="default=http://127.0.0.1:$etcd_peer_port" \
  --unsafe-no-fsync --log-level=warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

# --- kube-apiserver --------------------------------------------------------------
# The requestheader/proxy-client flags set up the aggregation layer. They also publish
# the front-proxy CA in kube-system/extension-apiserver-authentication, which KCM and
# the scheduler read (and log errors about every few seconds when it is missing).
# Default admission plugins stay on: ServiceAccount (served by KCM's controllers below)
# and PodSecurity, so namespaces labelled pod-security.kubernetes.io/enforce=... are enforced.
log "starting kube-apiserver on https://127.0.0.1:$api_port"
start kube-apiserver --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address=127.0.0.1 --secure-port="$api_port" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --authorization-mode=RBAC \
  --service-cluster-ip-range=10.96.0.0/12 --allow-privileged=true \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --requestheader-client-ca-file="$pki/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key" \
  --profiling=false
wait_for kube-apiserver 60 kc get --raw /readyz

# The rest start together and are waited for together (saves a few seconds on 2 cores).
# --- kube-controller-manager -----------------------------------------------------
# All default controllers: garbage collector, deployment/replicaset, namespace deletion,
# serviceaccount (creates "default" SAs, needed by ServiceAccount admission),
# serviceaccount-token, root CA publisher, jobs, statefulsets, node lifecycle, ...
log "starting kube-controller-manager"
start kube-controller-manager --kubeconfig="$kubeconfig" \
  --authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$kcm_port" --leader-elect=false \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --service-cluster-ip-range=10.96.0.0/12 --profiling=false

# --- kube-scheduler --------------------------------------------------------------
log "starting kube-scheduler"
start kube-scheduler --kubeconfig="$kubeconfig" \
  --authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$sched_port" --leader-elect=false --profiling=false

# --- kwok + one fake Node --------------------------------------------------------
# kwok only manages Nodes with our annotation; its stages (kwok-stages.yaml) make the node
# Ready and its pods Running. Pod IPs come from --cidr: POD_CIDR, local addresses (pod_route)
# that EndpointSlices accept, so a test can serve a fake Pod's ports (e.g. a gateway's gRPC
# Stats) on its IP and DNS names of Services lead to them.
log "starting kwok"
start kwok --kubeconfig="$kubeconfig" --config="$kube_dir/kwok-stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-ip=127.0.0.1 --cidr="$POD_CIDR"
kc apply -f - >/dev/null <<EOF || fail kube-apiserver "could not create Node $NODE"
apiVersion: v1
kind: Node
metadata:
  name: $NODE
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: $NODE, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
EOF
# --- CoreDNS -----------------------------------------------------------------------
# The cluster DNS for processes run as Pods (their /etc/resolv.conf names DNS_IP), read from
# this apiserver: a Service's ClusterIP, a headless Service's ready endpoints, StatefulSet
# Pods (<pod>.<service>.<ns>.svc.cluster.local); other names go to this host's resolvers.
# cluster.local is not cached: the kubernetes plugin answers from its informers' memory
# anyway, so a deleted Pod leaves DNS as soon as its EndpointSlice changes; TTL 1 keeps
# clients from caching it long either. Only failures and NXDOMAIN/NODATA are logged.
cat >"$run_dir/Corefile" <<EOF
.:53 {
    bind $DNS_IP
    ready $DNS_IP:8181
    errors
    log . {
        class denial error
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig switchboard
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 1
    }
    forward . /etc/resolv.conf
    cache 5 {
        disable success cluster.local
        disable denial cluster.local
    }
}
EOF
log "starting coredns on $DNS_IP:53"
start coredns -conf "$run_dir/Corefile"
wait_for kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$kcm_port/healthz"
wait_for kube-scheduler 60 curl -fsSk "https://127.0.0.1:$sched_port/healthz"
wait_for kwok 60 kc wait --for=condition=Ready "node/$NODE" --timeout=1s
# The ServiceAccount controller must have created default/default, or pods in the
# default namespace are rejected by ServiceAccount admission.
wait_for kube-controller-manager 30 kc get serviceaccount default -n default
# Ready once its informers (Services, EndpointSlices, Namespaces) have synced.
wait_for coredns 60 curl -fsS "http://$DNS_IP:8181/ready"

log "control plane ready in ${SECONDS}s ($K8S_VERSION; logs in $run_dir)"
print_env
