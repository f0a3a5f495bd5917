#!/usr/bin/env bash
# Device call (2026-12-01): PRESET=smollm2 bash run.sh, sized to the session's remaining device
# time, then the best distilled draft brought back (bf16, split in <16 MiB parts) for the CPU runs.
set -uo pipefail
export PYTHONUNBUFFERED=1
: "${DRAFT_STEPS:=1000}" "${DISTILL_STEPS:=300}" "${EVAL_GAMMAS:=2,3,4,5}" "${EVAL_PROMPTS:=8}" "${DECODE_PATH:=graphs}"
export DRAFT_STEPS DISTILL_STEPS EVAL_GAMMAS EVAL_PROMPTS DECODE_PATH
timeout "${LIMIT:-470}" env PRESET=smollm2 bash run.sh 2>&1 | grep -v -i warn > $OUT/smollm2_run.log
echo "run.sh exit $?"
R=runs/smollm2
cp $R/results.json $R/results.md $R/results.png $OUT/ 2>/dev/null
python - <<'PY'
import json, os, torch
from checkpoints import load_model, save_model
rows = json.load(open("runs/smollm2/results.json"))["results"]
scores = {}
for r in rows:
    if r["draft"] != "pretrained" and r["gamma"] == 4:
        scores.setdefault(r["draft"], []).append(r["block_efficiency"])
best = max(scores, key=lambda d: sum(scores[d]) / len(scores[d]))
print("best draft", best, {d: round(sum(v) / len(v), 3) for d, v in scores.items()})
save_model(load_model(f"runs/smollm2/draft-{best}/model").to(torch.bfloat16), "/tmp/best")
os.system(f"cd /tmp/best && split -b 15M -d model.safetensors draft.part && cp config.json draft.part* $OUT/ && echo {best} > $OUT/best.txt")
PY
tail -c 3500 $OUT/smollm2_run.log
