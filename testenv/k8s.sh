#!/usr/bin/env bash
# A real single-node Kubernetes v1.20.2 cluster on this machine, built from Debian's own
# `kubernetes` source package (no kind, no registry, no prebuilt binaries reachable here):
# etcd, kube-apiserver, controller-manager, scheduler, kubelet (dockershim on the local Docker
# engine) and kube-proxy. Pods are real containers; NodePorts answer on 127.0.0.1.
#
#   testenv/k8s.sh build    build the five binaries once (cached by Debian version)
#   testenv/k8s.sh up       start the cluster (idempotent; ~1 s when already up)
#   testenv/k8s.sh down     stop it and leave no process, iptables rule, mount or link behind
#   testenv/k8s.sh status
#   testenv/k8s.sh check-clean   exit 1 if anything of the cluster is left (after `down`)
#
# The kubeconfig is written to $K8S_HOME/kubeconfig (default /var/lib/labctl-k8s/kubeconfig).
# Facts behind each choice: ../shared/TESTENV.md, "Kubernetes".
set -euo pipefail

LABCTL_CACHE=${LABCTL_CACHE:-/var/cache/labctl}
K8S_HOME=${K8S_HOME:-/var/lib/labctl-k8s}
SRC_CACHE="$LABCTL_CACHE/k8s"
NODE_IP=10.99.0.1
NODE_LINK=labctl-node0
CNI_BRIDGE=labctl-cni0
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
NODE_NAME=labctl-node
PAUSE_IMAGE=k8s.gcr.io/pause:3.2
RUNC_WRAPPER=/usr/local/lib/labctl/runc-no-negative-oom
HERE=$(cd "$(dirname "$0")" && pwd)

say() { printf '[k8s] %s\n' "$*" >&2; }

apt_private() {
  # Debian's source lists, given to apt privately: the system's sources stay as they are.
  mkdir -p "$SRC_CACHE/apt/lists/partial"
  echo "deb-src http://deb.debian.org/debian bookworm main" >"$SRC_CACHE/apt/sources.list"
  APT_PRIVATE=(-o "Dir::Etc::SourceList=$SRC_CACHE/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$SRC_CACHE/apt/lists")
}

# shellcheck source=testenv/lib.sh
. "$HERE/lib.sh"

source_version() {
  apt_private
  [ -n "$(ls -A "$SRC_CACHE/apt/lists" 2>/dev/null | grep -v partial)" ] || apt-get "${APT_PRIVATE[@]}" update -q >/dev/null
  apt-cache "${APT_PRIVATE[@]}" showsrc kubernetes | awk '/^Version:/ {print $2; exit}'
}

BIN_NAMES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

bin_dir() {
  # Keyed by the Debian version: a new source package means a new build.
  local version
  version=$(cat "$SRC_CACHE/version" 2>/dev/null || true)
  [ -n "$version" ] || version=$(source_version)
  echo "$SRC_CACHE/bin-$version"
}

build() {
  apt_install golang-1.19-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev gcc libc6-dev
  local version bin
  version=$(source_version)
  bin="$SRC_CACHE/bin-$version"
  if [ -x "$bin/kube-proxy" ] && [ -f "$bin/pause" ]; then echo "$version" >"$SRC_CACHE/version"; return 0; fi
  say "building Kubernetes $version from Debian's source package (about 6-10 min, once)"
  local work="$SRC_CACHE/src"
  rm -rf "$work" && mkdir -p "$work"
  (cd "$work" && apt-get "${APT_PRIVATE[@]}" source -q kubernetes >/dev/null 2>&1)
  local tree
  tree=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -1)
  # The vendored reflect2 1.0.1 crashes under Go >= 1.18 at the first JSON encode: use Debian's 1.0.2.
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
  (
    cd "$tree"
    export PATH=/usr/lib/go-1.19/bin:$PATH GOPROXY=off CGO_ENABLED=0 GOFLAGS=-mod=vendor
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy" >"$SRC_CACHE/build.log" 2>&1
  ) || { say "build failed; tail of $SRC_CACHE/build.log:"; tail -30 "$SRC_CACHE/build.log" >&2; exit 1; }
  mkdir -p "$bin.tmp"
  for b in "${BIN_NAMES[@]}"; do cp "$tree/_output/local/bin/linux/amd64/$b" "$bin.tmp/"; done
  gcc -Os -static -o "$bin.tmp/pause" "$tree/build/pause/linux/pause.c"
  rm -rf "$bin" && mv "$bin.tmp" "$bin"
  echo "$version" >"$SRC_CACHE/version"
  rm -rf "$work"
  say "built into $bin"
}

healthy() {
  [ -f "$K8S_HOME/token" ] || return 1
  curl -sfk -m 2 -H "Authorization: Bearer $(cat "$K8S_HOME/token")" https://127.0.0.1:6443/readyz >/dev/null 2>&1
}

api() { curl -sfk -m 10 -H "Authorization: Bearer $(cat "$K8S_HOME/token")" "$@"; }

node_ready() {
  api "https://127.0.0.1:6443/api/v1/nodes/$NODE_NAME" 2>/dev/null \
    | jq -e '.status.conditions[] | select(.type=="Ready") | .status=="True"' >/dev/null 2>&1
}

start_bg() {
  # start_bg NAME CMD...: detached, own process group, log in $K8S_HOME/log/NAME.log
  local name=$1; shift
  mkdir -p "$K8S_HOME/log" "$K8S_HOME/run"
  nohup setsid "$@" >"$K8S_HOME/log/$name.log" 2>&1 </dev/null &
  echo $! >"$K8S_HOME/run/$name.pid"
}

wait_for() {
  local what=$1 tries=$2; shift 2
  for _ in $(seq 1 "$tries"); do "$@" && return 0; sleep 0.25; done
  say "$what did not come up; logs in $K8S_HOME/log"; tail -15 "$K8S_HOME"/log/*.log >&2 || true
  exit 1
}

certs() {
  local d="$K8S_HOME/pki"
  [ -f "$d/apiserver.crt" ] && return 0
  mkdir -p "$d" && chmod 700 "$d"
  (
    cd "$d"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -days 365 -subj /CN=labctl-test-ca -out ca.crt 2>/dev/null
    openssl genrsa -out apiserver.key 2048 2>/dev/null
    cat >san.cnf <<CNF
[req]
distinguished_name = dn
[dn]
[ext]
subjectAltName = IP:127.0.0.1,IP:$NODE_IP,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default
CNF
    openssl req -new -key apiserver.key -subj /CN=kube-apiserver -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
      -extfile san.cnf -extensions ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$K8S_HOME/token"
  chmod 600 "$K8S_HOME/token" "$d"/*.key
  printf '%s,admin,admin,system:masters\n' "$(cat "$K8S_HOME/token")" >"$d/tokens.csv"
  chmod 600 "$d/tokens.csv"
  cat >"$K8S_HOME/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: labctl-test
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: $d/ca.crt
users:
- name: admin
  user:
    token: $(cat "$K8S_HOME/token")
contexts:
- name: labctl-test
  context: { cluster: labctl-test, user: admin }
current-context: labctl-test
KC
  chmod 600 "$K8S_HOME/kubeconfig"
}

# This VM refuses negative OOM scores; kubelet asks for -998 on every sandbox. Where that is
# the case, dockerd runs containers through a wrapper that turns negative scores into 0.
needs_oom_wrapper() { ! (echo -998 >/proc/self/oom_score_adj) 2>/dev/null; }

docker_for_kubelet() {
  if needs_oom_wrapper && ! docker info 2>/dev/null | grep -q 'Default Runtime: labctl-runc'; then
    say "this machine refuses negative OOM scores: running dockerd with the runc wrapper"
    mkdir -p "$(dirname "$RUNC_WRAPPER")"
    cat >"$RUNC_WRAPPER" <<'WRAP'
#!/bin/sh
# runc, but a negative oomScoreAdj in the bundle's config.json becomes 0 (labctl test cluster).
bundle=""
prev=""
for a in "$@"; do
  [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ] && bundle=$a
  prev=$a
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  sed -i -E 's/"oomScoreAdj":-[0-9]+/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec /usr/sbin/runc "$@"
WRAP
    chmod 755 "$RUNC_WRAPPER"
    pkill -x dockerd 2>/dev/null || true
    for _ in $(seq 1 40); do pgrep -x dockerd >/dev/null || break; sleep 0.25; done
    DOCKERD_ARGS="--add-runtime labctl-runc=$RUNC_WRAPPER --default-runtime=labctl-runc" "$HERE/up.sh" docker
  else
    "$HERE/up.sh" docker
  fi
}

pause_image() {
  docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 && return 0
  local d; d=$(mktemp -d)
  cp "$(bin_dir)/pause" "$d/pause"
  tar -C "$d" -c pause | docker import -c 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
  rm -rf "$d"
}

up() {
  if healthy && node_ready; then say "already up (KUBECONFIG=$K8S_HOME/kubeconfig)"; return 0; fi
  # What a killed cluster left (a session that ended, a crash): cleared, so every start is fresh.
  if [ -d "$K8S_HOME" ] || ip link show "$NODE_LINK" >/dev/null 2>&1; then
    say "clearing what an earlier cluster left"
    down
  fi
  apt_install etcd-server containernetworking-plugins socat conntrack openssl iptables jq curl
  build
  local bin; bin=$(bin_dir)
  docker_for_kubelet
  pause_image
  mkdir -p "$K8S_HOME" && chmod 700 "$K8S_HOME"
  certs
  local pki="$K8S_HOME/pki" kc="$K8S_HOME/kubeconfig"

  # The node address: kubelet refuses loopback, and the `dummy` link type is absent here.
  if ! ip link show "$NODE_LINK" >/dev/null 2>&1; then
    ip link add "$NODE_LINK" type bridge
    ip addr add "$NODE_IP/32" dev "$NODE_LINK"
    ip link set "$NODE_LINK" up
  fi
  mkdir -p "$K8S_HOME/cni/net.d" "$K8S_HOME/cni/ipam"
  cat >"$K8S_HOME/cni/net.d/10-labctl.conflist" <<CNI
{ "cniVersion": "0.4.0", "name": "labctl",
  "plugins": [
    { "type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$POD_CIDR" }]],
                "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "$K8S_HOME/cni/ipam" } },
    { "type": "portmap", "capabilities": { "portMappings": true } } ] }
CNI

  start_bg etcd etcd --name labctl --data-dir "$K8S_HOME/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster labctl=http://127.0.0.1:2380
  wait_for etcd 80 curl -sf -m 1 -o /dev/null http://127.0.0.1:2379/health

  start_bg kube-apiserver "$bin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=127.0.0.1 --secure-port=6443 --advertise-address="$NODE_IP" \
    --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range=30000-30100 \
    --token-auth-file="$pki/tokens.csv" --client-ca-file="$pki/ca.crt" --authorization-mode=RBAC \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --endpoint-reconciler-type=none \
    --kubelet-preferred-address-types=InternalIP --allow-privileged=true
  wait_for kube-apiserver 120 healthy

  start_bg kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$kc" \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --leader-elect=false --bind-address=127.0.0.1 --port=0
  start_bg kube-scheduler "$bin/kube-scheduler" --kubeconfig="$kc" --leader-elect=false \
    --bind-address=127.0.0.1 --port=0
  start_bg kubelet "$bin/kubelet" --kubeconfig="$kc" --container-runtime=docker \
    --cgroup-driver=cgroupfs --fail-swap-on=false --node-ip="$NODE_IP" --address="$NODE_IP" \
    --hostname-override="$NODE_NAME" --network-plugin=cni --cni-conf-dir="$K8S_HOME/cni/net.d" \
    --cni-bin-dir=/usr/lib/cni --root-dir="$K8S_HOME/kubelet" --pod-infra-container-image="$PAUSE_IMAGE" \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 --eviction-hard= \
    --node-status-update-frequency=1s --read-only-port=0 --authorization-mode=AlwaysAllow \
    --anonymous-auth=true
  start_bg kube-proxy "$bin/kube-proxy" --kubeconfig="$kc" --proxy-mode=iptables \
    --conntrack-max-per-core=0 --nodeport-addresses="127.0.0.0/8,$NODE_IP/32" \
    --hostname-override="$NODE_NAME" --cluster-cidr=10.244.0.0/16 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256
  wait_for "node $NODE_NAME Ready" 240 node_ready
  wait_for "the default service account" 120 api https://127.0.0.1:6443/api/v1/namespaces/default/serviceaccounts/default -o /dev/null
  say "up: KUBECONFIG=$K8S_HOME/kubeconfig"
}

stop_pid() {
  local f="$K8S_HOME/run/$1.pid" pid
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  # Pods first, while kubelet still runs, so CNI removes what it set up for them.
  if healthy; then
    for ns in $(api https://127.0.0.1:6443/api/v1/namespaces | jq -r '.items[].metadata.name'); do
      api -X DELETE "https://127.0.0.1:6443/api/v1/namespaces/$ns/pods?gracePeriodSeconds=0" -o /dev/null || true
    done
    for _ in $(seq 1 60); do
      [ "$(api https://127.0.0.1:6443/api/v1/pods | jq '.items | length')" = 0 ] && break
      sleep 0.5
    done
  fi
  stop_pid kubelet
  stop_pid kube-proxy
  local ids; ids=$(docker ps -aq --filter name=k8s_ 2>/dev/null || true)
  [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1 || true
  if [ -x "$(bin_dir 2>/dev/null)/kube-proxy" ]; then "$(bin_dir)/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  for table in filter nat mangle; do
    # (grep finds nothing on a clean machine: not an error)
    { iptables-save -t "$table" 2>/dev/null | grep -E '^-A (KUBE-|CNI-)|-j (KUBE-|CNI-)' | sed 's/^-A/-D/' || true; } \
      | while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done
    for chain in $(iptables-save -t "$table" 2>/dev/null | awk '/^:(KUBE-|CNI-)/ {print substr($1,2)}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  { grep -o " $K8S_HOME/[^ ]*" /proc/mounts 2>/dev/null || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  stop_pid kube-scheduler
  stop_pid kube-controller-manager
  stop_pid kube-apiserver
  stop_pid etcd
  for link in "$CNI_BRIDGE" "$NODE_LINK"; do ip link del "$link" 2>/dev/null || true; done
  rm -rf "$K8S_HOME"
  say "down: no process, rule, mount or link left"
}

# Exit 1, naming them, if any process, iptables rule, mount, link, container or file of the
# cluster is left: what `down` promises.
check_clean() {
  local left=()
  pgrep -f "$K8S_HOME|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy" >/dev/null && left+=("processes")
  iptables-save 2>/dev/null | grep -qE 'KUBE-|CNI-' && left+=("iptables rules")
  grep -q " $K8S_HOME" /proc/mounts && left+=("mounts")
  for link in "$NODE_LINK" "$CNI_BRIDGE"; do ip link show "$link" >/dev/null 2>&1 && left+=("link $link"); done
  [ -n "$(docker ps -aq --filter name=k8s_ 2>/dev/null)" ] && left+=("pod containers")
  [ -e "$K8S_HOME" ] && left+=("$K8S_HOME")
  if [ ${#left[@]} -gt 0 ]; then say "left behind: ${left[*]}"; return 1; fi
  say "clean: no process, rule, mount, link, container or state of the cluster is left"
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  check-clean) check_clean ;;
  status) if healthy && node_ready; then echo up; else echo down; exit 1; fi ;;
  *) echo "usage: $0 build|up|down|status|check-clean" >&2; exit 2 ;;
esac
