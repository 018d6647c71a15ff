#!/usr/bin/env bash
# Stops the backends testenv/up.sh started (LocalStack; dockerd only with --docker).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/../localstack/run.sh" stop
if [ "${1:-}" = "--docker" ]; then
  pkill -x dockerd 2>/dev/null || true
  echo "[testenv] dockerd stopped" >&2
fi
