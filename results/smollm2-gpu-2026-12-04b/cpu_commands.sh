#!/usr/bin/env bash
# The CPU side of the 2026-12-04b SmolLM2 run (this session's 2-core machine, an AMD EPYC of CPU
# family 26, float32). The target is the SmolLM2 GGUF; the drafts come from the H200 run beside
# this file, brought back as bf16 in 15 MiB parts (results/bench/session_2026-12-04b.sh) and
# joined into $R/draft-<name>/model: kld, the best of the preset's drafts (call3/best_draft.txt),
# and lk_hybrid-1200, the preset's pretrained draft distilled with lk_hybrid for 1,200 steps on the
# same answers (lk_hybrid-1200/). The shortlist comes from that run's answers ($R/distill.jsonl,
# brought back gzipped); the prompts are the same world's (data.py --preset gpu --seed 0).
# Run one step after the other with nothing else on the machine: every step times something.
#   DRAFT=kld STEPS="1 2" bash results/smollm2-gpu-2026-12-04b/cpu_commands.sh
# Another run's drafts: R=<its run directory> D=<where its results go>, as on 2026-12-07:
#   R=runs/smollm2-cpu7 D=results/smollm2-gpu-2026-12-07/cpu STEPS="2 3" bash results/smollm2-gpu-2026-12-04b/cpu_commands.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
G=models/SmolLM2-135M-Instruct.Q4_1.gguf R=${R:-runs/smollm2-gpu}
DRAFT=${DRAFT:-lk_hybrid-1200} D=${D:-results/smollm2-gpu-2026-12-04b/cpu} STEPS=" ${STEPS:-1 2 3} "
step() { [[ $STEPS == *" $1 "* ]]; }
mkdir -p $D
[ -f $R/world/eval_story.jsonl ] || python data.py --preset gpu --seed 0 --out $R/world
PROMPTS="story=$R/world/eval_story.jsonl,summary=$R/world/eval_summary.jsonl,highlights=$R/world/eval_highlights.jsonl"

# 1. What one pass of T tokens costs on this CPU, eager and few-row-matmuls (1-row products taken
#    the faster way, as few_row_matmuls measures it), for the target and this draft.
step 1 && PYTHONPATH=. python results/smollm2-cpu-2026-12-02/step_costs.py $R/draft-$DRAFT/model > $D/step_costs_$DRAFT.txt

# 2. tau and the wall-clock speed-up over the held-out tasks, as run.sh's smollm2 preset evaluates
#    on a CPU (few-row-matmuls, the 8,192-token shortlist head), gammas 2-4, T = 0 and 1; the
#    plain baseline interleaved with the speculative runs, prompt by prompt.
step 2 && python evaluate.py --target $G --tokenizer $G --drafts "$DRAFT=$R/draft-$DRAFT/model" --prompts "$PROMPTS" \
  --gammas 2,3,4 --temperatures 0,1 --n-prompts 8 --max-new-tokens 64 --preset smollm2 --seed 0 --device cpu \
  --decode-path few-row-matmuls --speedup --dtype float32 --draft-vocab 8192 --draft-vocab-data $R/distill.jsonl \
  --out $D/evaluate-$DRAFT/results.json > $D/evaluate-$DRAFT.log 2>&1

# 3. One prompt, both ways (speculative.py --bench), at T = 0 and T = 1: the full head, gamma 3.
STORY=$(python -c "import json; print(json.loads(open('$R/world/eval_story.jsonl').readline())['prompt'])")
step 3 && for T in 0 1; do
  python speculative.py --target $G --draft $R/draft-$DRAFT/model --chat --prompt "$STORY" --gamma 3 --temperature $T \
    --max-new-tokens 64 --device cpu --dtype float32 --decode-path few-row-matmuls --bench
done > $D/speculative_bench_$DRAFT.txt 2>&1
exit 0
