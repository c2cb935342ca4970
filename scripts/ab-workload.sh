#!/usr/bin/env bash
# A/B of claim → Running (`infraos bench workload`) between two builds, interleaved in one
# script so both see the same machine: BEFORE AFTER [ROUNDS] [CLAIMS]. Prints each round's
# p50/p99 and the medians per build, and the after/before ratio. Needs root (cgroups).
#   scripts/ab-workload.sh /tmp/infraos-old target/release/infraos 5 50
set -euo pipefail
before=${1:?usage: ab-workload.sh BEFORE AFTER [ROUNDS] [CLAIMS]}
after=${2:?usage: ab-workload.sh BEFORE AFTER [ROUNDS] [CLAIMS]}
rounds=${3:-5}
claims=${4:-50}
declare -A p50 p99
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    bin=${!side}
    out=$("$bin" bench workload --claims "$claims" --runs 1 2>&1)
    line=$(grep -m1 'claim → Running ms' <<<"$out") || { echo "$side: $out" >&2; exit 1; }
    a=$(sed -E 's/.*p50 ([0-9.]+), p99 ([0-9.]+).*/\1/' <<<"$line")
    b=$(sed -E 's/.*p50 ([0-9.]+), p99 ([0-9.]+).*/\2/' <<<"$line")
    p50[$side]+="$a "
    p99[$side]+="$b "
    echo "round $round $side: p50 $a ms, p99 $b ms"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
for side in before after; do
  echo "$side: median p50 $(median <<<"${p50[$side]}") ms, median p99 $(median <<<"${p99[$side]}") ms"
done
b50=$(median <<<"${p50[before]}"); a50=$(median <<<"${p50[after]}")
b99=$(median <<<"${p99[before]}"); a99=$(median <<<"${p99[after]}")
awk -v a="$a50" -v b="$b50" -v c="$a99" -v d="$b99" \
  'BEGIN {printf "after/before: p50 %.2fx (%+.1f ms), p99 %.2fx (%+.1f ms)\n", a/b, a-b, c/d, c-d}'
