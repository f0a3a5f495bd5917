#!/usr/bin/env bash
# Device call, prepared 2026-12-02 and NOT YET RUN (the session's device time ran out). Two checks
# on the SmolLM2 pair (the smollm2 preset's KLD draft, retrained by run.sh with LOSSES=kld: the
# same seed and phases as the full run):
# 1. run.sh's evaluation on fused+compile+graphs over gammas 1-6 and T=0/1 (1 prompt x 16 tokens
#    per row, a new decoder per row): the kind of run in which a capture failed, now with
#    fast_decode.garbage_collector_paused;
# 2. bench.py's pair section on the graphs path: ours against transformers' generate and
#    generate(assistant_model=...), same weights and prompts.
# Needs models/SmolLM2-135M-Instruct.Q4_1.gguf on the device (the 98 MB file travels in two
# parts of 47 MB, joined there, as for smollm2_call.sh).
set -uo pipefail
export PYTHONUNBUFFERED=1
R=runs/smollm2-kld GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf O=/tmp/o/call${CALL:-}
mkdir -p "$O"
{ time timeout "${LIMIT:-380}" env PRESET=smollm2 RUN=$R LOSSES=kld DECODE_PATH=fused+compile+graphs \
    EVAL_GAMMAS=1,2,3,4,5,6 EVAL_PROMPTS=1 EVAL_MAX_NEW=16 EVAL_FLAGS="--dtype bfloat16" bash run.sh; } 2>&1 \
  | grep -v -i warn > "$O/smollm2_kld_run.log"
{ time timeout "${PAIR_LIMIT:-190}" python bench.py --section pair --target $GGUF --draft $R/draft-kld/model \
    --prompts $R/world/eval_story.jsonl --paths graphs --n-prompts 5 --out "$O/pair.json"; } 2>&1 \
  | grep -v -i warn > "$O/pair.log"
tar czf "$OUT/call${CALL:-}.tgz" -C /tmp/o .
tail -c 3000 "$O/smollm2_kld_run.log"; tail -c 4000 "$O/pair.log"
