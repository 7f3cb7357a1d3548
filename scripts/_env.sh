# Shared by scripts/demo and scripts/test: Debian tools the project uses for real media, and a project
# virtualenv in .venv with the package installed.
# Usage: source scripts/_env.sh [EXTRAS]   (EXTRAS e.g. "test"; empty for the plain package)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

missing=()
tools=(espeak-ng sox ffmpeg)
[ "${1:-}" = test ] && tools+=(redis-server rabbitmq-server chromium)  # the workers' brokers; bundles open in Chromium
for tool in "${tools[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages: speech and media tools for samples and tests, Redis, RabbitMQ and Chromium for tests) ..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install --quiet --upgrade pip
fi
spec="$ROOT"
[ -n "${1:-}" ] && spec="$ROOT[$1]"
# (pip's output goes to a log, shown only when the install fails: setuptools warns on every editable build)
if ! "$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" \
    >"$ROOT/.venv/pip-install.log" 2>&1; then
  cat "$ROOT/.venv/pip-install.log" >&2
  echo "error: installing the project into $ROOT/.venv failed (log above)" >&2
  exit 1
fi
export PATH="$ROOT/.venv/bin:$PATH"
