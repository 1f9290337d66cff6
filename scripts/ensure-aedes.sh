#!/usr/bin/env bash
# Install aedes, the second MQTT broker the tests run against (MQTT 3.1.1 only, no shared
# subscriptions: tests/support/broker.py starts it with tests/support/aedes/server.mjs), into a
# cache directory outside the repository. Needs node >= 20 and npm; installs them with apt-get
# when missing.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${EDGEKIT_AEDES_DIR:-$HOME/.cache/edgekit/aedes}"
spec="$here/tests/support/aedes/package.json"
if [ -f "$dest/package.json" ] && cmp -s "$spec" "$dest/package.json" && [ -d "$dest/node_modules/aedes" ]; then
  exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node/npm are missing: installing them with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q nodejs npm
fi
major="$(node -e 'console.log(process.versions.node.split(".")[0])')"
if [ "$major" -lt 20 ]; then
  echo "aedes needs node >= 20; this machine has $(node --version)" >&2
  exit 1
fi
echo "installing aedes into $dest" >&2
mkdir -p "$dest"
cp "$spec" "$dest/package.json"
(cd "$dest" && npm install --no-audit --no-fund --loglevel=error >&2)
