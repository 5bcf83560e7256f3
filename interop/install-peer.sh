#!/usr/bin/env bash
# Puts the real LMCache 0.5.6 (from the package index) into a virtual environment of its own,
# outside the repository, for the interoperability suite (`make interop`) and the benchmarks
# that compare against it. lmcache-server never imports it and never depends on it.
#
#   interop/install-peer.sh                 # venv at $LMCACHE_PEER_VENV, default ~/.cache/lmcache-peer/venv
#   LMCACHE_PEER_VENV=/tmp/peer interop/install-peer.sh
#
# Idempotent: an existing venv whose `lmcache` reports 0.5.6 is kept. Needs python3 (3.10+)
# with venv, the package index, about 2 GB of disk and a few minutes.
set -euo pipefail

version=0.5.6
torch_version=2.13.0
venv=${LMCACHE_PEER_VENV:-$HOME/.cache/lmcache-peer/venv}
python=${PYTHON:-python3}

installed_version() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("lmcache"))' 2>/dev/null || true
}

if [[ -x $venv/bin/lmcache && $(installed_version) == "$version" ]]; then
  echo "peer already installed: $venv (lmcache $version)"
  exit 0
fi

mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# torch first, at the version lmcache-server pins: lmcache's own torch requirement is then met
# by it instead of pulling another build.
"$venv/bin/python" -m pip install -q "torch==$torch_version"
"$venv/bin/python" -m pip install -q "lmcache==$version"
# The CLI must start (it imports the server modules) before the install counts.
"$venv/bin/lmcache" server --help >/dev/null
echo "peer installed: $venv (lmcache $(installed_version))"
