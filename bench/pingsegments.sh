#!/usr/bin/env bash
# Each hop of a ping's round trip through a held tunnel, cut at every scheduler
# event and system call of the daemons (issue 7). Lighter than bench/pingtrace.sh:
# system calls are recorded for the daemons' threads only and perf gets a large
# buffer, so its writer seldom runs and the vCPUs idle as they do untraced (with
# every system call of the machine traced, perf kept one vCPU busy and every wake-up
# landed on the other, which hid the cost of waking an idle vCPU).
#
#   bash bench/pingsegments.sh NS_A TARGET COUNT PID_A PID_B TUN_A TUN_B   (COUNT 1..300)
#
# Hops: A out (request on A's TUN -> A's datagram on the wire), B in (-> request on
# B's TUN), B out (-> B's reply datagram), A in (-> reply on A's TUN). For each hop
# and each sequence of events seen at least 10 times it prints the medians, in µs,
# of the time from one event to the next: waking (the daemon's thread is woken),
# switchin (it gets a CPU), enterN / exitN (system call N: 0 read, 1 write, 20 writev,
# 44 sendto, 45 recvfrom, 46 sendmsg, 232 epoll_wait, 299 recvmmsg), end (the hop's
# packet event). Needs perf with tracepoints (Debian: linux-perf); PIDs, TUN names
# and namespaces as printed by `bench/dataplane.sh --hold` (boringtun: cbta<id>,
# cbtb<id>; CYPHONIC: cyphonic0 on both).
set -u
if [ $# -ne 7 ] || ! [[ $3 =~ ^[0-9]+$ ]] || [ "$3" -lt 1 ] || [ "$3" -gt 300 ] ||
  ! [[ $4 =~ ^[0-9]+$ && $5 =~ ^[0-9]+$ ]]; then
  sed -n '2,19p' "$0" >&2
  exit 2
fi
NS=$1 T=$2 N=$3 PA=$4 PB=$5 TA=$6 TB=$7
command -v perf >/dev/null || { echo "pingsegments: perf not found (apt-get install linux-perf)" >&2; exit 2; }
tids() { ls "/proc/$1/task" 2>/dev/null | tr '\n' ' '; }
A=$(tids "$PA") B=$(tids "$PB")
[ -n "$A" ] && [ -n "$B" ] || { echo "pingsegments: PID $PA or $PB is not running" >&2; exit 2; }
filter=$(for t in $A $B; do printf 'common_pid==%s || ' "$t"; done)
filter=${filter% || }
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
perf record -q -a -m 4096 -o "$D/perf.data" \
  -e sched:sched_switch,sched:sched_waking,net:net_dev_queue,net:netif_receive_skb \
  -e raw_syscalls:sys_enter --filter "$filter" -e raw_syscalls:sys_exit --filter "$filter" \
  -- ip netns exec "$NS" ping -q -c "$N" -i 0.2 "$T" 2>&1 | tail -1
perf script -i "$D/perf.data" -F tid,cpu,time,event,trace 2>/dev/null >"$D/events" ||
  { echo "pingsegments: perf script failed" >&2; exit 1; }
python3 - "$D/events" "$A" "$B" "$TA" "$TB" <<'PY'
import sys, re, bisect, statistics
from collections import defaultdict
path, tids_a, tids_b, tun_a, tun_b = sys.argv[1:6]
A=set(map(int,tids_a.split())); B=set(map(int,tids_b.split()))
ev=[]
for line in open(path):
    m=re.match(r'\s*(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)',line)
    if m: ev.append((float(m.group(3)),int(m.group(1)),int(m.group(2)),m.group(4),m.group(5)))
ev.sort(key=lambda e:e[0]); times=[e[0] for e in ev]
def dev(x):
    m=re.search(r'dev=(\S+)',x); return m.group(1) if m else None
def first(pred, after, lim=0.05):
    for i in range(bisect.bisect_right(times,after),len(ev)):
        e=ev[i]
        if e[0]>after+lim: return None
        if pred(e): return e
    return None
segs=defaultdict(list)
starts=[e for e in ev if e[3]=='net:net_dev_queue' and dev(e[4])==tun_a and e[1] not in A]
for s in starts:
    ao=first(lambda e:e[1] in A and e[3]=='net:net_dev_queue' and dev(e[4])!=tun_a, s[0])
    if not ao: continue
    bi=first(lambda e:e[1] in B and e[3]=='net:netif_receive_skb' and dev(e[4])==tun_b, ao[0])
    if not bi: continue
    bo=first(lambda e:e[1] in B and e[3]=='net:net_dev_queue' and dev(e[4])!=tun_b, bi[0])
    if not bo: continue
    ai=first(lambda e:e[1] in A and e[3]=='net:netif_receive_skb' and dev(e[4])==tun_a, bo[0])
    if not ai: continue
    for hop,T,s0,s1 in (('Aout',A,s,ao),('Bin',B,ao,bi),('Bout',B,bi,bo),('Ain',A,bo,ai)):
        # sequence of daemon events between s0 and s1, as labelled segments
        i=bisect.bisect_right(times,s0[0]); prev=s0[0]; lab='start'; seq=[]
        while i<len(ev) and ev[i][0]<=s1[0]:
            e=ev[i]; i+=1
            name=None
            if e[3]=='sched:sched_waking' and int(re.search(r' pid=(\d+)',e[4]).group(1)) in T: name='waking'
            elif e[3]=='sched:sched_switch' and int(re.search(r'next_pid=(\d+)',e[4]).group(1)) in T: name='switchin'
            elif e[1] in T and e[3]=='raw_syscalls:sys_enter': name='enter'+e[4].split()[1]
            elif e[1] in T and e[3]=='raw_syscalls:sys_exit': name='exit'+e[4].split()[1]
            if name:
                seq.append((lab+'>'+name, e[0]-prev)); prev=e[0]; lab=name
        seq.append((lab+'>end', s1[0]-prev))
        key=' '.join(x[0].split('>')[1] for x in seq)
        segs[(hop,key)].append([x[1] for x in seq])
if not segs:
    sys.exit("pingsegments: no whole round trip was traced (wrong PIDs or interface names?)")
for (hop,key),rows in sorted(segs.items(), key=lambda kv:(kv[0][0],-len(kv[1]))):
    if len(rows)<10: continue
    names=key.split()
    med=[statistics.median(r[j] for r in rows)*1e6 for j in range(len(names))]
    print(f"{hop} n={len(rows)} total {sum(med):.0f}: "+' '.join(f"{n}:{m:.0f}" for n,m in zip(names,med)))
PY
