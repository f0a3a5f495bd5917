#!/usr/bin/env bash
# The whole recipe of PAPER.md (section 2), end to end:
#
#   world (+ tokenizer) -> phase 0: a chat TARGET (the synthetic presets train a stand-in;
#                                    PRESET=smollm2 uses the real SmolLM2-135M-Instruct)
#                       -> phase 1: pretrain the DRAFT on plain text
#                       -> phase 2: the target answers seed prompts under a grid of sampling settings
#                       -> phase 3: distil the draft on those answers, once per loss
#                       -> evaluation: block efficiency (and speed-up) per draft, task, gamma, T
#
#   bash run.sh                    # CPU preset: minutes on a 2-core laptop, no download
#   PRESET=gpu bash run.sh         # single-GPU preset on the synthetic world: bigger models and data
#   PRESET=smollm2 bash run.sh     # single GPU, the real chat model SmolLM2-135M-Instruct (a GGUF from PyPI),
#                                  # its draft cut from SmolLM2 itself (its embedding, first 3 blocks and head),
#                                  # distilled with lk_hybrid (LOSSES="kld tvd tvdpp lk lk_hybrid" compares all five)
#   PRESET=smollm2 DRAFT_FROM_TARGET=0 bash run.sh   # a draft from scratch ($DRAFT, a preset), the five losses
#
# Every step resumes: re-running the command skips finished work and continues interrupted work.
# Each knob can be overridden from the environment, e.g. LOSSES="kld tvdpp_datatoken" bash run.sh;
# TRAIN_COMPILE=--compile compiles the blocks of the models being trained and of the teacher
# (train.py --compile; off by default: on the smollm2 preset its warm-up costs more than it saves).
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${PRESET:-cpu}
SEED=${SEED:-0}
RUN=${RUN:-runs/$PRESET}
case "$PRESET" in
  cpu)  # sized for minutes on 2 CPU cores (README: measured times)
    : "${VOCAB:=1024}" "${TARGET_STEPS:=350}" "${DRAFT_STEPS:=500}" "${DISTILL_STEPS:=150}" "${BATCH:=32}"
    : "${SETTINGS_PER_PROMPT:=2}" "${GEN_BATCH:=64}" "${MAX_NEW:=128}" "${DRAFT:=cpu-draft}"
    : "${EVAL_GAMMAS:=2,4,6,auto}" "${EVAL_PROMPTS:=8}" "${EVAL_MAX_NEW:=48}" "${DEVICE:=cpu}" "${CKPT_INTERVAL:=100}"
    : "${DECODE_PATH:=eager}" "${EVAL_FLAGS:=--speedup}" ;;
  gpu)  # sized for minutes on one H100 / H200 (BENCHMARKS.md: measured times)
    : "${VOCAB:=1024}" "${TARGET_STEPS:=1500}" "${DRAFT_STEPS:=1500}" "${DISTILL_STEPS:=600}" "${BATCH:=64}"
    : "${SETTINGS_PER_PROMPT:=1}" "${GEN_BATCH:=256}" "${MAX_NEW:=192}" "${DRAFT:=gpu-draft}"
    : "${EVAL_GAMMAS:=1,2,4,6,auto}" "${EVAL_PROMPTS:=10}" "${EVAL_MAX_NEW:=128}" "${DEVICE:=cuda}" "${CKPT_INTERVAL:=500}"
    : "${DECODE_PATH:=graphs}" "${EVAL_FLAGS:=--speedup}" ;;
  smollm2)  # the real chat model (README: measured times); on a GPU the fastest decode path
    # DRAFT_FROM_TARGET=N: the draft starts as the target's embedding, first N blocks and head
    # (README, the real chat model); a trained model needs smaller steps than a random one. Its
    # embedding (tied head) is trained too; FREEZE_EMBEDDINGS=1 keeps the target's, so that the
    # draft can be stored without it (checkpoints.save_model's embedding_from; drafts/smollm2/ is
    # one), at a lower tau (BENCHMARKS.md section 3).
    # DRAFT_FROM_TARGET=0: a draft from scratch, the preset $DRAFT.
    # The defaults are the combination with the best measured speed-up (BENCHMARKS.md section 3):
    # of the 2-, 3- and 4-block cuts, each distilled with lk_hybrid for 1,200 steps on the same
    # answers, the 3-block one; its embedding trained rather than frozen; 4 answers per prompt
    # instead of 2 raised no tau beyond its interval.
    : "${DRAFT_FROM_TARGET:=3}"
    if [ "$DRAFT_FROM_TARGET" != 0 ]; then
      : "${LOSSES:=lk_hybrid}" "${DRAFT_STEPS:=300}" "${DRAFT_LR:=3e-4}" "${DISTILL_STEPS:=1200}"
      : "${DISTILL_LR:=5e-4}" "${FREEZE_EMBEDDINGS:=0}"
    fi
    : "${DRAFT_STEPS:=2000}" "${DISTILL_STEPS:=500}" "${BATCH:=64}" "${MAX_LEN:=512}"
    : "${SETTINGS_PER_PROMPT:=2}" "${GEN_BATCH:=256}" "${MAX_NEW:=160}" "${DRAFT:=smollm2-draft-4l}"
    : "${EVAL_GAMMAS:=1,2,3,4,5,6,auto}" "${EVAL_PROMPTS:=8}" "${EVAL_MAX_NEW:=64}" "${DEVICE:=cuda}" "${CKPT_INTERVAL:=500}"
    : "${DECODE_PATH:=$([ "$DEVICE" = cuda ] && echo fused+compile+graphs || echo few-row-matmuls)}" "${WORLD_PRESET:=gpu}"
    # On a CPU the draft decodes over the 8,192 tokens SmolLM2 wrote most often (a cheaper head,
    # still lossless; README); on a GPU that gained nothing.
    : "${EVAL_FLAGS:=--speedup $([ "$DEVICE" = cuda ] && echo --dtype bfloat16 || echo --dtype float32 --draft-vocab 8192 --draft-vocab-data "$RUN/distill.jsonl")}"
    : "${GGUF:=models/SmolLM2-135M-Instruct.Q4_1.gguf}" ;;
  *) echo "error: unknown PRESET=$PRESET; use PRESET=cpu, gpu or smollm2" >&2; exit 2 ;;
esac
: "${LOSSES:=kld tvd tvdpp lk lk_hybrid}"     # the paper's three and the two acceptance-rate losses
WORLD=$RUN/world
mkdir -p "$RUN"
START=$(date +%s)
PHASE_START=$START
echo "== run.sh PRESET=$PRESET SEED=$SEED LOSSES=\"$LOSSES\" -> $RUN ($(date -u +%FT%TZ))"
stage() {
  local now; now=$(date +%s)
  [ -n "${PHASE:-}" ] && echo "== $PHASE took $((now - PHASE_START)) s"
  PHASE=$1 PHASE_START=$now
  echo; echo "== $1 ($(date -u +%T))"
}

stage "world and tokenizer"
[ -f "$WORLD/eval_highlights.jsonl" ] || python data.py --preset "${WORLD_PRESET:-$PRESET}" --seed "$SEED" --out "$WORLD"
if [ "$PRESET" = smollm2 ]; then
  [ -f "$GGUF" ] || python fetch_model.py --out "$(dirname "$GGUF")"
  TARGET=$GGUF TOK=$GGUF       # the GGUF carries the target's weights, vocabulary and chat template
else
  TOK=$RUN/tokenizer.model TARGET=$RUN/target/model
  [ -f "$TOK" ] || python tokenizer.py --data "$WORLD/corpus.txt,$WORLD/instructions.jsonl" --vocab-size "$VOCAB" --out "$TOK"
  stage "phase 0: stand-in chat target (corpus + instruction data)"
  python train.py --mode pretrain --preset "$PRESET-target" --data "$WORLD/corpus.txt,$WORLD/instructions.jsonl" \
    --tokenizer "$TOK" --out "$RUN/target" --max-steps "$TARGET_STEPS" --batch-size "$BATCH" --lr 2e-3 \
    --warmup 50 --eval-interval "$TARGET_STEPS" --ckpt-interval "$CKPT_INTERVAL" --log-interval 50 --seed "$SEED" --device "$DEVICE"
fi
TRAIN_FLAGS="--batch-size $BATCH ${MICRO_BATCH:+--micro-batch-size $MICRO_BATCH} ${MAX_LEN:+--max-len $MAX_LEN} ${TRAIN_COMPILE:-}"
if [ "${FREEZE_EMBEDDINGS:-0}" = 1 ]; then TRAIN_FLAGS="$TRAIN_FLAGS --freeze-embeddings"; fi

DRAFT_INIT="--preset $DRAFT"
if [ "${DRAFT_FROM_TARGET:-0}" != 0 ]; then DRAFT_INIT="--init $TARGET --init-layers $DRAFT_FROM_TARGET"; fi

stage "phase 1: pretrain the draft on plain text only"
python train.py --mode pretrain $DRAFT_INIT --data "${CORPUS:-$WORLD/corpus.txt}" \
  --tokenizer "$TOK" --out "$RUN/draft-pretrained" --max-steps "$DRAFT_STEPS" $TRAIN_FLAGS --lr "${DRAFT_LR:-3e-3}" \
  --warmup 50 --eval-interval "$DRAFT_STEPS" --ckpt-interval "$CKPT_INTERVAL" --log-interval 100 --seed "$SEED" --device "$DEVICE"

stage "phase 2: the target answers the seed prompts (distillation data)"
python distill_data.py --target "$TARGET" --tokenizer "$TOK" --prompts "$WORLD/seed_prompts.jsonl" \
  --out "$RUN/distill.jsonl" --max-new-tokens "$MAX_NEW" --batch-size "$GEN_BATCH" --seed "$SEED" --device "$DEVICE" \
  ${SETTINGS_PER_PROMPT:+--settings-per-prompt "$SETTINGS_PER_PROMPT"} \
  $([ "$DEVICE" = cuda ] && echo --dtype bfloat16 --decode-path graphs)

DRAFTS="pretrained=$RUN/draft-pretrained/model"
for LOSS in $LOSSES; do
  stage "phase 3: distil the draft with $LOSS"
  python train.py --mode distill --loss "$LOSS" --init "$RUN/draft-pretrained/model" --teacher "$TARGET" \
    --data "$RUN/distill.jsonl" --tokenizer "$TOK" --out "$RUN/draft-$LOSS" --max-steps "$DISTILL_STEPS" \
    $TRAIN_FLAGS --lr "${DISTILL_LR:-1e-3}" --warmup 30 --eval-interval "$DISTILL_STEPS" --ckpt-interval "$CKPT_INTERVAL" \
    --log-interval 50 --seed "$SEED" --device "$DEVICE"
  DRAFTS="$DRAFTS,$LOSS=$RUN/draft-$LOSS/model"
done

stage "evaluation on the held-out tasks"
python evaluate.py --target "$TARGET" --tokenizer "$TOK" --drafts "$DRAFTS" \
  --prompts "story=$WORLD/eval_story.jsonl,summary=$WORLD/eval_summary.jsonl,highlights=$WORLD/eval_highlights.jsonl" \
  --gammas "$EVAL_GAMMAS" --draft-modes "${DRAFT_MODES:-sample,argmax}" --temperatures 0,1 --n-prompts "$EVAL_PROMPTS" --max-new-tokens "$EVAL_MAX_NEW" \
  --preset "$PRESET" --seed "$SEED" --device "$DEVICE" --decode-path "$DECODE_PATH" $EVAL_FLAGS --out "${RESULTS:-$RUN/results.json}"
stage "done"
echo "== total $(( $(date +%s) - START )) s of wall time in this call ($(date -u +%FT%TZ))"
