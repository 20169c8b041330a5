#!/usr/bin/env bash
# Installs Prometheus and promtool (first time) from Debian's prometheus package into a
# version-keyed cache and prints
#   PROMETHEUS=/abs/path/prometheus
#   PROMTOOL=/abs/path/promtool
# on stdout; everything else goes to stderr. The package is only downloaded and unpacked (no
# dpkg -i, no service): both are static binaries. Tests start their own Prometheus when they need one.
set -euo pipefail
cache_root="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"
version=$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "prometheus: refreshing the package lists (apt-get update)" >&2
    apt-get update -qq >&2
    version=$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')
  fi
fi
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  echo "prometheus: ERROR: Debian's prometheus package is not available (apt-cache policy prometheus); run apt-get update as root" >&2
  exit 1
fi
bin_dir="$cache_root/prometheus-${version//[^A-Za-z0-9.+-]/_}"
promtool="$bin_dir/promtool"
prometheus="$bin_dir/prometheus"
if [ ! -x "$promtool" ] || [ ! -x "$prometheus" ]; then
  echo "prometheus: unpacking prometheus and promtool from Debian's prometheus $version into $bin_dir (first time only)" >&2
  mkdir -p "$bin_dir"
  tmp=$(mktemp -d "$bin_dir/.tmp.XXXXXX")
  chmod 755 "$tmp" # apt-get download hands the file to the _apt user
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq "prometheus=$version") >&2
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  mv -f "$tmp/root/usr/bin/prometheus" "$prometheus"
  mv -f "$tmp/root/usr/bin/promtool" "$promtool"
fi
echo "PROMETHEUS=$prometheus"
echo "PROMTOOL=$promtool"
