#!/usr/bin/env bash
# The longer distillation of 2026-12-04b (BENCHMARKS.md section 0f), as run on the H200 right after
# call 3 of results/bench/session_2026-12-04b.sh, on the same warm machine (its runs/smollm2 holds
# the preset's pretrained draft and 12,000 answers): lk_hybrid for 1,200 steps instead of 500, the
# preset's other flags; then evaluate.py as the preset evaluates, for this draft alone; then the
# draft as bf16 parts (draft.part04-05 and config.json came back in a second call).
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
R=runs/smollm2 G=models/SmolLM2-135M-Instruct.Q4_1.gguf; W=$R/world; mkdir -p /tmp/o/call4
(time python train.py --mode distill --loss lk_hybrid --init $R/draft-pretrained/model --teacher $G \
  --data $R/distill.jsonl --tokenizer $G --out $R/draft-lk_hybrid-1200 --max-steps 1200 --batch-size 64 \
  --max-len 512 --lr 5e-4 --warmup 30 --eval-interval 1200 --ckpt-interval 1200 --log-interval 200 --seed 0 \
  --device cuda) > /tmp/o/call4/train.log 2>&1
timeout 200 python evaluate.py --target $G --tokenizer $G --drafts lk_hybrid-1200=$R/draft-lk_hybrid-1200/model \
  --prompts "story=$W/eval_story.jsonl,summary=$W/eval_summary.jsonl,highlights=$W/eval_highlights.jsonl" \
  --gammas 1,2,3,4,5,6 --temperatures 0,1 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 --device cuda \
  --decode-path fused+compile+graphs --speedup --dtype bfloat16 --out /tmp/o/call4/results.json > /tmp/o/call4/evaluate.log 2>&1
python results/bench/draft_parts.py $R/draft-lk_hybrid-1200/model /tmp/draft2
cp /tmp/draft2/draft.part0[0-3] $OUT/; tar czf $OUT/call4.tgz -C /tmp/o call4
