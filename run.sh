#!/usr/bin/env bash
# The whole recipe of PAPER.md, end to end, on the embedded synthetic world:
#
#   world + tokenizer -> phase 0: stand-in chat TARGET (offline only; the real recipe uses Llama 2 Chat)
#                     -> phase 1: pretrain the DRAFT on plain text
#                     -> phase 2: the target answers seed prompts under a grid of sampling settings
#                     -> phase 3: distil the draft on those answers, once per loss
#                     -> evaluation: block efficiency per draft, task, gamma and temperature
#
#   bash run.sh                 # CPU preset: a few minutes on a 2-core laptop, no download
#   PRESET=gpu bash run.sh      # single-GPU preset: bigger models and data
#
# Every step resumes: re-running the command skips finished work and continues interrupted work.
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${PRESET:-cpu}
SEED=${SEED:-0}
RUN=${RUN:-runs/$PRESET}
# Each knob can be overridden from the environment, e.g. TARGET_STEPS=100 bash run.sh
case "$PRESET" in
  cpu)  # sized for under 20 minutes on 2 CPU cores
    : "${VOCAB:=1024}" "${TARGET_STEPS:=350}" "${DRAFT_STEPS:=500}" "${DISTILL_STEPS:=150}" "${BATCH:=32}"
    : "${LOSSES:=kld tvd tvdpp}" "${SETTINGS_PER_PROMPT:=2}" "${GEN_BATCH:=64}" "${MAX_NEW:=128}"
    : "${EVAL_GAMMAS:=2,4,6}" "${EVAL_PROMPTS:=8}" "${EVAL_MAX_NEW:=48}" "${DEVICE:=cpu}" "${CKPT_INTERVAL:=100}" ;;
  gpu)  # sized for under 10 minutes on one H100 (measured: 9m06s, BENCHMARKS.md)
    : "${VOCAB:=1024}" "${TARGET_STEPS:=1500}" "${DRAFT_STEPS:=1500}" "${DISTILL_STEPS:=600}" "${BATCH:=64}"
    : "${LOSSES:=kld tvd tvdpp}" "${SETTINGS_PER_PROMPT:=1}" "${GEN_BATCH:=256}" "${MAX_NEW:=192}"
    : "${EVAL_GAMMAS:=1,2,4,6}" "${EVAL_PROMPTS:=10}" "${EVAL_MAX_NEW:=128}" "${DEVICE:=cuda}" "${CKPT_INTERVAL:=500}" ;;
  *) echo "error: unknown PRESET=$PRESET; use PRESET=cpu or PRESET=gpu" >&2; exit 2 ;;
esac
WORLD=$RUN/world
TOK=$RUN/tokenizer.model
mkdir -p "$RUN"
echo "== run.sh PRESET=$PRESET SEED=$SEED -> $RUN ($(date -u +%FT%TZ))"
stage() { echo; echo "== $1 ($(date -u +%T))"; }

stage "world and tokenizer"
[ -f "$WORLD/eval_highlights.jsonl" ] || python data.py --preset "$PRESET" --seed "$SEED" --out "$WORLD"
[ -f "$TOK" ] || python tokenizer.py --data "$WORLD/corpus.txt,$WORLD/instructions.jsonl" --vocab-size "$VOCAB" --out "$TOK"

stage "phase 0: stand-in chat target (corpus + instruction data)"
python train.py --mode pretrain --preset "$PRESET-target" --data "$WORLD/corpus.txt,$WORLD/instructions.jsonl" \
  --tokenizer "$TOK" --out "$RUN/target" --max-steps "$TARGET_STEPS" --batch-size "$BATCH" --lr 2e-3 \
  --warmup 50 --eval-interval "$TARGET_STEPS" --ckpt-interval "$CKPT_INTERVAL" --log-interval 50 --seed "$SEED" --device "$DEVICE"

stage "phase 1: pretrain the draft on plain text only"
python train.py --mode pretrain --preset "$PRESET-draft" --data "$WORLD/corpus.txt" \
  --tokenizer "$TOK" --out "$RUN/draft-pretrained" --max-steps "$DRAFT_STEPS" --batch-size "$BATCH" --lr 3e-3 \
  --warmup 50 --eval-interval "$DRAFT_STEPS" --ckpt-interval "$CKPT_INTERVAL" --log-interval 50 --seed "$SEED" --device "$DEVICE"

stage "phase 2: the target answers the seed prompts (distillation data)"
python distill_data.py --target "$RUN/target/model" --tokenizer "$TOK" --prompts "$WORLD/seed_prompts.jsonl" \
  --out "$RUN/distill.jsonl" --max-new-tokens "$MAX_NEW" --batch-size "$GEN_BATCH" --seed "$SEED" --device "$DEVICE" \
  ${SETTINGS_PER_PROMPT:+--settings-per-prompt "$SETTINGS_PER_PROMPT"}

DRAFTS="pretrained=$RUN/draft-pretrained/model"
for LOSS in $LOSSES; do
  stage "phase 3: distil the draft with $LOSS"
  python train.py --mode distill --loss "$LOSS" --init "$RUN/draft-pretrained/model" --teacher "$RUN/target/model" \
    --data "$RUN/distill.jsonl" --tokenizer "$TOK" --out "$RUN/draft-$LOSS" --max-steps "$DISTILL_STEPS" \
    --batch-size "$BATCH" --lr 1e-3 --warmup 30 --eval-interval "$DISTILL_STEPS" --ckpt-interval "$CKPT_INTERVAL" \
    --log-interval 50 --seed "$SEED" --device "$DEVICE"
  DRAFTS="$DRAFTS,$LOSS=$RUN/draft-$LOSS/model"
done

stage "evaluation on the held-out tasks"
python evaluate.py --target "$RUN/target/model" --tokenizer "$TOK" --drafts "$DRAFTS" \
  --prompts "story=$WORLD/eval_story.jsonl,summary=$WORLD/eval_summary.jsonl,highlights=$WORLD/eval_highlights.jsonl" \
  --gammas "$EVAL_GAMMAS" --temperatures 0,1 --n-prompts "$EVAL_PROMPTS" --max-new-tokens "$EVAL_MAX_NEW" \
  --preset "$PRESET" --seed "$SEED" --device "$DEVICE" --out "$RUN/results.json" \
  $([ "$DEVICE" = cuda ] && echo --cuda-graphs)
echo "== done ($(date -u +%FT%TZ))"
