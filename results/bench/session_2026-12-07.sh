#!/usr/bin/env bash
# The first device call of 2026-12-07 (it came as one H100), run from the repository root there:
# tests/test_gpu.py with compile_blocks also compiling the final norm and Llama.cache_inputs (RoPE
# angles and mask), then the block profile (profile_smollm2.py --block-only --draft cut:4) with that
# change and without it. .carry/old holds model.py and fast_decode.py as they were before it:
#   mkdir -p .carry/old && for f in model.py fast_decode.py; do git show b90ee9e:$f > .carry/old/$f; done
# and the call carries .carry/old and .whl (the gguf wheel). The whole preset after it, as
# session_2026-12-04b.sh's calls 2 and 3 run it, did not fit the device time left; the shorter
# calls that ran instead are results/smollm2-gpu-2026-12-07/commands.sh.
set -uo pipefail
out=/tmp/o/call1
mkdir -p $out
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $out/gpu.txt
{ time timeout 200 python -m pytest -q tests/test_gpu.py; } > $out/test_gpu.log 2>&1
timeout 120 python results/bench/profile_smollm2.py --block-only --draft cut:4 > $out/profile_new.log 2>&1
mkdir -p /tmp/old && cp -r *.py results /tmp/old/ && cp .carry/old/*.py /tmp/old/
(cd /tmp/old && timeout 120 python results/bench/profile_smollm2.py --block-only --draft cut:4) > $out/profile_old.log 2>&1
tar czf "$OUT/call1.tgz" -C /tmp/o .
for f in $out/*.log; do echo "=== $f"; grep -v -i "warn" "$f" | tail -c 2500; done
