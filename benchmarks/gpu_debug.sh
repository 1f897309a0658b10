#!/usr/bin/env bash
# Each CUDA test alone, with faulthandler, so that one crash cannot hide the others.
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
for t in test_a_stream_post_waits_for_the_work_before_it \
         "test_gpu_main_cpu_worker_matches_algorithm_1[previous]" "test_gpu_main_cpu_worker_matches_algorithm_1[next]" \
         "test_gpu_late_copies_still_give_the_worker_w_t[previous]" "test_gpu_late_copies_still_give_the_worker_w_t[next]" \
         test_gpu_bf16_mixed_trains; do
    timeout 100 python3 -X faulthandler -m pytest "tests/test_gpu.py::$t" -rA -s -p no:cacheprovider 2>&1 \
        | grep -v -E "^(GPU|TPU|LOCAL_RANK|💡|HPU)|LeafSpec|many workers" | tail -80
    echo "rc=${PIPESTATUS[0]} for $t"
done
