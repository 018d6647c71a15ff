#!/usr/bin/env bash
# Benchmark, side by side in one run on the same engine and build cache:
#   1. fresh `labctl td4 up` vs the same by hand: docker build + docker run + curl until ready
#      + the same four endpoint checks;
#   2. a no-op `labctl td4 up` (everything already up) vs re-running the hand-made sequence;
#   3. `labctl td4 down` vs docker rm -f + docker rmi.
# Medians over ROUNDS runs (default 5), alternating the two sides. Writes bench/RESULTS-td4.md.
#
#   bench/td4.sh            (after testenv/up.sh; builds labctl if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/labctl/target}
ROUNDS=${ROUNDS:-5}
BASE=${BASE_IMAGE:-labctl-test/node:20-bookworm}
PORT_L=18180 PORT_M=18181
OWNER=bench
STATE=$(mktemp -d)
trap 'rm -rf "$STATE"; docker rmi bench/cache-anchor >/dev/null 2>&1 || true' EXIT

testenv/up.sh >/dev/null
cargo build -q --release
LABCTL="$CARGO_TARGET_DIR/release/labctl"
labctl() { "$LABCTL" -q --yes --owner "$OWNER" --state-dir "$STATE" -p "port=$PORT_L" -p "base_image=$BASE" "$@"; }

manual_up() {
  DOCKER_BUILDKIT=0 docker build -q -t bench/sample-app:v4 --build-arg "BASE_IMAGE=$BASE" apps/sample-app >/dev/null 2>&1
  docker rm -f bench-sample-app >/dev/null 2>&1 || true
  docker run -d --name bench-sample-app -p "127.0.0.1:$PORT_M:8080" bench/sample-app:v4 >/dev/null
  until curl -sf "http://127.0.0.1:$PORT_M/" >/dev/null; do sleep 0.25; done
  curl -sf "http://127.0.0.1:$PORT_M/" | grep -q 'Hello, World!'
  curl -sf "http://127.0.0.1:$PORT_M/name/%3Cb%3E" | grep -q '&lt;b&gt;'
  curl -sf "http://127.0.0.1:$PORT_M/add/2/3" | grep -q '2 + 3 = 5'
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT_M/add/a/b")" = 400 ]
}
manual_down() {
  docker rm -f bench-sample-app >/dev/null
  docker rmi bench/sample-app:v4 >/dev/null
}

# Warm the layer cache once (npm ci runs here) and pin it with a tagged anchor image, so that
# neither side's clean-up prunes the layers the other reuses: every round compares warm builds.
DOCKER_BUILDKIT=0 docker build -q -t bench/cache-anchor --build-arg "BASE_IMAGE=$BASE" apps/sample-app >/dev/null 2>&1
labctl td4 up >/dev/null; labctl td4 down >/dev/null
manual_up; manual_down

for i in $(seq 1 "$ROUNDS"); do
  add labctl_fresh_up "$(t labctl td4 up)"
  add manual_fresh_up "$(t manual_up)"
  add labctl_noop_up "$(t labctl td4 up)"
  add manual_rerun "$(t manual_up)"
  add labctl_down "$(t labctl td4 down)"
  add manual_down "$(t manual_down)"
  echo "round $i/$ROUNDS done" >&2
done


LF=$(m labctl_fresh_up) MF=$(m manual_fresh_up) LN=$(m labctl_noop_up) MN=$(m manual_rerun) LD=$(m labctl_down) MD=$(m manual_down)
out=bench/RESULTS-td4.md
{
  echo "# TD4 benchmark: labctl vs docker CLI by hand"
  echo
  echo "Command: \`bench/td4.sh\` (ROUNDS=$ROUNDS, medians in seconds, both sides alternating in one run,"
  echo "same engine, same warm layer cache pinned by an anchor image; labctl is the"
  echo "release build)."
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, Docker engine $(docker version -f '{{.Server.Version}}'), $(date -u +%Y-%m-%d)."
  echo
  echo "| scenario | labctl | by hand | labctl / by hand |"
  echo "|---|---|---|---|"
  echo "| fresh up (build, run, wait ready, 4 checks) | $LF | $MF | $(ratio "$LF" "$MF") |"
  echo "| up again, nothing to do (labctl: no-op; by hand: re-run the sequence) | $LN | $MN | $(ratio "$LN" "$MN") |"
  echo "| down (remove container and image) | $LD | $MD | $(ratio "$LD" "$MD") |"
  echo
  echo "labctl's own no-op vs fresh up: $(ratio "$LN" "$LF") (no-op / fresh)."
  echo
  raw_samples labctl_fresh_up manual_fresh_up labctl_noop_up manual_rerun labctl_down manual_down
} > "$out"
cat "$out"
