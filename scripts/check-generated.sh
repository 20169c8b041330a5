#!/usr/bin/env bash
# Generated code is committed; regenerate it and fail on any difference (protobuf-es's diffcheck idea),
# and check the proto contracts for breaking changes against the previous commit.
set -euo pipefail
cd "$(dirname "$0")/.."
npx buf generate
if ! git diff --exit-code --stat -- gen; then
  echo "gen/ is stale: run 'npm run generate' and commit the result" >&2
  exit 1
fi
if [ -n "$(git ls-files --others --exclude-standard gen)" ]; then
  echo "gen/ has uncommitted generated files: run 'npm run generate' and commit them" >&2
  exit 1
fi
if git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  npx buf breaking --against ".git#ref=HEAD~1"
fi
echo "generated code and contracts: ok"
