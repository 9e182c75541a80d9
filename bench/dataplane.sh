#!/usr/bin/env bash
# Data-plane benchmark (issue 7): single-flow TCP throughput and ping RTT through
# CYPHONIC (direct and TRS-relayed) compared with the raw veth and with reference
# tunnels (wireguard-go, boringtun, nebula, quincy), all in ONE run on the same
# namespace topology.
#
#   sudo bash bench/dataplane.sh [options]
#
#   --systems a,b,c  subset, in any order (run in the canonical order below);
#                    default all: raw,cyphonic-direct,cyphonic-relayed,
#                    wireguard-go,boringtun,nebula,quincy
#   --runs N         iperf3 runs per system (default 3; the median is reported)
#   --time S         seconds per iperf3 run (default 10)
#   --pings N        pings per system and round, 0.2 s apart (default 20)
#   --ping-rounds R  rounds of pings (default 5): every system gets N pings in turn,
#                    R times, so a drift of the host falls on all of them alike
#   --out FILE       also write the results as a markdown table (for BENCHMARKS.md)
#   --no-install     do not apt-get / cargo install missing tools
#   --no-build       do not build CYPHONIC (use $CYPHONIC_BIN_DIR or target/release)
#   --pgo            measure the profile-guided build (scripts/build-pgo.sh, run
#                    first unless --no-build; binaries from target/pgo/release)
#   --keep           keep the work directory (configs, logs, iperf3 JSON) on success
#   --hold           once every system is up, print their namespaces and targets
#                    and wait until the file it names is removed (to run ping, perf,
#                    tcpdump or bench/pingab.sh by hand), then measure them
#
#   CYPHONIC_BIN_DIR      directory with cyphonic-cloud and cyphonic-node; when unset
#                         the script runs `cargo build --release --locked --bins
#                         -p cyphonic-node -p cyphonic-services` and uses target/release
#   CYPHONIC_BENCH_TOOLS  cargo install root of boringtun-cli/quincy-* (default
#                         /opt/cyphonic-bench; binaries in $root/bin)
#   CYPHONIC_BENCH_TOP    extra top-level lines of the nodes' config, e.g.
#                         'threads = 0'
#   CYPHONIC_BENCH_LISTEN the nodes' `listen` (default "[::]:443", dual-stack), e.g.
#                         "0.0.0.0:443" (an IPv4-only socket)
#   CYPHONIC_BENCH_TUN    extra lines for the nodes' [tun] section, e.g.
#                         'offload = false' (to measure what a setting buys)
#   CYPHONIC_BENCH_PEERS  extra lines for the nodes' [peers] section, e.g.
#                         'congestion = "bbr"'
#   CYPHONIC_BENCH_BT_ARGS extra arguments for boringtun-cli, e.g.
#                         '--threads 1 --disable-connected-udp'
#
# Example: CYPHONIC_BIN_DIR=/tmp/cyb-bin sudo -E bash bench/dataplane.sh --no-build \
#            --out /tmp/dataplane.md
#
# What is measured, per system (each system has its own namespaces; all are brought
# up one after another and stay up, then measured):
#   - RTT first, on idle tunnels: `ping -c N -i 0.2` from a to b, in R rounds; each
#     round pings every system in turn. avg and min over all R x N replies, in ms,
#     and each round's average. Twenty pings per system taken one system after
#     another, minutes apart, moved a ratio between two systems by +-20 % on this
#     host; interleaved rounds do not (BENCHMARKS.md).
#   - TCP: `iperf3 -c <b> -t S` from namespace a to `iperf3 -s` in b, one flow, RUNS
#     times, one system at a time (the others idle); the median and every run in
#     Mbit/s (receiver side). Each system is torn down after its TCP runs.
#   - CPU: utime+stime (all threads, /proc/PID/stat) of the tunnel daemons on both
#     ends during the iperf3 runs, as % of one core averaged over the iperf3 wall
#     time. CYPHONIC: both node daemons; cyphonic-relayed also the cloud (whose TRS
#     relays every packet), shown separately as well. Kernel work (veth, TUN, UDP
#     stack, softirq) is not attributed to anyone, so the figures are lower bounds.
#   - Ratios: TCP and RTT relative to the raw veth, and to the best reference tunnel
#     (highest TCP, lowest avg RTT among wireguard-go/boringtun/nebula/quincy).
#
# Topology, one per system (namespaces cyb-dp-$$-<n>-{a,b,c}, n the system's place
# in the order below; documentation addresses only; nothing leaves this machine):
#
#     a 198.51.100.1/24 ──── veth ──── 198.51.100.2/24 b      direct path, and the
#        203.0.113.1/30                203.0.113.5/30         outer path of every
#              │                              │               reference tunnel
#        203.0.113.2/30 ── c (cloud) ── 203.0.113.6/30
#                    203.0.113.100/32 on lo: AS/NMS/TRS, port 443
#
# a and b reach the cloud over their own veth to c, with source 198.51.100.x, so the
# cloud sees the nodes at 198.51.100.1/.2 and relayed traffic goes a→c→b. c's routes
# back to the nodes would pick the veth addresses as source: the TRS must relay from
# its advertised address all the same (see setup_topology). Inner (tunnel) addresses: CYPHONIC 100.64.0.0/10 (assigned by the cloud), wireguard-go
# 192.0.2.1/.2 (/30), boringtun 192.0.2.5/.6 (/30), nebula 192.0.2.9/.10 (/29),
# quincy 192.0.2.17 (server, a) / .18 (client, b) in 192.0.2.16/28.
#
# The tools run with their defaults except where noted:
#   - boringtun: `--disable-drop-privileges` (run as root without sudo, dropping to
#     the saved uid 0 is reported as a failure) and the TUN MTU set to 1420 (boringtun
#     leaves the TUN at 1500; 1420 is what wg-quick and wireguard-go use, so both
#     WireGuard implementations carry the same inner MTU without outer fragmentation).
#   - wireguard-go: `-f` (foreground, so its PID is known); default MTU 1420.
#   - nebula: no lighthouse, the peer in static_host_map; firewall allows everything;
#     default MTU 1300.
#   - quincy: Noise mode with the standard X25519 key exchange (no certificates to
#     make; keys made with `wg genkey`/`wg pubkey`, the same X25519 encoding); the
#     client is pinned to 192.0.2.18 with a per-user address_pool; default MTU 1400.
#   - CYPHONIC: [dns] enable = false (the bench has no resolver); MTU default 1360.
#
# Sessions: every daemon, iperf3 and the measuring ping run in a session of their
# own (setsid), as a service and an application would. With the kernel's autogroup
# scheduling (sched_autogroup_enabled, on by default) a session is a scheduling
# group; left in the bench's one session, the pinging process shared a group with
# the daemons, and pings through every tunnel came out slower (ours by ~0.1 ms,
# boringtun's less; BENCHMARKS.md, "Ping RTT in interleaved rounds").
#
# Every process this script starts is killed by PID, and the namespaces are removed,
# on exit, error or Ctrl-C. A failing system shows FAILED with the reason (its logs
# are in the work directory, which is then kept) and the others still run.
set -euo pipefail

export NO_COLOR=1 # plain daemon logs (tracing-subscriber honours it)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL_SYSTEMS=(raw cyphonic-direct cyphonic-relayed wireguard-go boringtun nebula quincy)
REF_SYSTEMS=(wireguard-go boringtun nebula quincy)
TOOLS_ROOT=${CYPHONIC_BENCH_TOOLS:-/opt/cyphonic-bench}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "dataplane.sh: error: $*" >&2; exit 1; }

ORIG_ARGS=("$@")
systems_arg=all runs=3 secs=10 pings=20 rounds=5 out="" install=1 build=1 pgo=0 keep=0 hold=0
while (($#)); do
  case $1 in
    --systems) systems_arg=${2:?--systems needs a value}; shift 2 ;;
    --systems=*) systems_arg=${1#*=}; shift ;;
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --runs=*) runs=${1#*=}; shift ;;
    --time) secs=${2:?--time needs a value}; shift 2 ;;
    --time=*) secs=${1#*=}; shift ;;
    --pings) pings=${2:?--pings needs a value}; shift 2 ;;
    --pings=*) pings=${1#*=}; shift ;;
    --ping-rounds) rounds=${2:?--ping-rounds needs a value}; shift 2 ;;
    --ping-rounds=*) rounds=${1#*=}; shift ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --no-install) install=0; shift ;;
    --no-build) build=0; shift ;;
    --pgo) pgo=1; shift ;;
    --keep) keep=1; shift ;;
    --hold) hold=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ $secs =~ ^[1-9][0-9]*$ ]] || die "--time must be a positive integer"
[[ $pings =~ ^[1-9][0-9]*$ ]] || die "--pings must be a positive integer"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--ping-rounds must be a positive integer"
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, TUN devices)"

SYSTEMS=()
if [ "$systems_arg" = all ]; then
  SYSTEMS=("${ALL_SYSTEMS[@]}")
else
  IFS=, read -r -a wanted <<<"$systems_arg"
  for w in "${wanted[@]}"; do
    [[ " ${ALL_SYSTEMS[*]} " == *" $w "* ]] || die "unknown system '$w' (known: ${ALL_SYSTEMS[*]})"
  done
  for s in "${ALL_SYSTEMS[@]}"; do
    [[ " ${wanted[*]} " == *" $s "* ]] && SYSTEMS+=("$s")
  done
fi
((${#SYSTEMS[@]})) || die "no system selected"
selected() { [[ " ${SYSTEMS[*]} " == *" $1 "* ]]; }
want_cyphonic() { selected cyphonic-direct || selected cyphonic-relayed; }

if [ -n "$out" ]; then
  mkdir -p "$(dirname "$out")"
  out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
fi

# ---------------------------------------------------------------- work dir, cleanup
WORK=$(mktemp -d /tmp/cyb-dataplane.XXXXXX)
chmod 755 "$WORK"
NS_PREFIX=cyb-dp-$$-       # each system's namespaces: $NS_PREFIX<n>-{a,b,c}
NS_A="" NS_B="" NS_C=""   # set per system (run_system)
PIDFILE=$WORK/pids        # every background process started, "pid name" per line
SOCKS=()                  # /var/run/wireguard sockets of our interfaces (global path)
ok_all=1 finished=0 cleaned=0
declare -A SUB=()         # system -> PID of its runner (a subshell of this script)
# Interface names: the WireGuard UAPI socket is /var/run/wireguard/<ifname>.sock on
# the shared filesystem, so tunnel names carry our PID (IFNAMSIZ: 15 chars max).
IF_WG_A=cwga$$ IF_WG_B=cwgb$$ IF_BT_A=cbta$$ IF_BT_B=cbtb$$
IF_NEB=cneb$$ IF_QS=cqs$$ IF_QC=cqc$$
SOCKS=("$IF_WG_A" "$IF_WG_B" "$IF_BT_A" "$IF_BT_B")
had_wg_run_dir=0
[ -d /var/run/wireguard ] && had_wg_run_dir=1
: >"$PIDFILE"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Our process, still running (not a zombie, and not a recycled PID: its command line
# has the name we recorded, or is still this script's between fork and exec).
ours_alive() {
  local pid=$1 name=$2 st
  st=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [ "${st%% *}" != Z ] || return 1
  grep -qa -e "$name" -e dataplane.sh "/proc/$pid/cmdline" 2>/dev/null && return 0
  # Mid-exec (ip netns exec → the tool) cmdline can read empty for a moment.
  sleep 0.1
  grep -qa -e "$name" -e dataplane.sh "/proc/$pid/cmdline" 2>/dev/null
}

# SIGTERM, up to 5 s grace, then SIGKILL; by PID only.
stop_pid() {
  local pid=$1 name=$2 i
  ours_alive "$pid" "$name" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    ours_alive "$pid" "$name" || break
    sleep 0.1
  done
  if ours_alive "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

stop_all_recorded() {
  local pid name
  [ -f "$PIDFILE" ] || return 0
  while read -r pid name; do
    [ -n "$pid" ] && stop_pid "$pid" "$name"
  done < <(tac "$PIDFILE")
}

our_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -- "^$NS_PREFIX" || true; }

cleanup() {
  local rc=$? ns pid s i sys
  ((cleaned)) && return 0
  cleaned=1
  trap '' INT TERM
  # Systems still running (interrupted): ask their runners to tear down, stop what
  # they started, then give them a moment to finish before the namespaces go.
  for sys in "${!SUB[@]}"; do kill -TERM "${SUB[$sys]}" 2>/dev/null || true; done
  stop_all_recorded
  for ns in $(our_namespaces); do
    # Anything still inside our own namespaces was started by us (iperf3, ping...).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for sys in "${!SUB[@]}"; do
    pid=${SUB[$sys]}
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for ns in $(our_namespaces); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  for s in "${SOCKS[@]}"; do rm -f "/var/run/wireguard/$s.sock"; done
  ((had_wg_run_dir)) || rmdir /var/run/wireguard 2>/dev/null || true
  if ((finished && ok_all && !keep && rc == 0)); then
    rm -rf "$WORK"
  else
    echo "work directory (configs, logs, iperf3 JSON) kept: $WORK" >&2
  fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# Start a background process inside a namespace, in a session of its own; sets
# $bg_pid. `setsid` (a background job of this shell leads no process group, so it
# does not fork) and `ip netns exec` exec the command, so the PID is the daemon's own.
start_bg() {
  local ns=$1 logf=$2 name
  shift 2
  name=$(basename "$1")
  setsid ip netns exec "$ns" "$@" >"$logf" 2>&1 </dev/null &
  bg_pid=$!
  echo "$bg_pid $name" >>"$PIDFILE"
  echo "$bg_pid $name" >>"$SYS_PIDS"
}

# wait_until TIMEOUT_S DESCRIPTION CMD...: poll every 0.2 s.
wait_until() {
  local timeout=$1 desc=$2 i
  shift 2
  for ((i = 0; i < timeout * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fail "timed out after ${timeout}s waiting for $desc"
}

# wait_log FILE PATTERN TIMEOUT PID NAME: the log has PATTERN while PID runs.
wait_log() {
  local f=$1 pat=$2 timeout=$3 pid=$4 name=$5 i
  for ((i = 0; i < timeout * 5; i++)); do
    grep -q -- "$pat" "$f" 2>/dev/null && return 0
    ours_alive "$pid" "$name" || fail "$name exited before logging '$pat' (log: $f): $(tail -n 3 "$f" | tr '\n' ' ')"
    sleep 0.2
  done
  fail "timed out after ${timeout}s waiting for '$pat' in $f"
}

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
has_addr() { ip -n "$1" -o addr show dev "$2" up 2>/dev/null | grep -Eq "inet ${3//./\\.}[/ ]"; }

# ---------------------------------------------------------------- tools
have() { command -v "$1" >/dev/null 2>&1; }
tool() { # path of a cargo-installed reference binary, else from PATH
  if [ -x "$TOOLS_ROOT/bin/$1" ]; then echo "$TOOLS_ROOT/bin/$1"; else command -v "$1" 2>/dev/null || true; fi
}
declare -A APT_PKG=([iperf3]=iperf3 [wireguard-go]=wireguard-go [wg]=wireguard-tools
  [nebula]=nebula [nebula-cert]=nebula [ip]=iproute2 [ping]=iputils-ping [jq]=jq)

install_tools() {
  local need=() c crates=() b
  for c in iperf3 wireguard-go wg nebula nebula-cert ip ping jq; do
    have "$c" || need+=("${APT_PKG[$c]}")
  done
  if ((${#need[@]})); then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    log "installing Debian packages: ${need[*]}"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iperf3 wireguard-go wireguard-tools nebula iproute2 iputils-ping jq >"$WORK/apt.log" 2>&1 ||
      echo "warning: apt-get install failed (see $WORK/apt.log); affected systems will fail" >&2
  fi
  selected boringtun && [ -z "$(tool boringtun-cli)" ] && crates+=(boringtun-cli)
  if selected quincy; then
    for b in quincy-server quincy-client; do [ -z "$(tool $b)" ] && crates+=("$b"); done
  fi
  if ((${#crates[@]})); then
    if have cargo; then
      log "cargo install --locked --root $TOOLS_ROOT ${crates[*]} (log: $WORK/cargo-install.log; takes minutes)"
      cargo install --locked --root "$TOOLS_ROOT" "${crates[@]}" >"$WORK/cargo-install.log" 2>&1 ||
        echo "warning: cargo install failed (see $WORK/cargo-install.log); affected systems will fail" >&2
    else
      echo "warning: cargo not found, cannot install ${crates[*]}; affected systems will fail" >&2
    fi
  fi
}
((install)) && install_tools
for c in ip ping iperf3 jq awk timeout; do have "$c" || die "$c is required (drop --no-install to install it)"; done

BIN_DIR=""
if want_cyphonic; then
  if [ -n "${CYPHONIC_BIN_DIR:-}" ]; then
    BIN_DIR=$CYPHONIC_BIN_DIR
  else
    BIN_DIR=$ROOT/target/release
    if ((pgo)); then
      BIN_DIR=$ROOT/target/pgo/release
      if ((build)); then
        log "building CYPHONIC with profile-guided optimisation (scripts/build-pgo.sh)"
        bash "$ROOT/scripts/build-pgo.sh" || die "scripts/build-pgo.sh failed"
      fi
    elif ((build)); then
      log "building CYPHONIC (cargo build --release --locked --bins -p cyphonic-node -p cyphonic-services)"
      (cd "$ROOT" && cargo build --release --locked --bins -p cyphonic-node -p cyphonic-services) ||
        die "cargo build failed"
    fi
  fi
  BIN_DIR=$(cd "$BIN_DIR" 2>/dev/null && pwd) || die "CYPHONIC binary directory $BIN_DIR does not exist"
fi
CLOUD_BIN=${BIN_DIR:+$BIN_DIR/cyphonic-cloud}
NODE_BIN=${BIN_DIR:+$BIN_DIR/cyphonic-node}

# ---------------------------------------------------------------- header
ver() { "$@" 2>&1 | head -n 1 | tr -s ' ' || true; }
crate_ver() { # version of a cargo-installed crate under TOOLS_ROOT
  grep -o "\"$1 [0-9][^ ]*" "$TOOLS_ROOT/.crates.toml" 2>/dev/null | head -n 1 | cut -d' ' -f2 || true
}
HEADER=()
HEADER+=("date: $(date -u '+%Y-%m-%d %H:%M UTC')")
HEADER+=("kernel: $(uname -r); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); nproc: $(nproc)")
HEADER+=("options: systems=$(IFS=,; echo "${SYSTEMS[*]}") runs=$runs time=${secs}s pings=$pings ping-rounds=$rounds; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)")
if want_cyphonic; then
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev="$rev+dirty"
  HEADER+=("cyphonic: $(ver "$NODE_BIN" -V) / $(ver "$CLOUD_BIN" -V) from $BIN_DIR (repo $rev)")
fi
HEADER+=("iperf3: $(ver iperf3 --version); ping: $(ver ping -V)")
selected wireguard-go && HEADER+=("wireguard-go: $(ver wireguard-go --version); wg: $(ver wg --version)")
selected boringtun && HEADER+=("boringtun-cli: $(ver "$(tool boringtun-cli)" --version)")
selected nebula && HEADER+=("nebula: $(ver nebula -version)")
selected quincy && HEADER+=("quincy-server: $(crate_ver quincy-server), quincy-client: $(crate_ver quincy-client) (quinn-based, AGPL; reference binary only)")
echo "== CYPHONIC data-plane benchmark"
printf '   %s\n' "${HEADER[@]}"
echo "   work directory: $WORK"

# ---------------------------------------------------------------- topology
A_IP=198.51.100.1 B_IP=198.51.100.2 CLOUD_IP=203.0.113.100
setup_topology() {
  local ns
  for ns in "$NS_A" "$NS_B" "$NS_C"; do
    ip netns add "$ns"
    nsx "$ns" ip link set lo up
  done
  # Created directly inside the namespaces: no name clash in the root namespace.
  ip link add ab netns "$NS_A" type veth peer name ba netns "$NS_B"
  ip link add ac netns "$NS_A" type veth peer name ca netns "$NS_C"
  ip link add bc netns "$NS_B" type veth peer name cb netns "$NS_C"
  nsx "$NS_A" ip addr add "$A_IP/24" dev ab
  nsx "$NS_B" ip addr add "$B_IP/24" dev ba
  nsx "$NS_A" ip addr add 203.0.113.1/30 dev ac
  nsx "$NS_C" ip addr add 203.0.113.2/30 dev ca
  nsx "$NS_B" ip addr add 203.0.113.5/30 dev bc
  nsx "$NS_C" ip addr add 203.0.113.6/30 dev cb
  nsx "$NS_C" ip addr add "$CLOUD_IP/32" dev lo
  for ns in "$NS_A:ab ac" "$NS_B:ba bc" "$NS_C:ca cb"; do
    for l in ${ns#*:}; do nsx "${ns%%:*}" ip link set "$l" up; done
  done
  nsx "$NS_A" ip route add "$CLOUD_IP/32" via 203.0.113.2 src "$A_IP"
  nsx "$NS_B" ip route add "$CLOUD_IP/32" via 203.0.113.6 src "$B_IP"
  # No `src` here: the route alone would send from the veth address 203.0.113.2/.6;
  # the TRS must answer and relay from the address the nodes know it by (it sends
  # from the address each datagram arrived on).
  nsx "$NS_C" ip route add "$A_IP/32" via 203.0.113.1
  nsx "$NS_C" ip route add "$B_IP/32" via 203.0.113.5
  nsx "$NS_A" ping -c 1 -W 2 "$B_IP" >/dev/null || fail "topology: a cannot reach b over the veth"
  nsx "$NS_A" ping -c 1 -W 2 "$CLOUD_IP" >/dev/null || fail "topology: a cannot reach the cloud address"
  nsx "$NS_B" ping -c 1 -W 2 "$CLOUD_IP" >/dev/null || fail "topology: b cannot reach the cloud address"
}

# ---------------------------------------------------------------- measurement
CLK_TCK=$(getconf CLK_TCK)
ticks() { # utime+stime of the whole process (all threads), in clock ticks
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo -1; return; }
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}

# Time all live threads of a process have run on a CPU, in ns (schedstat): precise
# enough for the few ms of a ping phase. A thread that exits drops out of the sum, so
# the long iperf3 phase uses ticks() above, which keeps dead threads' time.
oncpu_ns() {
  local t sum=0 a
  for t in /proc/"$1"/task/*/schedstat; do
    read -r a _ <"$t" 2>/dev/null && sum=$((sum + a))
  done
  echo "$sum"
}

# measure_tcp TARGET: RUNS x iperf3 with the daemons' CPU; writes $RES.
# DAEMONS: "label:pid:name ..." (set by the system's start function).
measure_tcp() {
  local target=$1 i t0 t1 wall_ns=0 json mbps runs_list=() d label pid name prev now
  local -A before=() total=()
  for d in "${DAEMONS[@]}"; do total[${d%%:*}]=0; done
  for ((i = 1; i <= runs; i++)); do
    for d in "${DAEMONS[@]}"; do
      IFS=: read -r label pid name <<<"$d"
      ours_alive "$pid" "$name" || fail "$label ($name, pid $pid) is no longer running"
      before[$label]=$(ticks "$pid")
    done
    json=$SYS_DIR/iperf3-$i.json
    log "  iperf3 run $i/$runs (${secs}s) -> $target"
    t0=$(date +%s%N)
    timeout --foreground -k 5 $((secs + 30)) setsid -w ip netns exec "$NS_A" \
      iperf3 -c "$target" -t "$secs" -J --connect-timeout 5000 >"$json" 2>"$json.err" || true
    t1=$(date +%s%N)
    for d in "${DAEMONS[@]}"; do
      IFS=: read -r label pid name <<<"$d"
      ours_alive "$pid" "$name" || fail "$label ($name, pid $pid) died during iperf3 run $i"
      now=$(ticks "$pid") prev=${before[$label]}
      total[$label]=$((${total[$label]} + now - prev))
    done
    wall_ns=$((wall_ns + t1 - t0))
    mbps=$(jq -r 'if .error then "error: " + .error else (.end.sum_received.bits_per_second / 1e6 | tostring) end' \
      "$json" 2>/dev/null || echo "error: no iperf3 JSON ($(head -c 200 "$json.err"))")
    [[ $mbps == error* ]] && fail "iperf3 run $i: ${mbps#error: }"
    runs_list+=("$(printf '%.0f' "$mbps")")
  done
  result r_tcp_runs "${runs_list[*]}"
  result r_tcp_median "$(printf '%s\n' "${runs_list[@]}" | sort -n | awk '{v[NR] = $1}
    END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
  if ((${#DAEMONS[@]})); then
    local sum=0 detail="" t pct
    for d in "${DAEMONS[@]}"; do
      label=${d%%:*}
      t=${total[$label]}
      pct=$(awk -v t="$t" -v hz="$CLK_TCK" -v w="$wall_ns" 'BEGIN { printf "%.0f", t / hz / (w / 1e9) * 100 }')
      detail+="${detail:+, }$label $pct"
      sum=$((sum + t))
    done
    result r_cpu "$(awk -v t="$sum" -v hz="$CLK_TCK" -v w="$wall_ns" 'BEGIN { printf "%.0f", t / hz / (w / 1e9) * 100 }')"
    result r_cpu_detail "$detail"
  fi
}

# ---------------------------------------------------------------- per-system runner
RESULTS=$WORK/results
mkdir -p "$RESULTS"
result() { printf '%s=%q\n' "$1" "$2" >>"$RES"; }
fail() { # abort the current system with a reason (inside its subshell)
  printf 'r_reason=%q\n' "$*" >>"$RES"
  echo "   FAILED: $*" >&2
  exit 1
}

start_iperf_server() {
  start_bg "$NS_B" "$SYS_DIR/iperf3-server.log" iperf3 -s
  local pid=$bg_pid
  wait_until 10 "iperf3 server in b" bash -c "ip netns exec '$NS_B' ss -Hltn 'sport = :5201' | grep -q LISTEN"
  ours_alive "$pid" iperf3 || fail "iperf3 -s exited (log: $SYS_DIR/iperf3-server.log)"
}

# ping TARGET from a until it answers (bounded); the first packets may set up the tunnel.
wait_ping() {
  local target=$1 timeout=$2 i
  for ((i = 0; i < timeout; i++)); do
    nsx "$NS_A" ping -n -c 1 -W 1 "$target" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fail "no ping reply from $target within ~${timeout}s"
}

# Teardown of one system: stop its processes, then remove its namespaces (with any
# link it left behind).
teardown_system() {
  local pid name ns
  trap - ERR
  if [ -f "$SYS_PIDS" ]; then
    while read -r pid name; do stop_pid "$pid" "$name"; done < <(tac "$SYS_PIDS")
  fi
  for ns in "$NS_A" "$NS_B" "$NS_C"; do
    ip netns list 2>/dev/null | grep -qw -- "$ns" || continue
    # Anything still inside was started by this system (iperf3 -s, a ping...).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  # Only this system's: a WireGuard daemon whose UAPI socket goes away exits.
  for l in "${SYS_SOCKS[@]}"; do rm -f "/var/run/wireguard/$l.sock"; done
}

# run_system SYSTEM N (in a subshell of its own): its namespaces and the system up,
# then "ready" in its directory (sender namespace, target, daemons) for the pings the
# main shell sends; then, once the main shell writes "go" (or "stop: why") to the FIFO
# $SYS_DIR/go, its TCP runs, and the teardown. The runner blocks on the FIFO, so it
# does no work of its own while other systems are pinged (a poll would run a `sleep`
# every 0.2 s in each of seven runners).
run_system() {
  local sys=$1 n=$2 d g
  SYS_DIR=$WORK/$sys
  SYS_PIDS=$SYS_DIR/pids
  RES=$RESULTS/$sys
  NS_A=$NS_PREFIX$n-a NS_B=$NS_PREFIX$n-b NS_C=$NS_PREFIX$n-c
  mkdir -p "$SYS_DIR"
  : >"$SYS_PIDS"
  : >"$RES"
  DAEMONS=()
  SYS_SOCKS=()
  TARGET=""
  POST_CHECK=""
  trap teardown_system EXIT
  trap 'exit 143' TERM
  set -E
  trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR
  log "  namespaces $NS_A $NS_B $NS_C"
  setup_topology
  "sys_${sys//-/_}"
  start_iperf_server
  {
    printf 'NS_A=%q NS_B=%q NS_C=%q TARGET=%q\n' "$NS_A" "$NS_B" "$NS_C" "$TARGET"
    printf 'DAEMONS=('
    for d in "${DAEMONS[@]}"; do printf '%q ' "$d"; done
    printf ')\n'
  } >"$SYS_DIR/ready.tmp"
  mkfifo "$SYS_DIR/go"
  mv "$SYS_DIR/ready.tmp" "$SYS_DIR/ready"
  # The main shell's pings run now; it is bounded, and it stops us if it dies.
  g=""
  read -r g <"$SYS_DIR/go" || true
  [ "$g" = go ] || fail "${g#stop: }"
  measure_tcp "$TARGET"
  [ -z "$POST_CHECK" ] || $POST_CHECK
  result r_status ok
}

# ---------------------------------------------------------------- systems
sys_raw() {
  TARGET=$B_IP
}

# CYPHONIC: cloud in c (once initialised, state reused), nodes alice (a) and bob (b).
CY_DIR="" # per system: set by cyphonic_up
cy_prepare() { # idempotent: cloud config, CA, devices, tokens
  [ -x "$CLOUD_BIN" ] || fail "$CLOUD_BIN not found or not executable"
  [ -x "$NODE_BIN" ] || fail "$NODE_BIN not found or not executable"
  mkdir -p "$CY_DIR"
  [ -f "$CY_DIR/prepared" ] && return 0
  cat >"$CY_DIR/cloud.toml" <<EOF
state_dir = "$CY_DIR/cloud-state"
listen = "[::]:443"

[advertise]
port = 443
ipv4 = "$CLOUD_IP"
EOF
  "$CLOUD_BIN" --config "$CY_DIR/cloud.toml" init >"$CY_DIR/init.log" 2>&1 ||
    fail "cyphonic-cloud init failed (log: $CY_DIR/init.log)"
  local dev tok
  for dev in alice bob; do
    "$CLOUD_BIN" --config "$CY_DIR/cloud.toml" device add "$dev" --json >"$CY_DIR/device-$dev.json" 2>"$CY_DIR/device-$dev.err" ||
      fail "cyphonic-cloud device add $dev failed (log: $CY_DIR/device-$dev.err)"
    tok=$(jq -r '.enrollment_token // empty' "$CY_DIR/device-$dev.json")
    [ -n "$tok" ] || fail "no enrollment_token in $CY_DIR/device-$dev.json"
    echo "$tok" >"$CY_DIR/token-$dev"
  done
  touch "$CY_DIR/prepared"
}

cy_node_conf() { # DEVICE RELAY_ONLY
  local dev=$1 relay=$2 d=$CY_DIR/node-$1
  mkdir -p "$d"
  cat >"$d/node.toml" <<EOF
state_dir = "$d/state"
cloud = "$CLOUD_IP:443"
ca_cert = "$CY_DIR/cloud-state/ca/ca.crt"
device = "$dev"
enrollment_token = "$(cat "$CY_DIR/token-$dev")"
control_socket = "$d/control.sock"
listen = "${CYPHONIC_BENCH_LISTEN:-[::]:443}"
${CYPHONIC_BENCH_TOP:-}

[dns]
enable = false

[tun]
${CYPHONIC_BENCH_TUN:-}

[peers]
relay_only = $relay
${CYPHONIC_BENCH_PEERS:-}
EOF
}

cyphonic_up() { # RELAY_ONLY EXPECTED_PATH
  local relay=$1 want=$2 cloud_pid a_pid b_pid vip
  CY_DIR=$SYS_DIR/cyphonic
  cy_prepare
  start_bg "$NS_C" "$SYS_DIR/cloud.log" "$CLOUD_BIN" --config "$CY_DIR/cloud.toml" run
  cloud_pid=$bg_pid
  wait_log "$SYS_DIR/cloud.log" "cloud serving" 30 "$cloud_pid" cyphonic-cloud
  cy_node_conf alice "$relay"
  cy_node_conf bob "$relay"
  rm -f "$CY_DIR"/node-*/control.sock
  start_bg "$NS_A" "$SYS_DIR/node-alice.log" "$NODE_BIN" --config "$CY_DIR/node-alice/node.toml" run
  a_pid=$bg_pid
  start_bg "$NS_B" "$SYS_DIR/node-bob.log" "$NODE_BIN" --config "$CY_DIR/node-bob/node.toml" run
  b_pid=$bg_pid
  wait_log "$SYS_DIR/node-alice.log" "node ready" 60 "$a_pid" cyphonic-node
  wait_log "$SYS_DIR/node-bob.log" "node ready" 60 "$b_pid" cyphonic-node
  vip=$(timeout 10 "$NODE_BIN" --socket "$CY_DIR/node-bob/control.sock" status --json |
    jq -r '.virtual_ipv4 // empty' | cut -d/ -f1) || true
  [[ $vip =~ ^100\. ]] || fail "could not read bob's virtual IPv4 from 'status --json' (got '$vip'; log: $SYS_DIR/node-bob.log)"
  wait_ping "$vip" 30
  cy_check_path "$want" before
  log "  alice -> bob ($vip): path $want"
  TARGET=$vip
  POST_CHECK="cy_check_path $want after"
  DAEMONS=("alice:$a_pid:cyphonic-node" "bob:$b_pid:cyphonic-node")
  [ "$relay" = true ] && DAEMONS+=("cloud:$cloud_pid:cyphonic-cloud")
  return 0
}
# The path alice's daemon reports for bob must be WANT (checked before the
# measurement and again after it, so a path switch mid-run is not measured silently).
cy_check_path() { # WANT WHEN
  local want=$1 when=$2 peers path f=$SYS_DIR/peers-alice-$2.json
  peers=$(timeout 10 "$NODE_BIN" --socket "$CY_DIR/node-alice/control.sock" peers --json) ||
    fail "cyphonic-node peers --json failed on alice ($when the measurement)"
  echo "$peers" >"$f"
  path=$(jq -r '(if type == "array" then . else (.peers // []) end)
    | map(select((.fqdn // "") | startswith("bob."))) | .[0].path // empty' <<<"$peers")
  [ "$path" = "$want" ] ||
    fail "path from alice to bob $when the measurement is '${path:-none}', expected '$want' (peers: $f)"
}
sys_cyphonic_direct() { cyphonic_up false direct; }
sys_cyphonic_relayed() { cyphonic_up true relayed; }

# WireGuard (wireguard-go or boringtun), configured with `wg`.
wg_up() { # KIND IF_A IF_B ADDR_A ADDR_B PREFIX
  local kind=$1 ifa=$2 ifb=$3 ia=$4 ib=$5 plen=$6 pa pb d=$SYS_DIR side ns ifn pid bin
  have wg || fail "wg (wireguard-tools) not found"
  SYS_SOCKS=("$ifa" "$ifb")
  umask 077
  wg genkey >"$d/a.key"
  wg genkey >"$d/b.key"
  umask 022
  pa=$(wg pubkey <"$d/a.key")
  pb=$(wg pubkey <"$d/b.key")
  local -A pids=()
  for side in a b; do
    if [ $side = a ]; then ns=$NS_A ifn=$ifa; else ns=$NS_B ifn=$ifb; fi
    if [ "$kind" = wireguard-go ]; then
      have wireguard-go || fail "wireguard-go not found"
      start_bg "$ns" "$d/wireguard-go-$side.log" wireguard-go -f "$ifn"
      pid=$bg_pid
      pids[$side]="$pid:wireguard-go"
    else
      bin=$(tool boringtun-cli)
      [ -n "$bin" ] || fail "boringtun-cli not found in $TOOLS_ROOT/bin or PATH"
      start_bg "$ns" "$d/boringtun-$side.out" "$bin" -f --disable-drop-privileges \
        ${CYPHONIC_BENCH_BT_ARGS:-} \
        -l "$d/boringtun-$side.log" "$ifn"
      pid=$bg_pid
      pids[$side]="$pid:boringtun-cli"
    fi
    wait_until 10 "$kind UAPI socket /var/run/wireguard/$ifn.sock" test -S "/var/run/wireguard/$ifn.sock"
    ours_alive "$pid" "${pids[$side]#*:}" || fail "$kind on $side exited (log: $d)"
  done
  nsx "$NS_A" wg set "$ifa" listen-port 51820 private-key "$d/a.key" \
    peer "$pb" allowed-ips "$ib/32" endpoint "$B_IP:51820"
  nsx "$NS_B" wg set "$ifb" listen-port 51820 private-key "$d/b.key" \
    peer "$pa" allowed-ips "$ia/32" endpoint "$A_IP:51820"
  nsx "$NS_A" ip addr add "$ia/$plen" dev "$ifa"
  nsx "$NS_B" ip addr add "$ib/$plen" dev "$ifb"
  if [ "$kind" = boringtun ]; then # see header: same inner MTU as wireguard-go / wg-quick
    nsx "$NS_A" ip link set "$ifa" mtu 1420
    nsx "$NS_B" ip link set "$ifb" mtu 1420
  fi
  nsx "$NS_A" ip link set "$ifa" up
  nsx "$NS_B" ip link set "$ifb" up
  wait_ping "$ib" 20
  TARGET=$ib
  DAEMONS=("a:${pids[a]}" "b:${pids[b]}")
}
sys_wireguard_go() { wg_up wireguard-go "$IF_WG_A" "$IF_WG_B" 192.0.2.1 192.0.2.2 30; }
sys_boringtun() { wg_up boringtun "$IF_BT_A" "$IF_BT_B" 192.0.2.5 192.0.2.6 30; }

sys_nebula() {
  local d=$SYS_DIR side ns ip other_ip other_outer pid
  have nebula || fail "nebula not found"
  have nebula-cert || fail "nebula-cert not found"
  nebula-cert ca -name cyb-bench -out-crt "$d/ca.crt" -out-key "$d/ca.key" >"$d/cert.log" 2>&1 ||
    fail "nebula-cert ca failed (log: $d/cert.log)"
  local -A pids=()
  for side in a b; do
    if [ $side = a ]; then
      ns=$NS_A ip=192.0.2.9 other_ip=192.0.2.10 other_outer=$B_IP
    else
      ns=$NS_B ip=192.0.2.10 other_ip=192.0.2.9 other_outer=$A_IP
    fi
    nebula-cert sign -name "host-$side" -ip "$ip/29" -ca-crt "$d/ca.crt" -ca-key "$d/ca.key" \
      -out-crt "$d/$side.crt" -out-key "$d/$side.key" >>"$d/cert.log" 2>&1 ||
      fail "nebula-cert sign failed (log: $d/cert.log)"
    cat >"$d/$side.yml" <<EOF
pki:
  ca: $d/ca.crt
  cert: $d/$side.crt
  key: $d/$side.key
static_host_map:
  "$other_ip": ["$other_outer:4242"]
lighthouse:
  am_lighthouse: false
  hosts: []
listen:
  host: 0.0.0.0
  port: 4242
tun:
  dev: $IF_NEB
logging:
  level: info
firewall:
  outbound:
    - port: any
      proto: any
      host: any
  inbound:
    - port: any
      proto: any
      host: any
EOF
    start_bg "$ns" "$d/nebula-$side.log" nebula -config "$d/$side.yml"
    pid=$bg_pid
    pids[$side]=$pid
    wait_until 15 "nebula TUN with $ip in $side" has_addr "$ns" "$IF_NEB" "$ip"
    ours_alive "$pid" nebula || fail "nebula on $side exited (log: $d/nebula-$side.log)"
  done
  wait_ping 192.0.2.10 30
  TARGET=192.0.2.10
  DAEMONS=("a:${pids[a]}:nebula" "b:${pids[b]}:nebula")
}

sys_quincy() {
  local d=$SYS_DIR qs qc sk sp ck cp s_pid c_pid
  qs=$(tool quincy-server)
  qc=$(tool quincy-client)
  [ -n "$qs" ] || fail "quincy-server not found in $TOOLS_ROOT/bin or PATH"
  [ -n "$qc" ] || fail "quincy-client not found in $TOOLS_ROOT/bin or PATH"
  have wg || fail "wg (wireguard-tools, used to make X25519 keys) not found"
  umask 077
  sk=$(wg genkey)
  ck=$(wg genkey)
  umask 022
  sp=$(wg pubkey <<<"$sk")
  cp=$(wg pubkey <<<"$ck")
  cat >"$d/users.toml" <<EOF
[users.bob]
authorized_keys = ["$cp"]
address_pool = ["192.0.2.18/32"]
EOF
  cat >"$d/server.toml" <<EOF
name = "cyb-bench"
interface_name = "$IF_QS"
tunnel_network = "192.0.2.17/28"
users_file = "$d/users.toml"

[protocol]
mode = "noise"
key_exchange = "standard"
private_key = "$sk"

[log]
level = "info"
EOF
  cat >"$d/client.toml" <<EOF
connection_string = "$A_IP:55555"

[protocol]
mode = "noise"
key_exchange = "standard"
server_public_key = "$sp"
private_key = "$ck"

[network]
interface_name = "$IF_QC"

[log]
level = "info"
EOF
  chmod 600 "$d/server.toml" "$d/client.toml"
  start_bg "$NS_A" "$d/quincy-server.log" "$qs" --config-path "$d/server.toml"
  s_pid=$bg_pid
  wait_log "$d/quincy-server.log" "Starting connection handler" 20 "$s_pid" quincy-server
  start_bg "$NS_B" "$d/quincy-client.log" "$qc" --config-path "$d/client.toml"
  c_pid=$bg_pid
  wait_log "$d/quincy-client.log" "Received client address" 20 "$c_pid" quincy-client
  wait_until 10 "quincy client TUN with 192.0.2.18 in b" has_addr "$NS_B" "$IF_QC" 192.0.2.18
  wait_ping 192.0.2.18 30
  TARGET=192.0.2.18
  DAEMONS=("server-a:$s_pid:quincy-server" "client-b:$c_pid:quincy-client")
}

# ---------------------------------------------------------------- run everything
# finish SYSTEM: wait for its runner; a failure is recorded for the report.
finish() {
  local sys=$1 rc
  set +e
  wait "${SUB[$sys]}"
  rc=$?
  set -e
  unset "SUB[$sys]"
  if ((rc != 0)); then
    ok_all=0
    grep -q '^r_reason=' "$RESULTS/$sys" 2>/dev/null ||
      printf 'r_reason=%q\n' "exited with status $rc" >>"$RESULTS/$sys"
    echo "   $sys FAILED; logs: $WORK/$sys" >&2
  fi
}

# 1. Every system up, one after another, each in its own namespaces. Each runs in a
# subshell (its own error handling and teardown) in the background; this shell polls
# (so that Ctrl-C reaches its trap at once) until the system is ready or its runner
# has exited. Each runner's own waits are bounded; 300 s is a last resort.
UP=()
declare -A VERDICT=() # system -> "stop: why" when its pings got no reply
n=0
for sys in "${SYSTEMS[@]}"; do
  n=$((n + 1))
  log "== $sys: up"
  (set -e; run_system "$sys" "$n") &
  SUB[$sys]=$!
  for ((i = 0; i < 1500; i++)); do
    [ -e "$WORK/$sys/ready" ] && break
    kill -0 "${SUB[$sys]}" 2>/dev/null || break
    sleep 0.2
  done
  if [ -e "$WORK/$sys/ready" ]; then
    UP+=("$sys")
  else
    kill -TERM "${SUB[$sys]}" 2>/dev/null || true
    finish "$sys"
  fi
done

if ((hold)) && ((${#UP[@]})); then
  touch "$WORK/hold"
  for sys in "${UP[@]}"; do
    (source "$WORK/$sys/ready"; log "  holding $sys: namespaces $NS_A (sender) $NS_B $NS_C, target $TARGET")
  done
  log "  e.g. ip netns exec <sender> ping <target>; rm $WORK/hold to go on"
  while [ -e "$WORK/hold" ]; do sleep 1; done
fi

# 2. RTT: ROUNDS rounds; in each, PINGS pings through every system in turn. Per
# system: the reply times (one per line), each round's average, the sent count and
# the daemons' CPU time during its pings.
ping_once() { # SYSTEM ROUND
  local sys=$1 r=$2 out d label pid name avg
  local NS_A NS_B NS_C TARGET DAEMONS=()
  local -A before=()
  source "$WORK/$sys/ready"
  for d in "${DAEMONS[@]}"; do
    IFS=: read -r label pid name <<<"$d"
    before[$label]=$(oncpu_ns "$pid")
  done
  out=$(timeout --foreground -k 5 $((pings + 30)) setsid -w ip netns exec "$NS_A" \
    ping -n -c "$pings" -i 0.2 -W 2 "$TARGET" 2>&1) || true
  for d in "${DAEMONS[@]}"; do
    IFS=: read -r label pid name <<<"$d"
    echo "$label $(($(oncpu_ns "$pid") - ${before[$label]}))" >>"$WORK/$sys/ping-cpu"
  done
  echo "$out" >>"$WORK/$sys/ping.txt"
  sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' <<<"$out" >"$WORK/$sys/ping-round"
  cat "$WORK/$sys/ping-round" >>"$WORK/$sys/ping-times"
  avg=$(awk '{s += $1} END {if (NR) printf "%.3f", s / NR; else print "-"}' "$WORK/$sys/ping-round")
  echo "$avg" >>"$WORK/$sys/ping-rounds"
  log "  round $r/$rounds: $sys ping x$pings -> $TARGET: avg $avg ms"
}
for ((r = 1; r <= rounds; r++)); do
  for sys in "${UP[@]}"; do ping_once "$sys" "$r"; done
done
for sys in "${UP[@]}"; do
  f=$WORK/$sys
  RES=$RESULTS/$sys
  got=$(wc -l <"$f/ping-times" 2>/dev/null || echo 0)
  if ((got == 0)); then
    VERDICT[$sys]="stop: no ping reply from $(source "$f/ready"; echo "$TARGET") in $rounds x $pings pings: $(tail -n 2 "$f/ping.txt" | tr '\n' ' ')"
    continue
  fi
  result r_ping_min "$(sort -n "$f/ping-times" | head -n 1)"
  result r_ping_avg "$(awk '{s += $1} END {printf "%.3f", s / NR}' "$f/ping-times")"
  result r_ping_p50 "$(sort -n "$f/ping-times" | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')"
  result r_ping_loss "$(awk -v got="$got" -v sent=$((rounds * pings)) 'BEGIN {printf "%.0f", (sent - got) * 100 / sent}')"
  result r_ping_rounds "$(paste -sd' ' "$f/ping-rounds")"
  if [ -s "$f/ping-cpu" ]; then
    result r_ping_cpu "$(awk -v n=$((rounds * pings)) '!($1 in t) {o[++k] = $1} {t[$1] += $2}
      END {for (i = 1; i <= k; i++) printf "%s%s %d", (i > 1 ? ", " : ""), o[i], t[o[i]] / n / 1000}' "$f/ping-cpu")"
  fi
done

# 3. TCP: one system at a time (the others idle), each torn down after its runs.
for sys in "${UP[@]}"; do
  log "== $sys: TCP"
  # The runner is blocked reading its FIFO (a dead one is reaped by finish: the
  # write gives up after 10 s).
  kill -0 "${SUB[$sys]}" 2>/dev/null &&
    timeout 10 bash -c 'printf "%s\n" "$1" >"$2"' _ "${VERDICT[$sys]:-go}" "$WORK/$sys/go" || true
  finish "$sys"
done

# ---------------------------------------------------------------- report
load() { # load SYSTEM: r_* variables of one system
  r_status="" r_reason="" r_tcp_runs="" r_tcp_median="" r_ping_avg="" r_ping_min=""
  r_ping_loss="" r_cpu="" r_cpu_detail="" r_ping_cpu="" r_ping_rounds="" r_ping_p50=""
  # shellcheck disable=SC1090
  [ -f "$RESULTS/$1" ] && source "$RESULTS/$1"
  r_status=${r_status:-failed}
}
ratio() {
  awk -v x="$1" -v y="$2" 'BEGIN { if (x == "" || y == "" || y + 0 == 0) { print "-"; exit }
    r = x / y; printf (r < 0.1 ? "%.3f\n" : "%.2f\n"), r }'
}

raw_tcp="" raw_rtt="" best_tcp="" best_tcp_sys="" best_rtt="" best_rtt_sys=""
for sys in "${SYSTEMS[@]}"; do
  load "$sys"
  [ "$r_status" = ok ] || continue
  if [ "$sys" = raw ]; then raw_tcp=$r_tcp_median raw_rtt=$r_ping_avg; fi
  if [[ " ${REF_SYSTEMS[*]} " == *" $sys "* ]]; then
    if [ -z "$best_tcp" ] || awk -v a="$r_tcp_median" -v b="$best_tcp" 'BEGIN { exit !(a > b) }'; then
      best_tcp=$r_tcp_median best_tcp_sys=$sys
    fi
    if [ -z "$best_rtt" ] || awk -v a="$r_ping_avg" -v b="$best_rtt" 'BEGIN { exit !(a < b) }'; then
      best_rtt=$r_ping_avg best_rtt_sys=$sys
    fi
  fi
done

COLS=("system" "TCP Mbit/s" "runs" "ping avg ms" "ping min ms" "TCP/raw" "RTT/raw" "TCP/best ref" "RTT/best ref" "daemon CPU %" "CPU detail (% of a core)" "CPU µs per ping")
ROWS=()
for sys in "${SYSTEMS[@]}"; do
  load "$sys"
  if [ "$r_status" = ok ]; then
    cpu=${r_cpu:--} detail=${r_cpu_detail:--}
    [ "$sys" = raw ] && cpu="-" detail="(no daemon)"
    [ "${r_ping_loss:-0}" != 0 ] && detail+="; ping loss ${r_ping_loss}%"
    ROWS+=("$sys|$r_tcp_median|${r_tcp_runs// /, }|$r_ping_avg|$r_ping_min|$(ratio "$r_tcp_median" "$raw_tcp")|$(ratio "$r_ping_avg" "$raw_rtt")|$(ratio "$r_tcp_median" "$best_tcp")|$(ratio "$r_ping_avg" "$best_rtt")|$cpu|$detail|${r_ping_cpu:--}")
  else
    ROWS+=("$sys|FAILED|-|-|-|-|-|-|-|-|${r_reason:-unknown} (logs: $WORK/$sys)|-")
  fi
done

echo
echo "== results (TCP: median of $runs x ${secs}s iperf3, one flow a->b; ping: $rounds interleaved rounds of $pings x 0.2 s, a->b)"
{
  (IFS='|'; echo "${COLS[*]}")
  printf '%s\n' "${ROWS[@]}"
} | awk -F'|' '
  { n = NR; for (i = 1; i <= NF; i++) { c[n, i] = $i; if (length($i) > w[i]) w[i] = length($i) }; if (NF > nf) nf = NF }
  END {
    for (r = 1; r <= n; r++) {
      line = ""
      for (i = 1; i <= nf; i++) {
        f = (i == 1 || i == 3 || i >= nf - 1) ? "%-" w[i] "s" : "%" w[i] "s"
        line = line (i > 1 ? "  " : "") sprintf(f, c[r, i])
      }
      sub(/ +$/, "", line); print line
    }
  }'
notes=()
[ -n "$best_tcp_sys" ] && notes+=("best reference: TCP $best_tcp_sys ($best_tcp Mbit/s), RTT $best_rtt_sys ($best_rtt ms avg)")
[ -z "$raw_tcp" ] && notes+=("raw veth not measured: no ratios to raw")
per_round=""
for sys in "${SYSTEMS[@]}"; do
  load "$sys"
  [ -n "$r_ping_rounds" ] && per_round+="${per_round:+; }$sys ${r_ping_rounds// /, } (median of all ${r_ping_p50:--})"
done
[ -n "$per_round" ] && notes+=("ping average of each round (ms), rounds interleaved across systems, and the median of all the system's pings: $per_round")
notes+=("RTT ratios use the average RTT over all rounds. CPU: tunnel daemons on both ends (cyphonic-relayed: nodes + cloud/TRS), utime+stime over the iperf3 wall time; kernel work is not attributed. CPU µs per ping: time each daemon ran (all threads, /proc/PID/task/*/schedstat) during the pings, divided by their number; it includes the kernel work done in the daemon's system calls and its idle timers.")
printf '%s\n' "${notes[@]}"

if [ -n "$out" ]; then
  {
    echo "Data plane, $(date -u +%Y-%m-%d): \`sudo bash bench/dataplane.sh ${ORIG_ARGS[*]}\`"
    echo
    printf -- '- %s\n' "${HEADER[@]}"
    echo
    printf '|'; for c in "${COLS[@]}"; do printf ' %s |' "$c"; done; echo
    printf '|'; for _ in "${COLS[@]}"; do printf -- '---|'; done; echo
    for r in "${ROWS[@]}"; do echo "| ${r//|/ | } |"; done
    echo
    printf -- '- %s\n' "${notes[@]}"
  } >"$out"
  log "markdown table written to $out"
fi

finished=1
if ((!ok_all)); then
  echo "dataplane.sh: one or more systems FAILED (see the table; logs in $WORK)" >&2
  exit 1
fi
