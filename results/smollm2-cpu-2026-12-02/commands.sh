#!/usr/bin/env bash
# The CPU side of the SmolLM2 experiment (2026-12-02, this project's 2-core machine, float32):
# the target is the SmolLM2 GGUF, the draft the KLD draft trained on one H200 by PRESET=smollm2
# (results/smollm2-gpu-2026-12-02/, brought back as bf16 in three parts and joined into
# runs/smollm2-gpu/draft-kld/model), the prompts those of the same world (data.py --preset gpu --seed 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
G=models/SmolLM2-135M-Instruct.Q4_1.gguf W=runs/smollm2-gpu/world D=results/smollm2-cpu-2026-12-02
[ -f $W/eval_story.jsonl ] || python data.py --preset gpu --seed 0 --out $W
for path in eager few-row-matmuls; do
  python evaluate.py --target $G --tokenizer $G --drafts "kld=runs/smollm2-gpu/draft-kld/model" \
    --prompts "story=$W/eval_story.jsonl,summary=$W/eval_summary.jsonl,highlights=$W/eval_highlights.jsonl" \
    --gammas 2,3,4 --temperatures 0,1 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 \
    --device cpu --decode-path $path --speedup --dtype float32 --out $D/$path/results.json
done
PYTHONPATH=. python $D/step_costs.py runs/smollm2-gpu/draft-kld/model > $D/step_costs.txt
