#!/usr/bin/env bash
# The etcd backend under load beside the embedded store and beside etcd's own put rate, in one
# script so all see the same machine: BIN [RUNS] [NODES] [CLAIMS] [BATCH]. BIN is a release build with
# `--features etcd`. Starts one etcd member with its defaults (`--max-txn-ops 128`,
# `--max-request-bytes 1.5 MiB`) on loopback ports, then per run, interleaved:
#   bench store  (raw puts, 64 clients)         on etcd
#   bench e2e --batch BATCH and --batch 1       on the embedded store and on etcd
# BATCH defaults to 100: a batch create writes each claim (a compare and a put) and one block
# of audit entries in one transaction, plus the ledger head's compare and put, so 126 is the
# most a default etcd (--max-txn-ops 128) takes; a larger one is refused with 413 naming it.
# and prints medians and etcd/embedded ratios.
#   cargo build --release --features etcd --bin infraos
#   scripts/bench-etcd.sh target/release/infraos 5 10000 10000
set -euo pipefail
bin=${1:?usage: bench-etcd.sh BIN [RUNS] [NODES] [CLAIMS] [BATCH]}
runs=${2:-5}
nodes=${3:-10000}
claims=${4:-10000}
batch_size=${5:-100}
. "$(dirname "$0")/etcd-member.sh"
declare -A rate
last() { grep -m1 "$1" <<<"$2" | grep -oE '[0-9.]+$'; }
for run in $(seq 1 "$runs"); do
  url="etcd://127.0.0.1:$client"
  out=$("$bin" bench store --store "$url/raw$run" --clients 64 --puts 20000 --runs 1 2>&1) \
    || { echo "$out" >&2; exit 1; }
  r=$(last 'puts/s:' "$out")
  rate[raw]+="$r "
  echo "run $run: etcd raw puts: $r/s"
  for batch in "$batch_size" 1; do
    for store in embedded etcd; do
      args=(bench e2e --nodes "$nodes" --claims "$claims" --batch "$batch")
      [[ $store == etcd ]] && args+=(--store "$url/e2e-$run-$batch")
      out=$("$bin" "${args[@]}" 2>&1) || { echo "$store batch $batch: $out" >&2; exit 1; }
      r=$(last 'claims/s:' "$out")
      rate[$store-$batch]+="$r "
      echo "run $run: $store --batch $batch: $r claims/s"
    done
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
raw=$(median <<<"${rate[raw]}")
echo "median over $runs runs, $nodes nodes, $claims claims (etcd: one member, its defaults):"
echo "  etcd raw puts (64 clients):     $raw/s"
for batch in "$batch_size" 1; do
  e=$(median <<<"${rate[embedded-$batch]}"); c=$(median <<<"${rate[etcd-$batch]}")
  awk -v b="$batch" -v e="$e" -v c="$c" -v r="$raw" 'BEGIN {
    printf "  --batch %-3s embedded %8.0f claims/s, etcd %8.0f claims/s: etcd/embedded %.2f, etcd claims per raw put %.2f\n", b, e, c, c/e, c/r }'
done
