#!/usr/bin/env bash
# One command for a lent GPU machine: ABS against the goal (ImageNet val, ViT-B/16, N=60,
# under 5 minutes on one H200 = 170 images/s end to end). Prints a summary and writes
# gpu_check.json (see benchmarks/gpu_check.py for every figure and option).
#
#   bash benchmarks/gpu_check.sh --out "$OUT"                     # H200 defaults, < 8 min
#   bash benchmarks/gpu_check.sh --device cpu --tiny --images 16  # CPU dry run, ~1 min
#
# Which Python: the project's .venv where there is one; else, on a lent GPU machine (no network, its own
# Python 3.12 with CUDA torch), that Python with the packages it lacks unpacked from .whl/site312.tar.xz
# (built here by benchmarks/gpu_pack.py, carried with the working tree); else scripts/setup.sh (needs an
# index: this project's machines, not the lent one).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
pack=${ABS_GPU_PACK:-.whl/site312.tar.xz}
if [ ! -x "$PY" ] && [ -f "$pack" ]; then
  site=${ABS_GPU_SITE:-/tmp/abs-gpu-site}
  t0=$(date +%s)
  mkdir -p "$site" && tar xJf "$pack" -C "$site"
  echo "[gpu_check] no .venv: $(command -v python3) with $pack unpacked to $site ($(( $(date +%s) - t0 )) s)" >&2
  PY=python3
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  python3 -c "import prefect, open_clip, duckdb, torch, flows.cli; print('[gpu_check] torch', torch.__version__, 'prefect', prefect.__version__, 'open_clip', open_clip.__version__, 'duckdb', duckdb.__version__)" >&2
elif [ ! -x "$PY" ]; then
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

exec "$PY" benchmarks/gpu_check.py "$@"
