#!/usr/bin/env bash
# RADICAL-Pilot's own virtualenv for the side-by-side service bootstrap benchmark
# (benchmarks/rp_services.py). Kept apart from the project's .venv so that RP's pinned
# dependencies (radical.utils, radical.gtod, ...) never touch hpcray's. Idempotent: reruns
# only re-check the pins.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.rp-venv"
PYTHON="${PYTHON:-python3}"
RP_VERSION="1.103.2"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
# installed and pinned? (metadata only: importing radical.* would create ~/.radical)
if ! "$VENV/bin/python" - "$RP_VERSION" 2>/dev/null <<'PY'
import importlib.metadata as m, sys
m.version("pyzmq"), m.version("psutil")  # raise when absent
sys.exit(m.version("radical.pilot") != sys.argv[1])
PY
then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "radical.pilot==$RP_VERSION" pyzmq psutil
fi
"$VENV/bin/python" -c "import importlib.metadata as m; \
print(*(f'{p} {m.version(p)}' for p in ('radical.pilot', 'pyzmq', 'psutil')))"
