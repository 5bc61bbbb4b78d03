#!/usr/bin/env bash
# Issue 16's GPU check in one device call (docs/gpu-check.md): installs the carried wheels (.whl/, made by
# scripts/fetch_gpu_wheels.sh) into /tmp/site, then runs bench/gpu_check.py's five time-boxed steps.
# Writes $OUT/gpu_check.json, $OUT/gpu_check.log and $OUT/pip.log; extra arguments go to bench/gpu_check.py
# (e.g. --dry-run: CPU, tiny sizes; --steps tests vitb16). Exit code 0 when every step is ok.
#   device run: bash scripts/gpu_check.sh        carry: [".whl"]        timeout_s: 480
#   here:       PYTHON=.venv/bin/python OUT=/tmp/gc bash scripts/gpu_check.sh --dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check_out}
# Everything (install included) must end inside the 8 minutes the issue allows the call: the steps share
# GPU_CHECK_BUDGET seconds and the whole script is killed at that plus a margin.
BUDGET=${GPU_CHECK_BUDGET:-420}
SITE=${GPU_CHECK_SITE:-/tmp/site}  # where the wheels are installed (a test points it elsewhere)
mkdir -p "$OUT"
export PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
  # --no-deps: the wheels are exactly what the machine lacks (open_clip_torch, ftfy, wcwidth, faiss-cpu).
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .whl/*.whl >"$OUT/pip.log" 2>&1; then
    export PYTHONPATH=$SITE:$PWD
  else
    echo "gpu_check: wheel install failed (see pip.log); the steps that import them will fail" >&2
  fi
fi
export PYTHONUNBUFFERED=1
exec timeout -k 10 "$((BUDGET + 30))" "$PY" -m bench.gpu_check --out "$OUT" --budget "$BUDGET" "$@"
