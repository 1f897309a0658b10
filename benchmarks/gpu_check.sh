#!/usr/bin/env bash
# One command for a short loan of a GPU machine: the CUDA tests, then the GPU throughput table.
# Budget: under 8 minutes on one H200 (install ~2 min if torch is preinstalled, tests ~1 min,
# benchmark ~3 min). Results land in benchmarks/results/throughput_cuda.{json,md}, and in $OUT
# when that is set (the device tool copies $OUT back).
#   bash benchmarks/gpu_check.sh              # ASCENT_THREADS=8 by default
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q -e ".[test]"
python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "${OUT:-/tmp}/gpu_tests.log"
timeout 330 python3 benchmarks/throughput.py --accelerator cuda --ascent-threads "${ASCENT_THREADS:-8}" \
    --main-threads 4 --reps 3 --warmup 5 --steps 40 2>&1 | grep -v -E "^(INFO|GPU|TPU|LOCAL_RANK|💡)" \
    | tee "${OUT:-/tmp}/throughput_cuda.log"
if [ -n "${OUT:-}" ]; then cp benchmarks/results/throughput_cuda.* "$OUT"/; fi
