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
