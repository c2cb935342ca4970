#!/usr/bin/env bash
# The agent's idle footprint and the server's throughput, measured together (issue 18 item 7),
# so an allocator change for one is seen against the other.
#   bash scripts/footprint.sh [RUNS] [BINARY...]
# With no BINARY, builds this tree's release `infraos` once and measures it; give several
# binaries (e.g. one built from an older commit) to compare them run for run. Needs root
# (`bench workload` runs a real agent with cgroups). Prints each run, then the medians:
#   agent idle RSS (MiB)  from `infraos bench workload --claims 5 --runs 1`
#   e2e claims/s          from `infraos bench e2e --nodes 2000 --claims 10000 --batch 100`
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
shift || true
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release --bin infraos >&2
  bins=("${CARGO_TARGET_DIR:-target}/release/infraos")
fi

median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

for bin in "${bins[@]}"; do
  [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 1; }
  rss=() rate=()
  for ((i = 1; i <= runs; i++)); do
    out=$("$bin" bench workload --claims 5 --runs 1 2>&1) || { echo "$out" >&2; exit 1; }
    r=$(sed -n 's/^agent RSS: idle \([0-9.]*\) MiB.*/\1/p' <<<"$out")
    out=$("$bin" bench e2e --nodes 2000 --claims 10000 --batch 100 2>&1) || { echo "$out" >&2; exit 1; }
    c=$(sed -n 's/^claims\/s: \([0-9.]*\).*/\1/p' <<<"$out" | tail -1)
    echo "$bin run $i: agent idle RSS ${r:-?} MiB, e2e --batch 100 ${c:-?} claims/s"
    rss+=("${r:-}") rate+=("${c:-}")
  done
  printf '%s: median agent idle RSS %s MiB, median e2e --batch 100 %s claims/s (%d runs)\n' \
    "$bin" "$(printf '%s\n' "${rss[@]}" | grep . | median)" \
    "$(printf '%s\n' "${rate[@]}" | grep . | median)" "$runs"
done
