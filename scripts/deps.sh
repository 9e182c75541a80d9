#!/usr/bin/env bash
# Install the Debian packages the namespace bench and the demo run: iproute2 (ip),
# nftables (NAT routers, firewall), iputils-ping (ping), dnsmasq-base (the bench's
# ordinary upstream DNS server). No-op when they are present.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
if ((${#need[@]})); then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "warning: missing ${need[*]}; namespace tests and the demo need them (run as root on Debian to install)" >&2
  fi
fi
