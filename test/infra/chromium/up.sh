#!/usr/bin/env bash
# Installs Debian's chromium package (first time) for the browser tests (test/browser) and prints
#   CHROMIUM=/usr/bin/chromium
# on stdout; everything else goes to stderr. Playwright (playwright-core) drives this binary: the
# tests never download a browser of their own, so the one under test is the distribution's.
# Installing needs root (apt-get); a machine without it must install chromium beforehand.
set -euo pipefail
chromium=/usr/bin/chromium
cache_root="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"

die() {
  echo "chromium: ERROR: $*" >&2
  exit 1
}

if [ ! -x "$chromium" ]; then
  command -v apt-get >/dev/null || die "$chromium is missing and apt-get is not available: install Debian's chromium package"
  [ "$(id -u)" = 0 ] || die "$chromium is missing and installing it needs root: run 'sudo apt-get install -y chromium' once"
  mkdir -p "$cache_root"
  # Two test workers may ask at once: one installs, the other waits (dpkg's own lock would fail it).
  exec 9>"$cache_root/chromium.lock"
  flock -w 900 9 || die "timed out waiting for $cache_root/chromium.lock"
  if [ ! -x "$chromium" ]; then
    echo "chromium: installing Debian's chromium package (first time only)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet; refresh them only when the package is unknown.
    if ! apt-cache show chromium >/dev/null 2>&1; then
      apt-get update >&2 || die "apt-get update failed"
    fi
    apt-get install -y --no-install-recommends chromium >&2 ||
      die "apt-get install chromium failed (see above)"
  fi
  [ -x "$chromium" ] || die "the chromium package is installed but $chromium is missing"
fi
# Debian's wrapper script prints a harmless shell warning on stderr while it sizes its caches.
version="$("$chromium" --version 2>/dev/null)" || die "$chromium does not run ('$chromium --version' failed)"
echo "chromium: $version" >&2
echo "CHROMIUM=$chromium"
