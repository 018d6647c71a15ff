# Shared by testenv/up.sh, testenv/k8s.sh and localstack/run.sh (each defines its own `say`).

need_root() { [ "$(id -u)" = 0 ] || { say "run as root (it installs packages and starts services)"; exit 1; }; }

# apt_install PACKAGE...: installs only the missing ones; `apt-get update` only when needed.
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root
  say "installing ${missing[*]}"
  if [ ! -f /var/lib/apt/lists/.labctl-updated ] || ! apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    touch /var/lib/apt/lists/.labctl-updated
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
