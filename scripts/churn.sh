#!/usr/bin/env bash
# The long churn run: `bash scripts/churn.sh [SECONDS] [SEEDS] [FIRST_SEED]`.
# Each seed starts a fresh server, drives SECONDS of seeded churn through the public API
# (tenants with borrowing, priorities, gangs, GPU items with CEL selectors, short leases,
# releases, deletes), drains, and checks the invariants (see tests/churn.rs). The test binary
# is built once, so editing the tree during a long run changes nothing under way.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
seeds="${2:-6}"
seed="${3:-1}"
bin=$(cargo test --test churn --no-run --message-format=json 2>/dev/null |
  grep '"kind":\["test"\]' | grep '"name":"churn"' |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "cannot build the churn test" >&2; exit 1; }
failed=0
start=$(date +%s)
for ((i = 0; i < seeds; i++)); do
  s=$((seed + i))
  log="$(mktemp)"
  if INFRAOS_CHURN_SECONDS="$seconds" INFRAOS_CHURN_SEED="$s" \
    "$bin" --exact churn_keeps_every_invariant --nocapture >"$log" 2>&1; then
    grep -E "^churn:" "$log"
    rm -f "$log"
  else
    failed=$((failed + 1))
    grep -E "^churn:|violation|panicked" "$log" || tail -40 "$log"
    echo "   full output: $log"
  fi
done
echo "== $seeds seeds of $seconds s, $failed failed, $(($(date +%s) - start)) s in all"
[ "$failed" -eq 0 ]
