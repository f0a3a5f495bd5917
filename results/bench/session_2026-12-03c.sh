#!/usr/bin/env bash
# Device calls of the third session of 2026-12-03 (one H200), run from the repository root there.
# The SmolLM2 GGUF travels in two parts (a call carries at most 64 MiB): .carry/p0 in call 1,
# .carry/p1 in call 2 (right after: the machine stays warm 30 s), joined into models/ there.
#   CALL=1: part 1 of the GGUF copied to /tmp.
#   CALL=2: the GGUF joined; where a whole decoding call's time goes (results/bench/call_overhead.py),
#           with Llama.prefill (no logits) in the decoders, before the prefill was recorded in
#           chunks; its log is results/smollm2-gpu-2026-12-04/before/call_overhead.log.
# Call 2 ran on the second try: the first one found the machine gone cold after call 1.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=$OUT GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$O" models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
case "$CALL" in
1)
  cp .carry/p0/gguf.part00 /tmp/ && ls -la /tmp/gguf.part00
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/gpu.txt"
  ;;
2)
  cat /tmp/gguf.part00 .carry/p1/gguf.part01 > $GGUF && sha256sum $GGUF | tee "$O/gguf.sha256"
  python data.py --preset gpu --seed 0 --out /tmp/world > "$O/world.log" 2>&1
  timeout 500 python results/bench/call_overhead.py --gguf $GGUF --world /tmp/world > "$O/call_overhead.log" 2>&1
  tail -n 45 "$O/call_overhead.log"
  ;;
esac
