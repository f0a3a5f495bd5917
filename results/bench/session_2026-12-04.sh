#!/usr/bin/env bash
# Device calls of the session of 2026-12-04 (one H200), run from the repository root there: the
# trained lk_hybrid draft of the 2026-12-03b run evaluated again with the prefill recorded in
# chunks (speculative.py, _Graphs.prefill), the preset's evaluation settings, and where a call's
# time goes now (call_overhead.py). The GGUF and the draft's bf16 checkpoint travel as one
# gzipped tar in three parts of 52 MiB (a call carries at most 64 MiB, the working tree included),
# made here with
#   tar czf pack.tgz -C pack . && split -b 52M -d pack.tgz pack.part    # pack/: the .gguf, draft/
# and carried in .carry/q0 (call 1), .carry/q1 (call 2), .carry/q2 (call 3), each call right after
# the one before (the machine stays warm 30 s).
set -uo pipefail
export PYTHONUNBUFFERED=1
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf W=/tmp/world
mkdir -p "$OUT" models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
case "$CALL" in
1)
  cp .carry/q0/pack.part00 /tmp/
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  ;;
2)
  cp .carry/q1/pack.part01 /tmp/
  python data.py --preset gpu --seed 0 --out $W > "$OUT/world.log" 2>&1; tail -n 2 "$OUT/world.log"
  ;;
3)
  mkdir -p /tmp/pack && cat /tmp/pack.part00 /tmp/pack.part01 .carry/q2/pack.part02 | tar xzf - -C /tmp/pack
  mv /tmp/pack/$(basename $GGUF) $GGUF
  sha256sum $GGUF /tmp/pack/draft/model.safetensors | tee "$OUT/sha256.txt"
  timeout 330 python evaluate.py --target $GGUF --drafts lk_hybrid=/tmp/pack/draft \
    --prompts "story=$W/eval_story.jsonl,summary=$W/eval_summary.jsonl,highlights=$W/eval_highlights.jsonl" \
    --gammas 1,2,3,4,5,6 --temperatures 0,1 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 \
    --device cuda --decode-path fused+compile+graphs --speedup --dtype bfloat16 --out "$OUT/results.json" \
    > "$OUT/evaluate.log" 2>&1
  timeout 150 python results/bench/call_overhead.py --gguf $GGUF --world $W > "$OUT/call_overhead.log" 2>&1
  tail -n 30 "$OUT/evaluate.log"; head -n 12 "$OUT/call_overhead.log"
  ;;
esac
