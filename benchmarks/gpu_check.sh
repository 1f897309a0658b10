#!/usr/bin/env bash
# One command for a short loan of a GPU machine: the CUDA tests, then the GPU throughput A/B.
# Budget: about 8 minutes on one H200 (tests ~1 min, benchmarks ~6 min), each step under its own timeout
# (150 + 240 + 80 + 80 s: 9 min 10 s at worst, under the device tool's 10 minutes a command), so that a
# hang costs minutes, not the loan. Results land in benchmarks/results/throughput_cuda_stream_post.*
# and, when $OUT is set (the device tool copies $OUT back), in $OUT with the logs.
#   bash benchmarks/gpu_check.sh              # ASCENT_THREADS=8 by default
#   GIT_SHA=$(git rev-parse HEAD) ...         # where the tree travels without its .git
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"

# A loaned GPU box has torch, lightning and torchmetrics but no package index: run from the
# checkout when the runtime needs are there, install otherwise.
if python3 -c "import torch, lightning, torchvision, torchmetrics, cloudpickle, pytest" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    python3 -m pip install -q -e ".[test]" || exit 1
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; } \
    2>&1 | tee "$out/machine.txt"

timeout 150 python3 -m pytest tests/test_gpu.py -m gpu -v -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

# The stream-posted step (ascent/stream_post.py) against the synchronizing post it replaced, beside
# SGD, in one run: the trainer's per-step cost on the GPU (issue 11). The family's full table is
# benchmarks/results/throughput_cuda.* (commit 32b83e5).
timeout 240 python3 benchmarks/throughput.py --accelerator cuda --ascent-threads "${ASCENT_THREADS:-8}" \
    --main-threads 4 --reps 5 --warmup 10 --steps 30 --models resnet20,wrn16_2 \
    --algorithms sgd,asyncsam_auto,asyncsam_auto_synced --name throughput_cuda_stream_post 2>&1 \
    | grep -v -E "^(INFO|GPU|TPU|LOCAL_RANK|💡|HPU)|LeafSpec|^\s*$" | tee "$out/throughput_cuda_stream_post.log"
bench_rc=${PIPESTATUS[0]}

# What "auto" at b' = 1 still cost beside the H200 (0.70-0.87x SGD, 2026-11-28) besides the stream
# synchronization: the worker's 8 busy threads beside a launch-bound trainer were the suspect. The
# same A/B with 2 worker threads; informative, so it does not decide the exit status.
timeout 80 python3 benchmarks/throughput.py --accelerator cuda --ascent-threads 2 --main-threads 4 --reps 3 \
    --warmup 10 --steps 30 --models resnet20 --algorithms sgd,asyncsam_auto --name throughput_cuda_threads2 2>&1 \
    | grep -v -E "^(INFO|GPU|TPU|LOCAL_RANK|💡|HPU)|LeafSpec|^\s*$" | tee "$out/throughput_cuda_threads2.log"

# The replica's layout on the GPU (ascent_memory_format="auto" keeps the module's there until this
# is read); informative, so it does not decide the exit status.
timeout 80 python3 benchmarks/replica_layout.py --models --device cuda 2>&1 | tee "$out/replica_layout_cuda.log"

cp benchmarks/results/throughput_cuda_stream_post.* benchmarks/results/throughput_cuda_threads2.* \
   benchmarks/results/replica_layout_models_cuda.* "$out"/ 2>/dev/null
echo "gpu tests exit $tests_rc, benchmark exit $bench_rc"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
