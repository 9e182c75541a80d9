#!/usr/bin/env bash
# Where each hop of a ping's round trip spends its time inside the tunnel daemons
# (issue 7): `perf record` of scheduler, system-call and network tracepoints while
# COUNT pings (INTERVAL s apart, default 0.2) cross a tunnel that
# `bench/dataplane.sh --hold` set up. For each of the four daemon hops it prints the
# median of: the whole hop, the daemon's time in user space (on a CPU, outside system
# calls), its time in system calls, and the number of system calls.
#   A out   request queued on A's TUN   -> A's daemon queues the datagram on the wire
#   B in    that datagram               -> B's daemon writes the request to its TUN
#   B out   (the kernel's echo reply)   -> B's daemon queues the reply datagram
#   A in    that datagram               -> A's daemon writes the reply to its TUN
# "A out" and "B in" find their daemon idle (woken from epoll); the other two find it
# just awake. Comparing user-space time cold and warm shows what a cold cache costs.
#
#   bash bench/pingtrace.sh NS_A TARGET COUNT PID_A PID_B TUN_A TUN_B   (COUNT 1..200)
#   e.g. bash bench/pingtrace.sh cyb-dp-123-a 100.64.1.2 20 4711 4712 cyphonic0 cyphonic0
#
# PID_A/PID_B: the daemons (every thread is followed). Needs perf with tracepoints
# (Debian: linux-perf). System-wide recording: run it on a quiet machine. Tracing
# every system call keeps one vCPU busy with perf's writer, so wake-ups land on the
# other and the cost of waking an idle vCPU is hidden: bench/pingsegments.sh traces
# lighter and splits each hop further.
set -u
if [ $# -ne 7 ] || ! [[ $3 =~ ^[0-9]+$ ]] || [ "$3" -lt 1 ] || [ "$3" -gt 200 ]; then
  sed -n '2,22p' "$0" >&2
  exit 2
fi
NS=$1 T=$2 N=$3 PA=$4 PB=$5 TA=$6 TB=$7 INTERVAL=${INTERVAL:-0.2}
[[ $INTERVAL =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "pingtrace: INTERVAL must be seconds, e.g. 0.2" >&2; exit 2; }
command -v perf >/dev/null || { echo "pingtrace: perf not found (apt-get install linux-perf)" >&2; exit 2; }
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
perf record -q -a -o "$D/perf.data" \
  -e sched:sched_switch,raw_syscalls:sys_enter,raw_syscalls:sys_exit \
  -e net:net_dev_queue,net:netif_receive_skb \
  -- ip netns exec "$NS" ping -q -c "$N" -i "$INTERVAL" "$T" 2>&1 | tail -1
perf script -i "$D/perf.data" -F tid,time,event,trace 2>/dev/null >"$D/events" ||
  { echo "pingtrace: perf script failed" >&2; exit 1; }
tids() { ls "/proc/$1/task" 2>/dev/null | tr '\n' ' '; }
python3 - "$D/events" "$(tids "$PA")" "$(tids "$PB")" "$TA" "$TB" <<'PY'
import bisect, re, statistics, sys

path, tids_a, tids_b, tun_a, tun_b = sys.argv[1:6]
A, B = set(map(int, tids_a.split())), set(map(int, tids_b.split()))
if not A or not B:
    sys.exit("pingtrace: a daemon PID has no threads (is it running?)")
ev = []  # (time, tid, kind, text)
for line in open(path):
    f = line.split(None, 3)
    try:
        ev.append((float(f[1].rstrip(":")), int(f[0]), f[2].rstrip(":"), f[3] if len(f) > 3 else ""))
    except (IndexError, ValueError):
        pass

def dev(text):
    m = re.search(r"dev=(\S+)", text)
    return m.group(1) if m else None

def next_pid(text):
    m = re.search(r"next_pid=(\d+)", text)
    return int(m.group(1)) if m else None

def prev_pid(text):
    m = re.search(r"prev_pid=(\d+)", text)
    return int(m.group(1)) if m else None

def account(tids, t0, t1):
    """User-space time, system-call time and system-call count of `tids` in [t0, t1]."""
    # State at t0: assume blocked in a system call (epoll) unless events say otherwise.
    on_cpu, in_sys, last = False, True, t0
    spent = {True: 0.0, False: 0.0}  # in a system call -> seconds on a CPU
    calls = 0
    for i in range(bisect.bisect_left(times, t0), len(ev)):
        t, tid, kind, text = ev[i]
        if t > t1:
            break
        if kind == "sched:sched_switch":
            np_, pp = next_pid(text), prev_pid(text)
            if np_ in tids or pp in tids:
                if on_cpu:
                    spent[in_sys] += t - last
                on_cpu, last = np_ in tids, t
            continue
        if tid not in tids:
            continue
        if on_cpu:
            spent[in_sys] += t - last
        on_cpu, last = True, t
        if kind == "raw_syscalls:sys_enter":
            in_sys, calls = True, calls + 1
        elif kind == "raw_syscalls:sys_exit":
            in_sys = False
    if on_cpu:
        spent[in_sys] += t1 - last
    return spent[False], spent[True], calls

ev.sort(key=lambda e: e[0])  # perf orders them already; the lookups below rely on it
times = [e[0] for e in ev]

def first(pred, after, limit=0.05):
    """The time of the first event after `after` (within `limit` s) that pred accepts."""
    for i in range(bisect.bisect_right(times, after), len(ev)):
        t, tid, kind, text = ev[i]
        if t > after + limit:
            return None
        if pred(tid, kind, text):
            return t
    return None

starts = [t for t, tid, kind, text in ev
          if kind == "net:net_dev_queue" and dev(text) == tun_a and tid not in A]
hops = {"A out (cold)": [], "B in (cold)": [], "B out (warm)": [], "A in (warm)": []}
for s in starts:
    a_out = first(lambda tid, k, x: tid in A and k == "net:net_dev_queue" and dev(x) != tun_a, s)
    if a_out is None: continue
    b_in = first(lambda tid, k, x: tid in B and k == "net:netif_receive_skb" and dev(x) == tun_b, a_out)
    if b_in is None: continue
    b_out = first(lambda tid, k, x: tid in B and k == "net:net_dev_queue" and dev(x) != tun_b, b_in)
    if b_out is None: continue
    a_in = first(lambda tid, k, x: tid in A and k == "net:netif_receive_skb" and dev(x) == tun_a, b_out)
    if a_in is None: continue
    for name, tids, t0, t1 in (("A out (cold)", A, s, a_out), ("B in (cold)", B, a_out, b_in),
                               ("B out (warm)", B, b_in, b_out), ("A in (warm)", A, b_out, a_in)):
        hops[name].append((t1 - t0, *account(tids, t0, t1)))
if not starts or not hops["A out (cold)"]:
    sys.exit("pingtrace: no whole round trip was traced (wrong PIDs or interface names?)")
print(f"{'hop':<14}{'whole µs':>10}{'user µs':>10}{'syscall µs':>12}{'syscalls':>10}   (medians, n={len(hops['A out (cold)'])})")
for name, rows in hops.items():
    med = lambda i: statistics.median(r[i] for r in rows)
    print(f"{name:<14}{med(0)*1e6:>10.1f}{med(1)*1e6:>10.1f}{med(2)*1e6:>12.1f}{med(3):>10.0f}")
PY
