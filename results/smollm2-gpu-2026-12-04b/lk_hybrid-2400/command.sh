#!/usr/bin/env bash
# A longer distillation still (BENCHMARKS.md section 0f), on a fresh H200 after the session's other
# calls: the preset's pretraining again (same seed and flags as run.sh's), then lk_hybrid for 2,400
# steps on the preset run's 12,000 answers (distill.jsonl, gzipped, carried), evaluated at gammas 2-4
# as the preset evaluates, and brought back as bf16 parts for the CPU. The GGUF travels in two parts
# as in results/bench/session_2026-12-04b.sh.
#   CALL=1: .carry/p0 holds gguf.part00 and distill.jsonl.gz; CALL=2: .carry/p1 holds gguf.part01.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
G=models/SmolLM2-135M-Instruct.Q4_1.gguf R=runs/smollm2 O=/tmp/o/lk_hybrid-2400
mkdir -p models $R $O
if [ "$CALL" = 1 ]; then cp .carry/p0/gguf.part00 /tmp/ && gunzip -c .carry/p0/distill.jsonl.gz > /tmp/distill.jsonl; exit; fi
cat /tmp/gguf.part00 .carry/p1/gguf.part01 > $G && sha256sum $G > $O/gguf.sha256 && mv /tmp/distill.jsonl $R/
python data.py --preset gpu --seed 0 --out $R/world > $O/world.log 2>&1
W=$R/world
python train.py --mode pretrain --init $G --init-layers 4 --data $W/corpus.txt --tokenizer $G --out $R/draft-pretrained \
  --max-steps 300 --batch-size 64 --max-len 512 --lr 3e-4 --warmup 50 --eval-interval 300 --ckpt-interval 500 \
  --log-interval 100 --seed 0 --device cuda > $O/pretrain.log 2>&1
(time python train.py --mode distill --loss lk_hybrid --init $R/draft-pretrained/model --teacher $G \
  --data $R/distill.jsonl --tokenizer $G --out $R/draft-lk_hybrid-2400 --max-steps 2400 --batch-size 64 \
  --max-len 512 --lr 5e-4 --warmup 30 --eval-interval 2400 --ckpt-interval 2400 --log-interval 400 --seed 0 \
  --device cuda) > $O/train.log 2>&1
timeout 90 python evaluate.py --target $G --tokenizer $G --drafts lk_hybrid-2400=$R/draft-lk_hybrid-2400/model \
  --prompts "story=$W/eval_story.jsonl,summary=$W/eval_summary.jsonl,highlights=$W/eval_highlights.jsonl" \
  --gammas 2,3,4 --temperatures 0,1 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 --device cuda \
  --decode-path fused+compile+graphs --speedup --dtype bfloat16 --out $O/results.json > $O/evaluate.log 2>&1
python results/bench/draft_parts.py $R/draft-lk_hybrid-2400/model /tmp/draft3
cp /tmp/draft3/draft.part0[0-3] "$OUT/"; tar czf "$OUT/lk_hybrid-2400.tgz" -C /tmp/o lk_hybrid-2400
tail -n 3 $O/pretrain.log $O/train.log; head -n 8 $O/results.md
