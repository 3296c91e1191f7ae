#!/usr/bin/env bash
# Installs everything the control node and the test suite need, idempotently:
# Debian packages (debootstrap, a Docker engine, apt-cacher-ng, socat, ...) and
# the Python venv in .venv pinned by requirements.txt. Safe to run every time:
# a warm machine costs a dpkg query and a hash comparison.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

apt_packages=(debootstrap docker.io apt-cacher-ng socat iproute2 iptables openssh-client
              curl ca-certificates make python3-venv git xz-utils)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# promtool (alert rule unit tests) from Debian's `prometheus` package: the
# package is fetched with apt and only promtool is unpacked into .cache/bin, so
# that no Prometheus server is installed or started on the test machine.
promtool="$repo/.cache/bin/promtool"
if [[ ! -x $promtool ]]; then
  echo "bootstrap: unpacking promtool from Debian's prometheus package"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null; })
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$repo/.cache/bin"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$promtool"
  rm -rf -- "$tmp"
fi

venv="$repo/.venv"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "bootstrap: building $venv from requirements.txt"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$repo/requirements.txt"
  echo "$want" > "$stamp"
fi
