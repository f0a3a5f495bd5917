#!/usr/bin/env bash
# Device calls of the fifth session of 2026-12-02 (one H200), run from the repository root there.
#   CALL=1: tests/test_gpu.py (the greedy-sampling change of 1ee149d had never run on a GPU),
#           and part 1 of the GGUF copied to /tmp.
#   CALL=2: PRESET=smollm2 with the draft cut from the target (DRAFT_FROM_TARGET=4: SmolLM2's
#           embedding, first 4 blocks and head), KLD, the scaled budget of results/smollm2-scaled-
#           2026-12-02 (4 settings per prompt, 1,200 distillation steps); the distilled draft
#           comes back as bf16 in <16 MiB parts when the evaluation starts. (As run, parts 4-5
#           were over the call's total size and came back from a one-line call right after.)
#   CALL=3 (a new machine): part 1 of the GGUF to /tmp; where the block's time goes with the cut
#           draft, with and without a shortlist head, and with 2 blocks (profile_smollm2.py).
#   CALL=4: the same command as CALL=2 (the same data; the draft again), stopped when the
#           evaluation starts; then evaluate.py on the KLD draft with a shortlist head over the
#           8,192 tokens the target wrote most often and without, one after the other; the
#           distillation data comes back gzipped (the CPU side's shortlist is built from it).
# The SmolLM2 GGUF travels in two parts (a call carries at most 64 MiB): .carry/p0 in call 1 / 3,
# .carry/p1 in call 2 / 4, joined into models/ there.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=/tmp/o/call$CALL GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf R=runs/smollm2-cut4
mkdir -p "$O" models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
RUN_CUT="env PRESET=smollm2 RUN=$R DRAFT_FROM_TARGET=4 LOSSES=kld SETTINGS_PER_PROMPT=4 DISTILL_STEPS=1200 CKPT_INTERVAL=200 bash run.sh"
W=$R/world
EVAL="python evaluate.py --target $GGUF --tokenizer $GGUF --drafts kld=$R/draft-kld/model
  --prompts story=$W/eval_story.jsonl,summary=$W/eval_summary.jsonl,highlights=$W/eval_highlights.jsonl
  --gammas 2,4,6 --temperatures 0,1 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 --device cuda
  --decode-path fused+compile+graphs --speedup --dtype bfloat16"
case "$CALL" in
1|3)
  cp .carry/p0/gguf.part00 /tmp/
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/gpu.txt"
  if [ "$CALL" = 1 ]; then
    { time timeout 240 python -m pytest -q tests/test_gpu.py; } > "$O/test_gpu.log" 2>&1
  else
    for d in "cut:4" "cut:4 --shortlist 8192" "cut:2"; do
      timeout 120 python results/bench/profile_smollm2.py --block-only --draft $d
    done > "$O/profile_cut.log" 2>&1
  fi
  ;;
2|4)
  cat /tmp/gguf.part00 .carry/p1/gguf.part01 > $GGUF && sha256sum $GGUF > "$O/gguf.sha256"
  $RUN_CUT > "$O/run.log" 2>&1 &
  while kill -0 $! 2>/dev/null && ! grep -q "^== evaluation" "$O/run.log" && [ $SECONDS -lt 560 ]; do sleep 2; done
  if [ "$CALL" = 2 ]; then
    python - <<'EOF2'
import torch
from checkpoints import load_model, save_model
save_model(load_model("runs/smollm2-cut4/draft-kld/model").to(torch.bfloat16), "/tmp/draft")
EOF2
    (cd /tmp/draft && split -b 15M -d model.safetensors draft.part && cp config.json draft.part* "$OUT/")
    while kill -0 $! 2>/dev/null && [ $SECONDS -lt 575 ]; do sleep 2; done
    cp $R/results.md $R/results.json $R/results.png "$O/" 2>/dev/null
  else
    pkill -f evaluate.py; kill $! 2>/dev/null
    gzip -c $R/distill.jsonl > "$OUT/distill.jsonl.gz"
    $EVAL --draft-vocab 8192 --draft-vocab-data $R/distill.jsonl --out $R/shortlist/results.json > "$O/eval_shortlist.log" 2>&1
    $EVAL --out $R/full/results.json > "$O/eval_full.log" 2>&1
    cp -r $R/shortlist $R/full "$O/"
  fi
  for d in $R/draft-*; do cp $d/log.jsonl "$O/$(basename $d).log.jsonl" 2>/dev/null; done
  ;;
esac
tar czf "$OUT/call$CALL.tgz" -C /tmp/o .
for f in "$O"/*.log; do echo "=== $f"; grep -v -i "warn" "$f" | tail -c 3500; done
