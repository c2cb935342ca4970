#!/usr/bin/env bash
# Cold start at scale on each backend: BIN [RUNS] [NODES] [ALLOCATIONS]. BIN is a release build
# with `--features etcd`. Starts one etcd member with its defaults on loopback ports (as
# scripts/bench-etcd.sh does), then `bench coldstart` on the embedded store and on etcd: each
# seeds its store through a real server (NODES nodes with their resources, ALLOCATIONS claims
# it allocates), stops it, restarts a fresh server RUNS times and measures the time to
# /readyz, to the first new claim allocated, and the RSS. Prints both medians and the
# etcd/embedded ratios.
#   cargo build --release --features etcd --bin infraos
#   scripts/bench-coldstart.sh target/release/infraos 3 10000 100000
set -euo pipefail
bin=${1:?usage: bench-coldstart.sh BIN [RUNS] [NODES] [ALLOCATIONS]}
runs=${2:-3}
nodes=${3:-10000}
allocations=${4:-100000}
. "$(dirname "$0")/etcd-member.sh"
declare -A value
last() { grep -m1 "^$1:" <<<"$2" | grep -oE '[0-9.]+$'; }
for store in embedded etcd; do
  args=(bench coldstart --nodes "$nodes" --allocations "$allocations" --runs "$runs")
  [[ $store == etcd ]] && args+=(--store "etcd://127.0.0.1:$client/coldstart")
  echo "== $store: $bin ${args[*]}"
  "$bin" "${args[@]}" >"$dir/$store.out" 2>&1 || { cat "$dir/$store.out" >&2; echo "$store failed" >&2; exit 1; }
  cat "$dir/$store.out"
  out=$(<"$dir/$store.out")
  for f in seed_s ready_s first_allocated_s ready_to_allocated_s rss_ready_mib; do
    value[$store-$f]=$(last "$f" "$out")
  done
done
db=$(curl -s "http://127.0.0.1:$client/metrics" | awk '/^etcd_mvcc_db_total_size_in_bytes/ {printf "%.0f", $2/1048576}' || true)
echo "median over $runs restarts, $nodes nodes, $allocations allocations (etcd: one member, its defaults, db ${db:-?} MiB):"
for f in seed_s ready_s first_allocated_s ready_to_allocated_s rss_ready_mib; do
  awk -v f="$f" -v e="${value[embedded-$f]}" -v c="${value[etcd-$f]}" 'BEGIN {
    printf "  %-22s embedded %8s, etcd %8s: etcd/embedded %.2f\n", f, e, c, (e > 0 ? c/e : 0) }'
done
