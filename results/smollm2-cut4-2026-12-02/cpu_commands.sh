#!/usr/bin/env bash
# The CPU side of the cut-draft SmolLM2 experiment (this project's 2-core machine, float32):
# the target is the SmolLM2 GGUF; the draft is the KLD draft cut from SmolLM2 and trained on one
# H200 by call 2 of results/bench/session_2026-12-02e.sh, brought back as bf16 in parts and
# joined into runs/smollm2-cut4/draft-kld/model; the shortlist is built from the distillation
# data of call 4 (the same command again; the data came back gzipped into
# runs/smollm2-cut4/distill.jsonl, and differs from call 2's in a few answers: batched bf16
# generation on a GPU is not bit-reproducible); the prompts are the same world's (data.py --preset gpu --seed 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
G=models/SmolLM2-135M-Instruct.Q4_1.gguf R=runs/smollm2-cut4 D=results/smollm2-cut4-2026-12-02
[ -f $R/world/eval_story.jsonl ] || python data.py --preset gpu --seed 0 --out $R/world
PYTHONPATH=. python results/smollm2-cpu-2026-12-02/step_costs.py $R/draft-kld/model > $D/cpu/step_costs.txt
cpu_eval() {  # $1: output folder under $D; the rest: extra evaluate.py flags
  local out=$1; shift
  python evaluate.py --target $G --tokenizer $G --drafts "kld=$R/draft-kld/model" \
    --prompts "story=$R/world/eval_story.jsonl,summary=$R/world/eval_summary.jsonl,highlights=$R/world/eval_highlights.jsonl" \
    --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 --device cpu --decode-path few-row-matmuls \
    --speedup --dtype float32 --out $D/$out/results.json "$@"
}
cpu_eval cpu-shortlist-T0 --gammas 2,4,6 --temperatures 0 --draft-vocab 8192 --draft-vocab-data $R/distill.jsonl
cpu_eval cpu-full-T0 --gammas 2,4,6 --temperatures 0
cpu_eval cpu-shortlist-T1 --gammas 2,4 --temperatures 1 --draft-vocab 8192 --draft-vocab-data $R/distill.jsonl
# Then, because on this CPU a 4-token pass costs less than a 3-token one (step_costs.txt), gamma 3
# with gammas 2 and 4 again, in one run:
cpu_eval cpu-shortlist-T0-g234 --gammas 2,3,4 --temperatures 0 --draft-vocab 8192 --draft-vocab-data $R/distill.jsonl
# And gamma 3 once more, to see how much a whole run moves on this machine:
cpu_eval cpu-shortlist-T0-g3-repeat --gammas 3 --temperatures 0 --draft-vocab 8192 --draft-vocab-data $R/distill.jsonl
# And T=1 at gamma 3:
cpu_eval cpu-shortlist-T1-g3 --gammas 3 --temperatures 1 --draft-vocab 8192 --draft-vocab-data $R/distill.jsonl
