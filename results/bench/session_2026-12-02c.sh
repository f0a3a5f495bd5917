#!/usr/bin/env bash
# Device calls of the third session of 2026-12-02 (one H200), run from the repository root there.
#   CALL=1: the GPU tests, the decode-step benchmark at the 7B and drafter shapes (regional
#           compilation: fast_decode.compile_blocks), then PRESET=gpu bash run.sh until the call's
#           time is nearly up (run.sh resumes).
#   CALL=2: PRESET=gpu bash run.sh again: it resumes, finishes the distillations and evaluates.
#   CALL=3: PRESET=smollm2 with LOSSES=kld on fused+compile+graphs, then bench.py's pair section
#           (ours against transformers' generate and assisted generation, same weights).
# The SmolLM2 GGUF travels in two parts (a call carries at most 64 MiB): .carry/p0 in call 1,
# .carry/p1 in call 2, joined into models/ there. Small files come back as one tarball.
# As run, the copy of runs/gpu's results sat after the case and overwrote call 3's SmolLM2 results
# files; here it sits in calls 1 and 2. Call 3's table survives in its log
# (results/smollm2-kld-compiled-2026-12-02/run.log). The test log was also filtered for "warn" as
# run, which dropped pytest's summary line ("7 passed, N warnings"); here it is kept.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=/tmp/o/call$CALL GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$O" models
budget() { echo $(( ${1} - SECONDS )); }          # seconds left of this call's plan
case "$CALL" in
1)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/gpu.txt"
  python -c "import torch; print('torch', torch.__version__)" | tee -a "$O/gpu.txt"
  cp .carry/p0/gguf.part00 /tmp/ 2>/dev/null
  { time timeout 150 python -m pytest -q tests/test_gpu.py; } 2>&1 | tail -30 > "$O/test_gpu.log"
  { time timeout 170 python bench.py --section shapes --presets llama2-7b,drafter-115m \
      --paths "fused+compile+graphs,compile(reduce-overhead)" --out "$O/shapes.json"; } 2>&1 \
    | grep -v -i warn > "$O/shapes.log"
  { time timeout "$(budget 585)" env PRESET=gpu bash run.sh; } 2>&1 | grep -v -i warn > "$O/gpu_run.log"
  cp runs/gpu/results.json runs/gpu/results.md runs/gpu/results.png "$O/" 2>/dev/null
  ;;
2)
  [ -f /tmp/gguf.part00 ] && cat /tmp/gguf.part00 .carry/p1/gguf.part01 > $GGUF && sha256sum $GGUF > "$O/gguf.sha256"
  { time timeout 585 env PRESET=gpu bash run.sh; } 2>&1 | grep -v -i warn > "$O/gpu_run.log"
  cp runs/gpu/results.json runs/gpu/results.md runs/gpu/results.png "$O/" 2>/dev/null
  ;;
3)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
  R=runs/smollm2-kld
  { time timeout "${LIMIT:-400}" env PRESET=smollm2 RUN=$R LOSSES=kld DECODE_PATH=fused+compile+graphs \
      EVAL_GAMMAS=2,4,6 EVAL_PROMPTS=4 bash run.sh; } 2>&1 | grep -v -i warn > "$O/smollm2_kld_run.log"
  cp $R/results.json $R/results.md "$O/" 2>/dev/null
  { time timeout "$(budget 585)" python bench.py --section pair --target $GGUF --draft $R/draft-kld/model \
      --prompts $R/world/eval_story.jsonl --paths fused+compile+graphs --n-prompts 5 --out "$O/pair.json"; } 2>&1 \
    | grep -v -i warn > "$O/pair.log"
  ;;
esac
tar czf "$OUT/call$CALL.tgz" -C /tmp/o .
for f in "$O"/*.log; do echo "=== $f"; tail -c 2500 "$f"; done
