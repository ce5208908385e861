#!/usr/bin/env bash
# Installs node-postgres (npm package pg, version pinned by package.json and
# package-lock.json next to this script) into DIR/node_modules, for
# node_clients.js:
#   tests/clients/setup_node.sh DIR
#   NODE_PATH=DIR/node_modules node tests/clients/node_clients.js HOST PORT USER PASSWORD DBNAME
# Idempotent: does nothing when DIR already holds the pinned pg and it loads.
# Exit status: 0 ready; 77 cannot install (no node/npm, or the npm registry is
# unreachable, e.g. offline) - callers may treat that as "skip"; 1 other errors.
# (Debian's node-pg is not used: it needs Debian's nodejs/libnode108 and cannot be
# installed next to the NodeSource nodejs this machine has.)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ $# -ne 1 || -z $1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 1
fi
dir=$1

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "setup_node: '$tool' not found; install Node.js (with npm) to run node_clients.js" >&2
    exit 77
  fi
done

want=$(node -p "require('$here/package.json').dependencies.pg")

loads() {
  (cd / && NODE_PATH="$dir/node_modules" node -e '
    const v = require("pg/package.json").version; require("pg");
    if (v !== process.argv[1]) { console.error("pg " + v + " installed, want " + process.argv[1]); process.exit(1); }
  ' "$want") 2>/dev/null
}

if [[ -d $dir/node_modules/pg ]] && loads; then
  echo "setup_node: pg $want already installed in $dir/node_modules"
  exit 0
fi

mkdir -p "$dir"
cp "$here/package.json" "$here/package-lock.json" "$dir/"
log=$dir/npm-install.log
if ! (cd "$dir" && timeout 300 npm ci --prefer-offline --no-audit --no-fund --loglevel=error) >"$log" 2>&1; then
  echo "setup_node: 'npm ci' of pg $want into $dir failed (npm registry unreachable? offline?);" \
       "node_clients.js cannot run. npm said:" >&2
  tail -n 15 "$log" | sed 's/^/  /' >&2
  exit 77
fi
if ! loads; then
  echo "setup_node: pg $want was installed into $dir/node_modules but does not load:" >&2
  (cd / && NODE_PATH="$dir/node_modules" node -e 'require("pg")') 2>&1 | tail -n 5 | sed 's/^/  /' >&2
  exit 1
fi
echo "setup_node: installed pg $want into $dir/node_modules"
