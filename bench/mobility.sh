#!/usr/bin/env bash
# Mobility benchmark (issue 6): how long the overlay is interrupted when a node's real
# address changes mid-flow, for each case of tests/tests/mobility.rs:
#   a  the initiator (QUIC client) moves from one NAT to another
#   b  the responder (QUIC server) moves between public addresses
#   c  a public host moves behind a NAT
#   d  a dual-stack host loses IPv4 (continues over IPv6, relayed)
#   e  a move from an endpoint-independent NAT to a symmetric one (direct → relayed)
# Interruption = the longest gap in a 20 ms ping stream through the tunnel after the
# move began (the last reply before the outage to the first one after). Each case
# also carries a 384 MiB checksummed TCP transfer across the move.
#
#   sudo bash bench/mobility.sh [RUNS]      # default 3 runs; release build
#
# Namespaces only (the test bench); nothing leaves this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bash scripts/deps.sh
cargo build --release --locked --workspace --bins
export CYPHONIC_BIN_DIR="$PWD/target/release"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$runs"); do
  echo "== run $i of $runs" >&2
  cargo test --release --locked -p cyphonic-tests --test mobility -- --nocapture --test-threads 1 2>&1 \
    | grep -o 'MOBILITY case=.*' >> "$out" || { echo "mobility tests failed" >&2; exit 1; }
done
echo
echo "Mobility interruption ($runs runs, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r))"
printf '%-48s %8s %8s %8s\n' "case" "min ms" "median" "max ms"
sed -E 's/^MOBILITY case=(.*) interruption_ms=([0-9]+) flow=.*/\1|\2/' "$out" | sort | awk -F'|' '
  { v[$1] = v[$1] " " $2; n[$1]++ }
  END {
    for (c in v) {
      split(substr(v[c], 2), a, " "); m = n[c];
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      printf "%-48s %8d %8d %8d\n", c, a[1], a[int((m + 1) / 2)], a[m]
    }
  }' | sort
