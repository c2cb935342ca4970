#!/usr/bin/env bash
# A/B of the scheduler core: `bash scripts/ab-scheduler.sh OLD_BIN NEW_BIN [RUNS] [-- BENCH ARGS]`.
# Interleaves `infraos bench scheduler --runs 1` of two binaries (old, new, old, new, …), so
# that load on the machine falls on both alike, RUNS times each (at least 5), and prints each
# binary's median claims/s and the ratio new/old. Extra arguments after `--` go to both
# (e.g. `-- --governance --devices`). Build each binary with
# `cargo build --release --bin infraos` (building `-p infraos-cli` does not relink it).
set -euo pipefail
old="${1:?usage: ab-scheduler.sh OLD_BIN NEW_BIN [RUNS] [-- BENCH ARGS]}"
new="${2:?usage: ab-scheduler.sh OLD_BIN NEW_BIN [RUNS] [-- BENCH ARGS]}"
runs="${3:-5}"
shift $(($# < 3 ? $# : 3))
[ "${1:-}" = "--" ] && shift
(( runs >= 5 )) || { echo "at least 5 runs each" >&2; exit 2; }
for b in "$old" "$new"; do
  [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
done

rate() { # one run of one binary: its claims/s
  "$1" bench scheduler --runs 1 "${@:2}" | sed -n 's/^claims\/s: \([0-9.]*\)$/\1/p'
}
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

old_rates=(); new_rates=()
for ((i = 1; i <= runs; i++)); do
  # Alternate which goes first, so neither always runs on a warmer (or busier) machine.
  if ((i % 2)); then
    o=$(rate "$old" "$@"); n=$(rate "$new" "$@")
  else
    n=$(rate "$new" "$@"); o=$(rate "$old" "$@")
  fi
  echo "run $i: old $o claims/s, new $n claims/s"
  old_rates+=("$o"); new_rates+=("$n")
done
om=$(printf '%s\n' "${old_rates[@]}" | median)
nm=$(printf '%s\n' "${new_rates[@]}" | median)
echo "old median: $om claims/s ($old)"
echo "new median: $nm claims/s ($new)"
awk -v o="$om" -v n="$nm" 'BEGIN {printf "ratio new/old: %.3f\n", (o > 0) ? n / o : 0}'
