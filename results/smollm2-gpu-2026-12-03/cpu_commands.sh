#!/usr/bin/env bash
# The CPU side of the 2026-12-03 SmolLM2 run (this session's 2-core machine, an AMD EPYC, float32).
# The target is the SmolLM2 GGUF; the draft the best distilled draft of `PRESET=smollm2 bash
# run.sh` on one H200 (KLD, cut from SmolLM2: best_draft.txt), brought back as bf16 in six parts
# (results/bench/session_2026-12-03.sh, calls 3-4) and joined into runs/smollm2/draft-kld/model;
# the shortlist is built from that run's distillation data (distill.jsonl, gzipped in call 4); the
# prompts are the same world's (data.py --preset gpu --seed 0). Run one after the other, with
# nothing else on the machine: every line times something.
# Another draft (since 2026-12-03b): DRAFT=<its loss> (in runs/smollm2/draft-$DRAFT/model) D=<results
# directory> STEPS="2 3" (the steps to run) bash results/smollm2-gpu-2026-12-03/cpu_commands.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
G=models/SmolLM2-135M-Instruct.Q4_1.gguf R=runs/smollm2
DRAFT=${DRAFT:-kld} D=${D:-results/smollm2-gpu-2026-12-03/cpu} STEPS=" ${STEPS:-1 2 3 4 5 6 7} "
step() { [[ $STEPS == *" $1 "* ]]; }
mkdir -p $D
[ -f $R/world/eval_story.jsonl ] || python data.py --preset gpu --seed 0 --out $R/world
PROMPTS="story=$R/world/eval_story.jsonl,summary=$R/world/eval_summary.jsonl,highlights=$R/world/eval_highlights.jsonl"

# 1. What one pass costs on this CPU (which decode path is the fast one here).
step 1 && PYTHONPATH=. python results/smollm2-cpu-2026-12-02/step_costs.py $R/draft-$DRAFT/model > $D/step_costs.txt

# 2. tau and the wall-clock speed-up over the held-out tasks, as run.sh's smollm2 preset evaluates
#    on a CPU (few-row-matmuls, the 8,192-token shortlist head), gammas 2-4, T = 0 and 1.
step 2 && python evaluate.py --target $G --tokenizer $G --drafts "$DRAFT=$R/draft-$DRAFT/model" --prompts "$PROMPTS" \
  --gammas 2,3,4 --temperatures 0,1 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 --device cpu \
  --decode-path few-row-matmuls --speedup --dtype float32 --draft-vocab 8192 --draft-vocab-data $R/distill.jsonl \
  --out $D/evaluate/results.json > $D/evaluate.log 2>&1

# 3. One prompt, both ways (speculative.py --bench), at T = 0 and T = 1: the full head.
STORY=$(python -c "import json; print(json.loads(open('$R/world/eval_story.jsonl').readline())['prompt'])")
step 3 && for T in 0 1; do
  python speculative.py --target $G --draft $R/draft-$DRAFT/model --chat --prompt "$STORY" --gamma 3 --temperature $T \
    --max-new-tokens 64 --device cpu --dtype float32 --decode-path few-row-matmuls --bench
done > $D/speculative_bench.txt 2>&1

# 4. The anchors on the same weights and prompts: transformers' generate and assisted generation
#    (pip install transformers first; not a dependency of this project), beside ours.
step 4 && python bench.py --section pair --device cpu --target $G --draft $R/draft-$DRAFT/model \
  --prompts $R/world/eval_story.jsonl --n-prompts 3 --max-new-tokens 64 --gamma 3 --paths few-row-matmuls \
  --out $D/pair.json > $D/pair.log 2>&1

# 5. llama.cpp's own plain decoding of the same GGUF (its quantized kernels), same prompts, greedy,
#    in a venv of its own with llama-cpp-python 0.3.36 built from source ($LLAMA_PYTHON).
step 5 && "${LLAMA_PYTHON:-python}" results/smollm2-cpu-2026-12-02/llamacpp_plain.py $G $R/world > $D/llamacpp_plain.txt

# 6. The preset's training steps on this CPU, to extrapolate a CPU-only run (README): 3 pretraining
#    steps of the cut draft at the preset's batch, 3 distillation steps of 16 sequences.
if step 6; then
  python train.py --mode pretrain --init $G --init-layers 4 --data $R/world/corpus.txt --tokenizer $G \
    --out /tmp/cpu-pretrain --max-steps 3 --batch-size 64 --max-len 512 --lr 3e-4 --warmup 1 --eval-interval 1000 \
    --ckpt-interval 1000 --log-interval 1 --device cpu > $D/cpu_training_steps.txt 2>&1
  head -n 17 $R/distill.jsonl > /tmp/distill17.jsonl
  python train.py --mode distill --loss kld --init $R/draft-$DRAFT/model --teacher $G --data /tmp/distill17.jsonl \
    --tokenizer $G --out /tmp/cpu-distill --max-steps 3 --batch-size 16 --max-len 512 --lr 5e-4 --warmup 1 \
    --eval-interval 1000 --ckpt-interval 1000 --log-interval 1 --device cpu >> $D/cpu_training_steps.txt 2>&1
  rm -rf /tmp/cpu-pretrain /tmp/cpu-distill
fi

# 7. Phase 2 on this CPU, to extrapolate the same. (a) SmolLM2 answers the first 32 seed prompts
#    under 2 settings each: 64 answers over 14 settings, so batches of a few rows (a batch holds
#    one setting). (b) Full batches of 64: the first 64 prompts at T=0.7 with top-p 0.95 (the
#    costliest setting: top-p sorts the vocabulary), then greedily. At most 160 new tokens, float32.
step 7 || exit 0
head -n 32 $R/world/seed_prompts.jsonl > /tmp/seed32.jsonl && rm -f /tmp/cpu_answers.jsonl
{ time python distill_data.py --target $G --prompts /tmp/seed32.jsonl --out /tmp/cpu_answers.jsonl \
  --max-new-tokens 160 --batch-size 64 --settings-per-prompt 2 --seed 0 --device cpu; } > $D/cpu_answers.log 2>&1
head -n 64 $R/world/seed_prompts.jsonl > /tmp/seed64.jsonl && rm -f /tmp/ans_a.jsonl /tmp/ans_b.jsonl
{ time python distill_data.py --target $G --prompts /tmp/seed64.jsonl --out /tmp/ans_a.jsonl --temperatures 0.7 \
  --top-ps 0.95 --systems without --max-new-tokens 160 --batch-size 64 --seed 0 --device cpu; } \
  > $D/cpu_answers_batch64_T0.7_topp0.95.log 2>&1
{ time python distill_data.py --target $G --prompts /tmp/seed64.jsonl --out /tmp/ans_b.jsonl --temperatures 0 \
  --top-ps 1 --systems without --max-new-tokens 160 --batch-size 64 --seed 0 --device cpu; } > $D/cpu_answers_batch64_T0.log 2>&1
