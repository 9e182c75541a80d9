#!/usr/bin/env bash
# Resident memory of the real release binaries (issue 7):
#   - an idle node daemon registered with the cloud, no peers;
#   - the same node with tunnels to K other nodes, idle for a few seconds:
#     (X_K - X_0) / K is the cost of one additional idle peer;
#   - the cloud process (AS, NMS and TRS in one process) right after start, with K+1
#     connected nodes, and with K+1 nodes and node 0's K tunnels set up.
# X is VmRSS and RssAnon (/proc/PID/status) and Pss (/proc/PID/smaps_rollup). Every
# node runs the same binary, so its file-backed pages (code) are shared and Pss counts
# only a share of them; RssAnon is the heap, stacks and other private memory.
#
#   sudo bash bench/resources.sh [--peers K] [--idle SECS] [--no-build] [--out FILE] [--keep]
#
#   --peers K    tunnels node 0 sets up (default 10); K+1 nodes in all
#   --idle SECS  idle time before each reading (default 5)
#   --no-build   do not run cargo build; use target/release (or CYPHONIC_BIN_DIR)
#   --out FILE   also write the figures as a markdown table (for BENCHMARKS.md)
#   --keep       keep the work directory (configs, state, logs)
#
# CYPHONIC_BIN_DIR=DIR uses prebuilt cyphonic-cloud and cyphonic-node from DIR (no
# build). Default: cargo build --release --locked --bins -p cyphonic-node
# -p cyphonic-services, and target/release.
#
# Topology: network namespaces only, nothing leaves this machine. A "switch"
# namespace holds a bridge; the cloud (198.51.100.100) and nodes 0..K
# (198.51.100.1..K+1) each have a namespace with a veth into it. Namespaces are named
# cyb-rs-<pid>-<x> and removed, with every process this script started, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

peers=10
idle=5
build=1
out=""
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --peers) peers=${2:?--peers needs a number}; shift 2 ;;
    --idle) idle=${2:?--idle needs seconds}; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$peers" in ''|*[!0-9]*) echo "--peers must be a positive integer" >&2; exit 2 ;; esac
case "$idle" in ''|*[!0-9]*) echo "--idle must be whole seconds" >&2; exit 2 ;; esac
if [ "$peers" -lt 1 ] || [ "$peers" -gt 90 ]; then
  echo "--peers must be 1..90 (node addresses are 198.51.100.1..K+1, below the cloud's .100)" >&2
  exit 2
fi
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for tool in ip jq ping awk; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
if [ -n "$out" ]; then
  case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
fi

if [ -n "${CYPHONIC_BIN_DIR:-}" ]; then
  bin=$CYPHONIC_BIN_DIR
else
  if [ "$build" -eq 1 ]; then
    cargo build --release --locked --bins -p cyphonic-node -p cyphonic-services
  fi
  bin="$PWD/target/release"
fi
cloud_bin="$bin/cyphonic-cloud"
node_bin="$bin/cyphonic-node"
for b in "$cloud_bin" "$node_bin"; do
  [ -x "$b" ] || { echo "$b not found or not executable" >&2; exit 1; }
done

# ---------------------------------------------------------------- cleanup
prefix="cyb-rs-$$"
sw="$prefix-sw"
dir=$(mktemp -d /tmp/cyb-resources.XXXXXX)
namespaces=()
node_pids=()
cloud_pids=()
ok=0

# stop PID...: SIGTERM, up to 5 s to exit, then SIGKILL.
stop() {
  local p
  for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
}

cleanup() {
  local rc=$? ns left
  trap - EXIT INT TERM
  set +e
  # The nodes first (they log out), then the cloud.
  [ ${#node_pids[@]} -eq 0 ] || stop "${node_pids[@]}"
  [ ${#cloud_pids[@]} -eq 0 ] || stop "${cloud_pids[@]}"
  for ns in "${namespaces[@]}"; do
    ip netns del "$ns" 2>/dev/null
  done
  if [ "$ok" -eq 1 ] && [ "$keep" -eq 0 ]; then
    rm -rf "$dir"
  else
    echo "work directory (configs, logs): $dir" >&2
  fi
  left=$(ip netns list | grep -c "^$prefix-" || true)
  [ "$left" -eq 0 ] || echo "WARNING: $left namespaces $prefix-* left behind" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { echo "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- topology
newns() {
  ip netns add "$1"
  namespaces+=("$1")
  ip -n "$1" link set lo up
}

# host NS ADDR PORTNAME: a namespace with eth0 (ADDR/24) into the switch's bridge.
host() {
  newns "$1"
  ip -n "$sw" link add "$3" type veth peer name eth0 netns "$1"
  ip -n "$sw" link set "$3" master br0 up
  ip -n "$1" addr add "$2/24" dev eth0
  ip -n "$1" link set eth0 up
}

newns "$sw"
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up
cloud_ns="$prefix-c"
cloud_ip=198.51.100.100
host "$cloud_ns" "$cloud_ip" pc
node_ns() { echo "$prefix-n$1"; }
nodes=$((peers + 1))
for ((i = 0; i < nodes; i++)); do
  host "$(node_ns "$i")" "198.51.100.$((i + 1))" "p$i"
done

# ---------------------------------------------------------------- helpers
# wait_log FILE PATTERN PID SECS: until FILE has PATTERN; fails if PID exits.
wait_log() {
  local deadline=$((SECONDS + $4))
  until grep -q "$2" "$1" 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || { tail -n 20 "$1" >&2; die "process $3 exited before '$2' ($1)"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$1" >&2; die "no '$2' in $1 after $4 s"; }
    sleep 0.1
  done
}

# The median of three readings, one second apart, of: VmRSS RssAnon Pss (KiB).
mem() {
  local pid=$1 a b c
  kill -0 "$pid" 2>/dev/null || die "process $pid is gone"
  case "$(cat "/proc/$pid/comm")" in
    cyphonic-*) ;;
    *) die "process $pid is $(cat "/proc/$pid/comm"), not a cyphonic daemon" ;;
  esac
  read1() {
    awk '/^VmRSS:/ {r = $2} /^RssAnon:/ {a = $2} END {printf "%d %d ", r, a}' "/proc/$pid/status" 2>/dev/null
    awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null
  }
  a=$(read1); sleep 1; b=$(read1); sleep 1; c=$(read1)
  printf '%s\n%s\n%s\n' "$a" "$b" "$c" | awk '
    { for (i = 1; i <= 3; i++) v[i, NR] = $i }
    END {
      for (i = 1; i <= 3; i++) {
        x = v[i, 1]; y = v[i, 2]; z = v[i, 3]
        m = (x <= y) ? ((y <= z) ? y : ((x <= z) ? z : x)) : ((x <= z) ? x : ((y <= z) ? z : y))
        printf "%s%d", (i > 1 ? " " : ""), m
      }
      print ""
    }'
}

mib() { awk -v k="$1" 'BEGIN { printf "%.2f MiB", k / 1024 }'; }
kib() { awk -v k="$1" 'BEGIN { printf "%.0f KiB", k }'; }

# ---------------------------------------------------------------- cloud
cat >"$dir/cloud.toml" <<EOF
state_dir = "$dir/cloud-state"
listen = "[::]:443"

[advertise]
port = 443
ipv4 = "$cloud_ip"
EOF
ip netns exec "$cloud_ns" "$cloud_bin" --config "$dir/cloud.toml" init >"$dir/cloud-init.log" 2>&1 \
  || { cat "$dir/cloud-init.log" >&2; die "cyphonic-cloud init failed"; }
ip netns exec "$cloud_ns" "$cloud_bin" --config "$dir/cloud.toml" run >"$dir/cloud.log" 2>&1 &
cloud_pid=$!
cloud_pids+=("$cloud_pid")
wait_log "$dir/cloud.log" "cloud serving" "$cloud_pid" 30
sleep 1
read -r c0_rss c0_anon c0_pss < <(mem "$cloud_pid")
echo "cloud, just started: VmRSS $(mib "$c0_rss"), RssAnon $(mib "$c0_anon"), Pss $(mib "$c0_pss")" >&2

# ---------------------------------------------------------------- nodes
for ((i = 0; i < nodes; i++)); do
  name="n$i"
  nd="$dir/node-$name"
  mkdir -p "$nd"
  token=$(ip netns exec "$cloud_ns" "$cloud_bin" --config "$dir/cloud.toml" device add "$name" --json \
    2>>"$dir/device-add.log" | jq -er .enrollment_token) || die "device add $name failed"
  cat >"$nd/node.toml" <<EOF
state_dir = "$nd/state"
cloud = "$cloud_ip:443"
ca_cert = "$dir/cloud-state/ca/ca.crt"
device = "$name"
enrollment_token = "$token"
control_socket = "$nd/control.sock"
listen = "[::]:443"

[dns]
enable = false
EOF
  ip netns exec "$(node_ns "$i")" "$node_bin" --config "$nd/node.toml" run >"$nd/node.log" 2>&1 &
  node_pids+=("$!")
done
for ((i = 0; i < nodes; i++)); do
  wait_log "$dir/node-n$i/node.log" "node ready" "${node_pids[i]}" 60
done
echo "$nodes nodes ready" >&2

ctl() { # ctl I what: cyphonic-node <what> --json of node I, bounded
  timeout 10 "$node_bin" --socket "$dir/node-n$1/control.sock" "$2" --json
}
vip=()
for ((i = 0; i < nodes; i++)); do
  v=$(ctl "$i" status | jq -er .virtual_ipv4) || die "no virtual_ipv4 for node n$i"
  vip+=("$v")
done

sleep "$idle"
read -r n0_rss n0_anon n0_pss < <(mem "${node_pids[0]}")
echo "node, idle, no peers: VmRSS $(mib "$n0_rss"), RssAnon $(mib "$n0_anon"), Pss $(mib "$n0_pss")" >&2
read -r cn_rss cn_anon cn_pss < <(mem "$cloud_pid")
echo "cloud, $nodes nodes: VmRSS $(mib "$cn_rss"), RssAnon $(mib "$cn_anon"), Pss $(mib "$cn_pss")" >&2

# ---------------------------------------------------------------- tunnels
n0="$(node_ns 0)"
for ((i = 1; i < nodes; i++)); do
  deadline=$((SECONDS + 30))
  until ip netns exec "$n0" ping -n -q -c 1 -W 1 "${vip[i]}" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "no ping reply from n$i (${vip[i]}) within 30 s"
    sleep 0.2
  done
done
count=$(ctl 0 peers | jq -er length) || die "peers --json of n0 failed"
[ "$count" -eq "$peers" ] || die "node n0 has $count tunnels, expected $peers"
paths=$(ctl 0 peers | jq -r '[.[].path | tostring] | group_by(.) | map("\(.[0]) \(length)") | join(", ")')
echo "node n0: $count tunnels ($paths)" >&2

sleep "$idle"
count=$(ctl 0 peers | jq -er length) || die "peers --json of n0 failed"
[ "$count" -eq "$peers" ] || die "node n0 has $count tunnels after idling, expected $peers"
read -r nk_rss nk_anon nk_pss < <(mem "${node_pids[0]}")
echo "node, $peers idle peers: VmRSS $(mib "$nk_rss"), RssAnon $(mib "$nk_anon"), Pss $(mib "$nk_pss")" >&2
read -r ct_rss ct_anon ct_pss < <(mem "$cloud_pid")
# Nodes 1..K each hold one tunnel (to n0): the median of their VmRSS / RssAnon.
one_peer=$(for ((i = 1; i < nodes; i++)); do
  awk '/^VmRSS:/ {r = $2} /^RssAnon:/ {a = $2} END {print r, a}' "/proc/${node_pids[i]}/status"
done | sort -n -k2 | awk '{ r[NR] = $1; a[NR] = $2 } END { m = int((NR + 1) / 2); print r[m], a[m] }')
read -r n1_rss n1_anon <<<"$one_peer"

per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.0f", (b - a) / n }'; }
pp_rss=$(per "$n0_rss" "$nk_rss" "$peers")
pp_anon=$(per "$n0_anon" "$nk_anon" "$peers")
pp_pss=$(per "$n0_pss" "$nk_pss" "$peers")
pn_rss=$(per "$c0_rss" "$cn_rss" "$nodes")
pn_anon=$(per "$c0_anon" "$cn_anon" "$nodes")
pn_pss=$(per "$c0_pss" "$cn_pss" "$nodes")

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || rev="$rev+changes"
table=$(cat <<EOF
Resident memory, K = $peers peers ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), commit $rev; readings are the median of 3, 1 s apart, after ${idle} s idle):

| process, state | VmRSS | RssAnon | Pss |
|---|---|---|---|
| node, registered, no peers | $(mib "$n0_rss") | $(mib "$n0_anon") | $(mib "$n0_pss") |
| node, $peers idle peers | $(mib "$nk_rss") | $(mib "$nk_anon") | $(mib "$nk_pss") |
| node, per additional idle peer ((X_$peers − X_0) / $peers) | $(kib "$pp_rss") | $(kib "$pp_anon") | $(kib "$pp_pss") |
| node with 1 idle peer (median of the $peers responders) | $(mib "$n1_rss") | $(mib "$n1_anon") | – |
| cloud (AS+NMS+TRS), just started, 0 nodes | $(mib "$c0_rss") | $(mib "$c0_anon") | $(mib "$c0_pss") |
| cloud, $nodes nodes connected | $(mib "$cn_rss") | $(mib "$cn_anon") | $(mib "$cn_pss") |
| cloud, $nodes nodes, $peers tunnels set up | $(mib "$ct_rss") | $(mib "$ct_anon") | $(mib "$ct_pss") |
| cloud, per connected node ((X_$nodes − X_0) / $nodes) | $(kib "$pn_rss") | $(kib "$pn_anon") | $(kib "$pn_pss") |
EOF
)
echo
echo "$table"
if [ -n "$out" ]; then
  printf '%s\n' "$table" >"$out"
  echo "written to $out" >&2
fi
ok=1
