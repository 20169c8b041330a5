#!/usr/bin/env bash
# Installs grpcurl (first time) with `go install` from the Go module proxy into a version-keyed cache
# and prints
#   GRPCURL=/abs/path/grpcurl
# on stdout; everything else goes to stderr. The gRPC tests call it against a real server
# (reflection: list, describe; the health service). grpcurl's go.mod has no replace lines, so a
# plain `go install github.com/fullstorydev/grpcurl/cmd/grpcurl@version` works.
set -euo pipefail
GRPCURL_VERSION=v1.9.4
cache_root="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"
bin_dir="$cache_root/grpcurl-$GRPCURL_VERSION/bin"
grpcurl="$bin_dir/grpcurl"

if [ ! -x "$grpcurl" ]; then
  command -v go >/dev/null || {
    echo "grpcurl: ERROR: go is not installed (need Go >= 1.25 on PATH to build grpcurl $GRPCURL_VERSION from the Go module proxy)" >&2
    exit 1
  }
  mkdir -p "$bin_dir"
  # Two test workers may ask at once: one builds (about a minute on 2 cores), the other waits.
  exec 9>"$bin_dir/.lock"
  flock -w 900 9 || { echo "grpcurl: ERROR: timed out waiting for $bin_dir/.lock" >&2; exit 1; }
  if [ ! -x "$grpcurl" ]; then
    echo "grpcurl: building grpcurl $GRPCURL_VERSION into $bin_dir (first time only)" >&2
    # Install into a temp dir first so an interrupted build never leaves a broken binary.
    tmp=$(mktemp -d "$bin_dir/.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # Outside any module; never let go fetch another toolchain (only the module proxy is reachable).
    (cd "$tmp" && GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$tmp" \
      go install -trimpath -ldflags "-s -w -X main.version=$GRPCURL_VERSION" \
      "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION") >&2
    mv -f "$tmp/grpcurl" "$grpcurl"
  fi
fi
echo "GRPCURL=$grpcurl"
