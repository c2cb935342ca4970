#!/usr/bin/env bash
# The long chaos run: `bash scripts/chaos.sh [SECONDS] [RUNS] [FIRST_SEED] [LOAD]`.
# Each run starts three etcd members, three servers and three agents on loopback, injects a
# seeded random schedule of faults for SECONDS while claims with workloads come and go, then
# checks the invariants from the recorded history (see tests/chaos.rs). LOAD (claims per
# second, default 0) adds a background claim load throughout; with a load, the servers are
# release builds (a debug server is too slow to carry one). As root, with the packages the
# test command installs (protobuf-compiler, etcd-server).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
runs="${2:-3}"
seed="${3:-1}"
load="${4:-0}"
profile=()
((load > 0)) && profile=(--release)
cargo build "${profile[@]}" --features etcd --tests --bin infraos >/dev/null
failed=0
for ((i = 0; i < runs; i++)); do
  s=$((seed + i))
  echo "== chaos run $((i + 1))/$runs: seed $s, $seconds s of faults"
  log="$(mktemp)"
  if INFRAOS_CHAOS_SECONDS="$seconds" INFRAOS_CHAOS_SEED="$s" INFRAOS_CHAOS_LOAD="$load" \
    cargo nextest run "${profile[@]}" --features etcd --test chaos --no-capture --profile chaos >"$log" 2>&1; then
    grep -E "^chaos:" "$log"
  else
    failed=$((failed + 1))
    grep -E "^chaos:|violation|panicked" "$log" || tail -40 "$log"
    echo "   full output: $log"
  fi
done
echo "== $runs runs, $failed failed"
[ "$failed" -eq 0 ]
