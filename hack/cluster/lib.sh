# shellcheck shell=bash
# Shared settings for the hack/cluster scripts. Sourced, never executed.
# Every knob can be overridden from the environment; the defaults are what CI uses.

set -euo pipefail

BGQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PATH="/usr/local/go/bin:/usr/sbin:/sbin:$PATH"

K8S_VERSION="${BGQ_K8S_VERSION:-v1.36.3}"
HELM_VERSION="${BGQ_HELM_VERSION:-v3.22.0}"
CACHE_DIR="${BGQ_CACHE_DIR:-$HOME/.cache/bgq}"
K8S_BIN="$CACHE_DIR/k8s-$K8S_VERSION/bin"
HELM_BIN="$CACHE_DIR/helm-$HELM_VERSION/bin/helm"
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)
# KEDA (only for the live autoscaling benchmark: `install --with keda`, hack/cluster/keda).
KEDA_VERSION="${BGQ_KEDA_VERSION:-v2.21.0}"
KEDA_DIR="$CACHE_DIR/keda-$KEDA_VERSION"
KEDA_BIN="$KEDA_DIR/bin"

# One run directory holds everything of a running cluster: PKI, configs, logs, pids, state.
RUN_DIR="${BGQ_CLUSTER_DIR:-/tmp/bgq-cluster}"
KUBECONFIG_PATH="$RUN_DIR/kubeconfig"

# The whole cluster (its daemons, the node IP, the pod bridge, kube-proxy's iptables rules, the
# network sysctls) lives in a network namespace of its own, so the host's root namespace keeps
# its addresses, routes, iptables rules and network sysctls untouched. Host-side tools reach
# the API server through a loopback portal (hack/cluster/portal.py): https://127.0.0.1:$API_PORT.
NETNS="${BGQ_NETNS:-bgq-cluster}"
NETNS_PATH="/run/netns/$NETNS"
IN_NETNS=(nsenter "--net=$NETNS_PATH")
# Inside that namespace: the node IP lives on one end of a veth pair that leads nowhere; pods
# live on a CNI bridge whose gateway address is also the address pods use for the "host"
# (services the tests start in the cluster's namespace, e.g. redis-server).
NODE_NAME="${BGQ_NODE_NAME:-bgq-node}"
NODE_IP="${BGQ_NODE_IP:-10.213.0.1}"
VETH_HOST="bgq-node0"
VETH_PEER="bgq-node1"
POD_CIDR="${BGQ_POD_CIDR:-10.214.0.0/24}"
BRIDGE="bgq-br0"
BRIDGE_IP="${BGQ_BRIDGE_IP:-10.214.0.1}"
# A fixed, locally administered MAC for the bridge (02:... = local, unicast). Unpinned, a Linux
# bridge takes the lowest MAC of its ports and changes it whenever that pod leaves; the other pods
# keep the old gateway MAC in their ARP cache and lose the host (Redis, API server, DNS) for
# 1.5 to 30+ s (issue 9). Pinned, the gateway MAC never changes.
BRIDGE_MAC="${BGQ_BRIDGE_MAC:-02:62:67:71:00:01}"
SERVICE_CIDR="${BGQ_SERVICE_CIDR:-10.215.0.0/24}"
API_SERVICE_IP="10.215.0.1"
DNS_SERVICE_IP="10.215.0.10"
API_PORT="${BGQ_API_PORT:-6443}"
ETCD_PORT="${BGQ_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${BGQ_ETCD_PEER_PORT:-23800}"

# CoreDNS (cluster DNS, built from the Go module proxy like Kubernetes; hack/cluster/install).
COREDNS_VERSION="${BGQ_COREDNS_VERSION:-v1.14.7}"
COREDNS_BIN="$CACHE_DIR/coredns-$COREDNS_VERSION/bin/coredns"

CONTAINERD_SOCK="$RUN_DIR/containerd/containerd.sock"
CTR=(ctr --address "$CONTAINERD_SOCK" -n k8s.io)
PAUSE_IMAGE="bgq.local/pause:1"

APT_PACKAGES=(etcd-server etcd-client containerd runc containernetworking-plugins busybox-static
  debootstrap iptables iproute2 redis-server openssl conntrack procps)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_root() {
  [[ $EUID -eq 0 ]] || die "$1 needs root (network namespaces, containerd, kubelet). Run it with sudo."
}

# ---- process and state helpers (used by up/down/status) ----
PID_DIR="$RUN_DIR/pids"
LOG_DIR="$RUN_DIR/logs"
STATE_DIR="$RUN_DIR/state"

pid_of() { [[ -f "$PID_DIR/$1.pid" ]] && cat "$PID_DIR/$1.pid"; }
# running PID: exists and is not a zombie (PID 1 of these VMs may reap orphans late).
running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}
alive() { local p; p="$(pid_of "$1" 2>/dev/null)" && [[ -n "$p" ]] && running "$p"; }

# start NAME CMD...: run detached in its own session (survives the caller), log and pid in RUN_DIR.
start() {
  local name="$1"; shift
  if alive "$name"; then return 0; fi
  mkdir -p "$PID_DIR" "$LOG_DIR"
  # 9>&-: the daemon must not inherit (and so hold forever) the up/down lock.
  setsid nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null 9>&- &
  echo $! > "$PID_DIR/$name.pid"
}

# stop NAME [GRACE_SECONDS]: SIGTERM, then SIGKILL after the grace period.
stop() {
  local name="$1" grace="${2:-5}" p i
  p="$(pid_of "$name" 2>/dev/null)" || return 0
  if [[ -n "$p" ]] && running "$p"; then
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do running "$p" || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do running "$p" || break; sleep 0.1; done
  fi
  rm -f "$PID_DIR/$name.pid"
}

# wait_until SECONDS WHAT CMD...: poll CMD every 0.1 s.
wait_until() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# start_ns NAME CMD...: `start` inside the cluster's network namespace (nsenter execs CMD, so
# the pid file holds the daemon's own pid; the mount namespace is shared, unlike `ip netns exec`
# which remounts /sys and would hide the cgroup tree from the kubelet and containerd).
start_ns() { local name="$1"; shift; start "$name" "${IN_NETNS[@]}" "$@"; }
in_ns() { "${IN_NETNS[@]}" "$@"; }
# the namespace is there when its file is a bind mount of a namespace (nsfs), not a bare file
netns_exists() { [[ "$(stat -f -c %T "$NETNS_PATH" 2>/dev/null)" == nsfs ]]; }

# The host's loopback portal to the API server (see NETNS above). Idempotent.
start_portal() {
  start portal python3 "$BGQ_ROOT/hack/cluster/portal.py" --netns "$NETNS_PATH" \
    --forward "127.0.0.1:$API_PORT=$NODE_IP:$API_PORT"
}

# The cluster DNS: CoreDNS's kubernetes plugin on the pod-bridge address inside the cluster's
# namespace; pods use it via the kubelet's clusterDNS. Idempotent.
start_dns() {
  start_ns dns "$COREDNS_BIN" -conf "$RUN_DIR/etc/Corefile"
}

# Pin the pod bridge's MAC (see BRIDGE_MAC). Idempotent: a no-op when it already has that MAC.
pin_bridge_mac() {
  local current
  # (not /sys/class/net: the host's sysfs shows the root namespace's links, whoever reads it)
  current="$(ip -n "$NETNS" -o link show dev "$BRIDGE" 2>/dev/null)" || return 0
  current="$(sed -n 's|.*link/ether \([0-9a-f:]*\).*|\1|p' <<<"$current")"
  [[ -n "$current" ]] || return 0
  if [[ "$current" != "$BRIDGE_MAC" ]]; then
    # on a running cluster: announce the new MAC (gratuitous ARP) so running pods update their
    # ARP cache at once instead of losing the host until the stale entry times out
    in_ns sysctl -qw "net.ipv4.conf.$BRIDGE.arp_notify=1" || true
    ip -n "$NETNS" link set dev "$BRIDGE" address "$BRIDGE_MAC"
    log "pinned the MAC of $BRIDGE: $current -> $BRIDGE_MAC"
  fi
}

kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
CURL_ADMIN=(curl -sf --max-time 2 --cacert "$RUN_DIR/pki/ca.crt" --cert "$RUN_DIR/pki/admin.crt"
  --key "$RUN_DIR/pki/admin.key")
# The API server ready inside the cluster's namespace, and through the host's loopback portal.
api_ready_in_ns() { netns_exists && in_ns "${CURL_ADMIN[@]}" "https://$NODE_IP:$API_PORT/readyz" >/dev/null; }
api_ready() { "${CURL_ADMIN[@]}" "https://127.0.0.1:$API_PORT/readyz" >/dev/null; }
node_ready() {
  [[ "$(kubectl_admin get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# Serialise up/down across concurrent callers (several pytest sessions may start at once).
cluster_lock() {
  [[ -n "${BGQ_CLUSTER_LOCKED:-}" ]] && return 0  # a parent (up calling down) holds it
  export BGQ_CLUSTER_LOCKED=1
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/cluster-updown.lock"
  flock -w 600 9 || die "timed out waiting for $CACHE_DIR/cluster-updown.lock (another up/down running?)"
}
