#!/usr/bin/env bash
# LocalStack's Python runtime (no Docker image, no account token) on 127.0.0.1:4566.
#   localstack/run.sh start    install into a cached venv if needed, start, wait until healthy
#   localstack/run.sh stop     stop it (and wait until the port is free)
#   localstack/run.sh status
# Versions and pins: localstack/constraints.txt (see ../shared/TESTENV.md for why).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LABCTL_CACHE=${LABCTL_CACHE:-/var/cache/labctl}
VENV="$LABCTL_CACHE/localstack-venv"
VERSION=4.13.1
DATA=${LOCALSTACK_DATA:-$LABCTL_CACHE/localstack-data}
LOG=${LOCALSTACK_LOG:-/var/log/labctl-localstack.log}
PIDFILE="$LABCTL_CACHE/localstack.pid"
URL=http://127.0.0.1:4566/_localstack/health

say() { printf '[localstack] %s\n' "$*" >&2; }
# shellcheck source=testenv/lib.sh
. "$HERE/../testenv/lib.sh"
healthy() { curl -sf -m 2 "$URL" >/dev/null 2>&1; }

install() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import localstack" 2>/dev/null \
     && [ "$("$VENV/bin/python" -m pip show localstack-core 2>/dev/null | awk '/^Version/ {print $2}')" = "$VERSION" ]; then
    return 0
  fi
  say "installing localstack-core $VERSION into $VENV (a minute or two, once)"
  rm -rf "$VENV.tmp"
  python3 -m venv "$VENV.tmp"
  "$VENV.tmp/bin/python" -m pip install -q -c "$HERE/constraints.txt" "localstack-core[runtime]==$VERSION" service_identity
  rm -rf "$VENV" && mv "$VENV.tmp" "$VENV"
  # A moved venv keeps working through `python -m`; its scripts' shebangs are not used.
}

start() {
  if healthy; then say "already up on 127.0.0.1:4566"; return 0; fi
  command -v curl >/dev/null || apt_install curl
  install
  mkdir -p "$DATA"
  say "starting (log: $LOG)"
  (
    cd "$DATA"
    GATEWAY_LISTEN=127.0.0.1:4566 DNS_ADDRESS=0 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
      LOCALSTACK_VOLUME_DIR="$DATA" EAGER_SERVICE_LOADING=0 \
      nohup setsid "$VENV/bin/python" -m localstack.runtime.main >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
  )
  for _ in $(seq 1 120); do healthy && break; sleep 0.5; done
  healthy || { say "LocalStack did not become healthy; tail of $LOG:"; tail -20 "$LOG" >&2; exit 1; }
  say "up on 127.0.0.1:4566"
}

stop() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  # A LocalStack started by hand: find it by its command line.
  pkill -f 'localstack.runtime.main' 2>/dev/null || true
  for _ in $(seq 1 40); do healthy || break; sleep 0.25; done
  rm -f "$PIDFILE"
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if healthy; then echo up; else echo down; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
