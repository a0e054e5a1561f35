#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install the
# project with its dev extra. Idempotent: a second run with an unchanged
# pyproject.toml does nothing. Used by the README's commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${ABS_VENV:-.venv}
stamp="$VENV/.abs-eval-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
# torch and torchvision first, as a matched pair: on this project's machines pip
# takes them from local disk; elsewhere they come from PyPI.
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch + torchvision (a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" >&2
fi
echo "[setup] installing abs-eval and its dependencies" >&2
"$VENV/bin/python" -m pip install -q -e ".[dev]" >&2
echo "$want" > "$stamp"
echo "[setup] ready: $VENV" >&2
