#!/usr/bin/env bash
# Device call A (2026-12-01): the GPU tests, then the decode-loop and 7B-shape benchmarks.
# Run from the repository root on the GPU machine; logs go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
timeout 240 python -m pytest -q -x tests/test_gpu.py 2>&1 | tail -25 | tee $OUT/test_gpu.log
timeout 200 python bench.py --section loop --out $OUT/loop.json 2>&1 | grep -v Warning | tee $OUT/loop.log
timeout 150 python bench.py --section shapes --presets llama2-7b --paths fused+compile+graphs,compile\(reduce-overhead\) \
  --out $OUT/shapes.json 2>&1 | grep -v Warning | tee $OUT/shapes.log
