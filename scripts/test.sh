#!/usr/bin/env bash
# The whole CYPHONIC test suite: formatting, lints, then every test of the workspace.
#
#   sudo bash scripts/test.sh            # as root on Debian 12 with the Rust toolchain
#
# It installs what the tests need (Debian packages: PostgreSQL, iproute2, nftables),
# starts a throw-away PostgreSQL on 127.0.0.1:55432 for the store tests (stopped again
# on exit), and runs `cargo test --workspace`. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
if ((${#need_pkgs[@]})); then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    echo "warning: missing ${need_pkgs[*]}; namespace tests will fail (run as root on Debian to install)" >&2
  fi
fi

echo "== starting PostgreSQL for the store tests"
eval "$(bash .ci/postgres.sh start | tail -n 1)"
trap 'bash .ci/postgres.sh stop >/dev/null 2>&1 || true' EXIT

echo "== cargo test"
cargo test --workspace --locked "$@"
