# Extra CPU experiments around TVD++, run after `bash run.sh` (CPU preset); last run 2026-11-25:
# the two TVD++ variants beyond the paper, and PAPER.md's TVD++ at a lower learning rate.
set -e
R=runs/cpu; X=runs/cpu-extra; mkdir -p $X
distil() {  # loss, learning rate, output directory: the same flags as run.sh's phase 3 otherwise
  python train.py --mode distill --loss $1 --init $R/draft-pretrained/model --teacher $R/target/model \
    --data $R/distill.jsonl --tokenizer $R/tokenizer.model --out $3 --max-steps 150 \
    --batch-size 32 --lr $2 --warmup 30 --eval-interval 150 --ckpt-interval 100 --log-interval 50 --seed 0 --device cpu
}
distil tvdpp_exact 1e-3 $X/draft-tvdpp_exact
distil tvdpp_onpolicy 1e-3 $X/draft-tvdpp_onpolicy
distil tvdpp 3e-4 $X/draft-tvdpp-lr3e-4
python evaluate.py --target $R/target/model --tokenizer $R/tokenizer.model \
  --drafts pretrained=$R/draft-pretrained/model,tvdpp_exact=$X/draft-tvdpp_exact/model,tvdpp_onpolicy=$X/draft-tvdpp_onpolicy/model,tvdpp_lr3e-4=$X/draft-tvdpp-lr3e-4/model \
  --prompts story=$R/world/eval_story.jsonl,summary=$R/world/eval_summary.jsonl,highlights=$R/world/eval_highlights.jsonl \
  --gammas 4 --temperatures 0,1 --n-prompts 8 --max-new-tokens 48 --preset cpu --seed 0 --device cpu --out $X/results.json
PYTHONPATH=. python results/cpu-extra/diagnose.py $R $R/draft-pretrained $R/draft-kld $R/draft-tvd $R/draft-tvdpp \
  $X/draft-tvdpp_exact $X/draft-tvdpp_onpolicy $X/draft-tvdpp-lr3e-4 | tee $X/diagnose.txt
