#!/usr/bin/env bash
# One command for a lent GPU machine: ABS against the goal (ImageNet val, ViT-B/16, N=60,
# under 5 minutes on one H200 = 170 images/s end to end). Prints a summary and writes
# gpu_check.json (see benchmarks/gpu_check.py for every figure and option).
#
#   bash benchmarks/gpu_check.sh --out "$OUT"                     # H200 defaults, < 8 min
#   bash benchmarks/gpu_check.sh --device cpu --tiny --images 16  # CPU dry run, ~1 min
#
# A bare machine (no .venv/bin/python) gets the project's venv first (scripts/setup.sh,
# offline on this project's machines); an existing .venv is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  echo "[gpu_check] no .venv/bin/python: running scripts/setup.sh first" >&2
  t0=$(date +%s)
  bash scripts/setup.sh
  echo "[gpu_check] setup took $(( $(date +%s) - t0 )) s" >&2
fi

# Prefect offline and in a throwaway home (no user profile touched, no telemetry).
if [ -z "${PREFECT_HOME:-}" ]; then
  PREFECT_HOME=$(mktemp -d -t abs-gpu-check-prefect-XXXXXX)
  export PREFECT_HOME
fi
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PYTHONUNBUFFERED=1

exec .venv/bin/python benchmarks/gpu_check.py "$@"
