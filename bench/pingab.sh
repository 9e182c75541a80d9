#!/usr/bin/env bash
# Ping RTT of several held tunnels, measured in alternating batches (issue 7): one
# batch of COUNT pings (INTERVAL s apart: $PINGAB_INTERVAL, default 0.1; the data-plane
# bench uses 0.2) through each tunnel in turn, ROUNDS times, so a
# noisy host's drift falls on every tunnel alike. Prints, per tunnel, the 10th,
# 50th and 90th percentile and the mean of all its pings.
#
#   bash bench/pingab.sh ROUNDS COUNT LABEL:NAMESPACE:TARGET ...   (ROUNDS 1..50, COUNT 1..500)
#   e.g. bash bench/pingab.sh 8 100 ours:cyb-dp-695-a:100.84.220.134 bt:cyb-dp-889-a:192.0.2.6
#
# Hold the tunnels up first: `bench/dataplane.sh --systems S,T --hold` in another
# shell prints each one's sender namespace and target (several runs can hold at once,
# e.g. two builds of CYPHONIC: each system of each run has its own namespaces). Sends
# only to the given targets, inside their namespaces.
set -u
usage() { sed -n '2,14p' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
R=$1 N=$2 I=${PINGAB_INTERVAL:-0.1}
shift 2
[[ $I =~ ^(0\.[1-9][0-9]*|[1-9][0-9]*(\.[0-9]+)?)$ ]] || { echo "pingab: PINGAB_INTERVAL must be 0.1 s or more" >&2; exit 2; }
[[ $R =~ ^[0-9]+$ ]] && [ "$R" -ge 1 ] && [ "$R" -le 50 ] || usage
[[ $N =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] && [ "$N" -le 500 ] || usage
for spec in "$@"; do
  IFS=: read -r l ns t <<<"$spec"
  [ -n "$l" ] && [ -n "$ns" ] && [ -n "$t" ] || usage
  ip netns list | grep -qw "$ns" || { echo "pingab: no namespace $ns" >&2; exit 2; }
done
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
for r in $(seq 1 "$R"); do
  for spec in "$@"; do
    IFS=: read -r l ns t <<<"$spec"
    timeout $((N * 2 + 30)) ip netns exec "$ns" ping -n -c "$N" -i "$I" -W 1 "$t" |
      sed -n 's/.*time=\([0-9.]*\).*/\1/p' >>"$D/$l"
  done
done
printf '%-12s %6s %7s %7s %7s %7s   (ms)\n' tunnel pings p10 p50 p90 mean
for spec in "$@"; do
  l=${spec%%:*}
  sort -n "$D/$l" | awk -v l="$l" '{a[NR]=$1; s+=$1}
    END {if (NR == 0) {printf "%-12s no replies\n", l; exit}
         i10 = int(NR*.1); if (i10 < 1) i10 = 1; i50 = int(NR*.5); if (i50 < 1) i50 = 1
         i90 = int(NR*.9); if (i90 < 1) i90 = 1
         printf "%-12s %6d %7.3f %7.3f %7.3f %7.3f\n", l, NR, a[i10], a[i50], a[i90], s/NR}'
done
