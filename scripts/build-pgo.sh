#!/usr/bin/env bash
# Profile-guided release build of cyphonic-node and cyphonic-cloud: the build to ship
# where throughput matters (BENCHMARKS.md, "Profile-guided build": when introduced,
# TCP +13–44 % and RTT −14–17 %; on the fast data path of 2026-12-04, TCP +5 %, RTT same).
#
#   sudo bash scripts/build-pgo.sh
#
# 1. builds instrumented binaries (target/pgo-gen);
# 2. trains them on the namespace bench: bench/dataplane.sh runs CYPHONIC direct and
#    relayed through the TRS (iperf3 and pings, about a minute; only namespaces it
#    creates, documentation addresses, cleaned up afterwards);
# 3. merges the profile with llvm-profdata;
# 4. builds the final binaries with it: target/pgo/release/cyphonic-{node,cloud}.
#
# Needs: root (network namespaces), what bench/dataplane.sh needs for CYPHONIC
# (iperf3, jq: `bash scripts/deps.sh` or the bench installs them), and an
# llvm-profdata that reads this rustc's profiles: `rustup component add llvm-tools`
# or Debian's llvm-N of the same LLVM major version as rustc or newer (rustc 1.95 has
# LLVM 22: `apt-get install --no-install-recommends llvm-22`).
# LLVM_PROFDATA=/path/to/llvm-profdata picks one. Takes two release builds (~10 min
# on 2 cores). The plain `cargo build --release` is unchanged.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GEN=$ROOT/target/pgo-gen
OUT=$ROOT/target/pgo
RAW=$GEN/profraw
PROF=$GEN/merged.profdata
log() { printf '%s build-pgo: %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'build-pgo: error: %s\n' "$*" >&2; exit 1; }
case "${1:-}" in
  -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
  "") ;;
  *) die "unknown argument $1 (see --help)" ;;
esac
[ "$(id -u)" = 0 ] || die "run as root: the training run builds network namespaces"

# Every llvm-profdata we can find, the most likely to match rustc's LLVM first.
profdata_candidates() {
  # (set -e: every probe may fail without ending the script)
  if [ -n "${LLVM_PROFDATA:-}" ]; then echo "$LLVM_PROFDATA"; fi
  local sysroot
  sysroot=$(rustc --print sysroot 2>/dev/null) || sysroot=/nonexistent
  ls "$sysroot"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null || true
  ls -d /usr/lib/llvm-*/bin/llvm-profdata 2>/dev/null | sort -t- -k2 -rn || true
  command -v llvm-profdata 2>/dev/null || true
}
[ -n "$(profdata_candidates)" ] ||
  die "no llvm-profdata found: run 'rustup component add llvm-tools' or 'apt-get install --no-install-recommends llvm-<rustc's LLVM major, see rustc -vV>', or set LLVM_PROFDATA"

build() { # build TARGET_DIR RUSTFLAGS
  (cd "$ROOT" && CARGO_TARGET_DIR=$1 RUSTFLAGS="${RUSTFLAGS:-} $2" \
    cargo build --release --locked --bins -p cyphonic-node -p cyphonic-services) ||
    die "cargo build failed (target dir $1)"
}

log "1/4 instrumented build (target/pgo-gen)"
rm -rf "$RAW" "$PROF"
mkdir -p "$RAW"
build "$GEN" "-Cprofile-generate=$RAW"
rm -f "$RAW"/*.profraw # build scripts are instrumented too: keep only the training run

log "2/4 training on the namespace bench (CYPHONIC direct and relayed)"
CYPHONIC_BIN_DIR=$GEN/release bash "$ROOT/bench/dataplane.sh" --no-build \
  --systems cyphonic-direct,cyphonic-relayed --runs 1 --time 5 --pings 20 --ping-rounds 2 ||
  die "the training run failed (see its output above)"
ls "$RAW"/*.profraw >/dev/null 2>&1 || die "the training run left no profile in $RAW"

log "3/4 merging the profile"
merged=""
while read -r tool; do
  [ -x "$tool" ] || continue
  if "$tool" merge -o "$PROF" "$RAW"/*.profraw 2>"$GEN/merge.err"; then
    merged=$tool
    break
  fi
  log "$tool could not read the profile: $(head -1 "$GEN/merge.err")"
done < <(profdata_candidates)
[ -n "$merged" ] ||
  die "no llvm-profdata could read the profile (rustc's LLVM is $(rustc -vV | sed -n 's/^LLVM version: //p')); install a newer one (rustup component add llvm-tools)"
log "merged with $merged"

log "4/4 optimised build with the profile (target/pgo)"
build "$OUT" "-Cprofile-use=$PROF"
log "done: $OUT/release/cyphonic-node and $OUT/release/cyphonic-cloud"
