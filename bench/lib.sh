# Shared by the bench/*.sh scripts: timing, samples, medians, ratios.

# t CMD...: runs CMD, prints the seconds it took.
t() {
  local s e
  s=$(date +%s.%N)
  "$@"
  e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }'
}

declare -A samples
# add NAME SECONDS: one more sample of NAME.
add() { samples[$1]="${samples[$1]:-} $2"; }

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
# m NAME: the median of NAME's samples.
m() { echo "${samples[$1]:-}" | median; }
# ratio A B: A / B with three decimals ("-" when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; }

# raw_samples NAME...: the "Raw samples" section of a results file, for the names that have any.
raw_samples() {
  local k
  echo "Raw samples:"
  echo
  for k in "$@"; do
    if [ -n "${samples[$k]:-}" ]; then echo "- $k:${samples[$k]}"; fi
  done
}
