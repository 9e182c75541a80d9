#!/usr/bin/env bash
# The whole CYPHONIC test suite: every test of the workspace, including the end-to-end
# tests that run the real binaries on network-namespace topologies (tests/).
#
#   sudo bash scripts/test.sh            # as root on Debian 12 with the Rust toolchain
#
# It installs what the tests need (Debian packages: PostgreSQL, iproute2, nftables,
# iputils-ping, dnsmasq-base),
# starts a throw-away PostgreSQL on 127.0.0.1:55432 for the store tests (stopped again
# on exit), and runs `cargo test --workspace`. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

echo "== starting PostgreSQL for the store tests"
eval "$(bash .ci/postgres.sh start | tail -n 1)"
trap 'bash .ci/postgres.sh stop >/dev/null 2>&1 || true' EXIT

echo "== building every binary (the namespace tests run them)"
cargo build --workspace --bins --locked

echo "== cargo test"
CYPHONIC_BIN_DIR="$PWD/target/debug" cargo test --workspace --locked "$@"
