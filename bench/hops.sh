#!/usr/bin/env bash
# Where a ping's round trip goes, hop by hop (issue 7): tcpdump on both tunnel
# interfaces and both ends of the veth while COUNT pings (0.2 s apart) cross a tunnel
# that `bench/dataplane.sh --hold` set up; prints the median of each hop in µs.
# All four captures share one clock, so each hop is a difference of kernel timestamps:
#   A tun->sock   request handed to A's TUN  -> its datagram leaves A  (A's daemon, cold)
#   B sock->tun   datagram reaches B         -> request written to B's TUN (B's daemon, cold)
#   B tun->sock   reply handed to B's TUN    -> its datagram leaves B  (B's daemon, warm)
#   A sock->tun   datagram reaches A         -> reply written to A's TUN (A's daemon)
#
#   bash bench/hops.sh NS_A NS_B TUN_A TUN_B TARGET COUNT SRC_A   (COUNT: 1..1000)
#   e.g. bash bench/hops.sh cyb-dp-123-a cyb-dp-123-b cyphonic0 cyphonic0 100.64.1.2 40 198.51.100.1
#
# EA/EB name the veth ends (default ab and ba, as bench/dataplane.sh makes them);
# INTERVAL is the ping interval in seconds (default 0.2: each ping finds the daemons idle).
# Needs tcpdump. Only the given namespaces are touched; the captures stop by themselves.
set -u
if [ $# -ne 7 ] || ! [[ $6 =~ ^[0-9]+$ ]] || [ "$6" -lt 1 ] || [ "$6" -gt 1000 ]; then
  sed -n '2,17p' "$0" >&2
  exit 2
fi
EA=${EA:-ab} EB=${EB:-ba} INTERVAL=${INTERVAL:-0.2}; A=$1 B=$2 TA=$3 TB=$4 T=$5 N=${6:-20} SRC_A=$7
[[ $INTERVAL =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "hops: INTERVAL must be seconds, e.g. 0.2" >&2; exit 2; }
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$D"' EXIT
ip netns exec $A tcpdump -ni $TA -tt -l icmp > $D/ta 2>/dev/null & p1=$!
ip netns exec $A tcpdump -ni $EA -tt -l udp > $D/ea 2>/dev/null & p2=$!
ip netns exec $B tcpdump -ni $EB -tt -l udp > $D/eb 2>/dev/null & p3=$!
ip netns exec $B tcpdump -ni $TB -tt -l icmp > $D/tb 2>/dev/null & p4=$!
sleep 1.5
ip netns exec $A ping -q -c $N -i $INTERVAL $T | tail -1
sleep 1
kill $p1 $p2 $p3 $p4 2>/dev/null; wait 2>/dev/null
trap - EXIT
python3 - $D $SRC_A <<'PY'
import sys, statistics
d, src_a = sys.argv[1], sys.argv[2] + "."

def packets(name):
    """(timestamp, source, line) of each captured packet; other lines are skipped."""
    out = []
    for line in open(f"{d}/{name}"):
        f = line.split()
        try:
            out.append((float(f[0]), f[2], line))
        except (IndexError, ValueError):
            pass
    return out

ta, tb, ea, eb = (packets(n) for n in ("ta", "tb", "ea", "eb"))
req_a = [t for t, _, l in ta if "request" in l]
rep_a = [t for t, _, l in ta if "reply" in l]
req_b = [t for t, _, l in tb if "request" in l]
rep_b = [t for t, _, l in tb if "reply" in l]
a_out = [t for t, s, _ in ea if s.startswith(src_a)]
a_in = [t for t, s, _ in ea if not s.startswith(src_a)]
b_in = [t for t, s, _ in eb if s.startswith(src_a)]
b_out = [t for t, s, _ in eb if not s.startswith(src_a)]

def first_after(xs, t, limit=0.05):
    """The first timestamp of xs within `limit` seconds after t."""
    if t is None:
        return None
    return next((x for x in xs if t <= x < t + limit), None)

names = ["A tun->sock", "wire a->b", "B sock->tun", "B kernel echo",
         "B tun->sock", "wire b->a", "A sock->tun", "total"]
hops = {k: [] for k in names}
for t1 in req_a:
    t2 = first_after(a_out, t1)
    t3 = first_after(b_in, t2)
    t4 = first_after(req_b, t2)
    t5 = first_after(rep_b, t4)
    t6 = first_after(b_out, t5)
    t7 = first_after(a_in, t6)
    t8 = first_after(rep_a, t7)
    if None in (t2, t3, t4, t5, t6, t7, t8):
        continue
    for k, v in zip(names, [t2-t1, t3-t2, t4-t3, t5-t4, t6-t5, t7-t6, t8-t7, t8-t1]):
        hops[k].append(v * 1e6)
if not hops["total"]:
    sys.exit("no complete round trip captured: check the namespaces, interfaces and SRC_A")
for k, v in hops.items():
    print(f"{k:14} median {statistics.median(v):7.1f} us  (n={len(v)})")
PY
rc=$?
rm -rf "$D"
exit $rc
