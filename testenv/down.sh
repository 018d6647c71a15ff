#!/usr/bin/env bash
# Stops the backends testenv/up.sh started (the local cluster, LocalStack; dockerd only with
# --docker).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/k8s.sh" down
"$HERE/../localstack/run.sh" stop
if [ "${1:-}" = "--docker" ]; then
  pkill -x dockerd 2>/dev/null || true
  echo "[testenv] dockerd stopped" >&2
fi
