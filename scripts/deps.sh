#!/usr/bin/env bash
# deps.sh installs what Twill's build, lab and tests need on Debian, and only
# what is missing: iproute2 (ip netns), tcpdump (path verification), nftables
# (nft, for inspecting the firewall), iperf3 (throughput figures), ping, and a
# Go toolchain (Debian's golang-go bootstraps the version go.mod asks for
# through the Go module proxy).
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v git >/dev/null 2>&1 || need+=(git)
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  need+=(golang-go ca-certificates)
fi

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps.sh: missing ${need[*]}; run as root (sudo) so apt-get can install them" >&2
    exit 1
  fi
  echo "deps.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
