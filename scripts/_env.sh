# Shared by scripts/demo and scripts/test: a project virtualenv in .venv with the package installed.
# Usage: source scripts/_env.sh [EXTRAS]   (EXTRAS e.g. "test"; empty for the plain package)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install --quiet --upgrade pip
fi
spec="$ROOT"
[ -n "${1:-}" ] && spec="$ROOT[$1]"
"$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
export PATH="$ROOT/.venv/bin:$PATH"
