#!/usr/bin/env bash
# Creates (or checks) the Python peers venv used by parity tests and benchmarks:
# torch==2.13.0 first, then scVelo, cell2location, autozyme and scvelo-rs pinned in
# bench/requirements-peers.txt (numpy<2 so that reticulate 1.28 can load it).
# Idempotent: a venv whose pinned packages already import is left alone (a second or so).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${SCNATIVE_PEERS_VENV:-$HOME/.cache/scnative/peers}
req="$here/requirements-peers.txt"
stamp="$venv/.scnative-requirements"
py="$venv/bin/python"
if [ -x "$py" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$req" && \
   "$py" -c 'import scvelo, cell2location, autozyme, scvelo_rs, numpy' 2>/dev/null; then
  echo "peers venv ready: $venv"
  exit 0
fi
echo "setting up the peers venv in $venv (several minutes the first time)"
python3 -m venv "$venv"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q -r "$req"
"$py" -c 'import scvelo, cell2location, autozyme, scvelo_rs, numpy; assert numpy.__version__ < "2"'
cp "$req" "$stamp"
echo "peers venv ready: $venv"
