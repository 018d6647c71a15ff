#!/usr/bin/env bash
# The whole test suite: brings up the real backends (testenv/up.sh), then runs
#   1. the TD4 sample app's own Jest tests, in a scratch copy (npm ci needs the npm registry)
#   2. cargo test   — unit tests (no backend) and tests/it (the real binary against the real
#      Docker engine, LocalStack and the local Kubernetes cluster)
#   3. the local cluster's `down`, checked to leave nothing behind
# Build artefacts go to the machine-level cache, so CI's fresh clone reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."
# (pipefail: a failing `cargo test | tee` fails the script)

export LABCTL_CACHE=${LABCTL_CACHE:-/var/cache/labctl}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$LABCTL_CACHE/target}
mkdir -p "$CARGO_TARGET_DIR"

testenv/up.sh

echo "== sample app (Jest)"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r apps/sample-app/. "$scratch"
(cd "$scratch" && npm ci --no-audit --no-fund --loglevel=error && npx jest --coverage --ci)

echo "== cargo test"
# Two test threads: the integration tests build images, and this machine has two cores.
log="$scratch/cargo-test.log"
cargo test --locked -- --test-threads=2 2>&1 | tee "$log"

echo "== the local cluster's teardown leaves the machine as it was"
testenv/k8s.sh down
testenv/k8s.sh check-clean

# One closing line for the whole Rust suite (the cargo lines above are per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "rust: %d passed, %d failed\n", p, f }' "$log"
