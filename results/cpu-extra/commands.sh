# The TVD++ variants beyond the paper on the CPU preset run (after `bash run.sh`), as run on 2026-11-23.
set -e
R=runs/cpu; X=runs/cpu-extra; mkdir -p $X
for LOSS in tvdpp_exact tvdpp_onpolicy; do
python train.py --mode distill --loss $LOSS --init $R/draft-pretrained/model --teacher $R/target/model \
  --data $R/distill.jsonl --tokenizer $R/tokenizer.model --out $X/draft-$LOSS --max-steps 150 \
  --batch-size 32 --lr 1e-3 --warmup 30 --eval-interval 150 --ckpt-interval 100 --log-interval 50 --seed 0 --device cpu
done
python evaluate.py --target $R/target/model --tokenizer $R/tokenizer.model \
  --drafts pretrained=$R/draft-pretrained/model,tvdpp_exact=$X/draft-tvdpp_exact/model,tvdpp_onpolicy=$X/draft-tvdpp_onpolicy/model \
  --prompts story=$R/world/eval_story.jsonl,summary=$R/world/eval_summary.jsonl,highlights=$R/world/eval_highlights.jsonl \
  --gammas 4 --temperatures 0,1 --n-prompts 10 --max-new-tokens 48 --preset cpu --seed 0 --device cpu --out $X/results.json
