#!/usr/bin/env bash
# Run CYPHONIC on this host with the embedded defaults: a cloud (AS, NMS, TRS on SQLite,
# built-in CA) and three nodes in network namespaces, reaching each other by name.
#
#   sudo bash scripts/up.sh          # Ctrl-C stops everything and removes the namespaces
#   sudo bash scripts/up.sh --once   # show the demo and exit
#
# Needs root (namespaces, TUN devices) and Debian's iproute2, nftables, iputils-ping
# and dnsmasq-base (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --locked --workspace --bins
export CYPHONIC_BIN_DIR="$PWD/target/release"
exec "$CYPHONIC_BIN_DIR/cyphonic-up" "$@"
