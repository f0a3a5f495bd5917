#!/usr/bin/env bash
# The CPU side of the scaled SmolLM2 experiment (this project's 2-core machine, float32): the
# target is the SmolLM2 GGUF, the draft the KLD draft trained on one H200 by call 2-3 of
# results/bench/session_2026-12-02d.sh, brought back as bf16 in parts and joined into
# runs/smollm2-scaled/draft-kld/model; the prompts those of the same world (data.py --preset gpu --seed 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
G=models/SmolLM2-135M-Instruct.Q4_1.gguf W=runs/smollm2-scaled/world D=results/smollm2-scaled-2026-12-02
[ -f $W/eval_story.jsonl ] || python data.py --preset gpu --seed 0 --out $W
# As run: few-row-matmuls first (gammas 2-4, into cpu/), then, after step_costs.py showed that
# on this machine's CPU the plain few-row product is the fast one, eager (gammas 1-4, cpu-eager/).
python evaluate.py --target $G --tokenizer $G --drafts "kld=runs/smollm2-scaled/draft-kld/model" \
  --prompts "story=$W/eval_story.jsonl,summary=$W/eval_summary.jsonl,highlights=$W/eval_highlights.jsonl" \
  --gammas 2,3,4 --temperatures 0,1 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 \
  --device cpu --decode-path few-row-matmuls --speedup --dtype float32 --out $D/cpu/results.json
PYTHONPATH=. python results/smollm2-cpu-2026-12-02/step_costs.py runs/smollm2-scaled/draft-kld/model > $D/cpu/step_costs.txt
python evaluate.py --target $G --tokenizer $G --drafts "kld=runs/smollm2-scaled/draft-kld/model" \
  --prompts "story=$W/eval_story.jsonl,summary=$W/eval_summary.jsonl,highlights=$W/eval_highlights.jsonl" \
  --gammas 1,2,3,4 --temperatures 0,1 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 \
  --device cpu --decode-path eager --speedup --dtype float32 --out $D/cpu-eager/results.json
# Then, after speculative.sample learned to take the argmax at temperature 0 (no random draws),
# T=0 again on eager (cpu-eager-greedy-argmax/): the same tau to the digit, the same speed-ups
# within this machine's run-to-run noise.
python evaluate.py --target $G --tokenizer $G --drafts "kld=runs/smollm2-scaled/draft-kld/model" \
  --prompts "story=$W/eval_story.jsonl,summary=$W/eval_summary.jsonl,highlights=$W/eval_highlights.jsonl" \
  --gammas 1,2,3,4 --temperatures 0 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 \
  --device cpu --decode-path eager --speedup --dtype float32 --out $D/cpu-eager-greedy-argmax/results.json
