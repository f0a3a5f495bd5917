#!/usr/bin/env bash
# Device call (2026-12-02): PRESET=smollm2 bash run.sh for at most LIMIT seconds (it resumes, so two
# calls in a row finish it); once results.json exists, the best distilled draft goes back to $OUT
# (bf16, split in <16 MiB parts, for the CPU runs) and bench.py's pair section (ours vs
# transformers) runs on it for at most PAIR_LIMIT seconds. Small files come back as one tarball
# (at most 8 files return from a call).
set -uo pipefail
export PYTHONUNBUFFERED=1
R=runs/smollm2 GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf O=/tmp/o/call${CALL:-}
mkdir -p $O
timeout "${LIMIT:-560}" env PRESET=smollm2 bash run.sh 2>&1 | grep -v -i warn > "$O/smollm2_run.log"
echo "run.sh exit ${PIPESTATUS[0]}"
if [ -f $R/results.json ]; then
  cp $R/results.json $R/results.md $R/results.png $O/ 2>/dev/null
  for d in $R/draft-*; do cp "$d/log.jsonl" "$O/$(basename "$d").log.jsonl" 2>/dev/null; done
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
out = os.environ["OUT"]
os.system(f"cd /tmp/best && split -b 15M -d model.safetensors draft.part && cp config.json draft.part* {out}/ && echo {best} > /tmp/o/best.txt")
PY
  BEST=$(cat /tmp/o/best.txt)
  timeout "${PAIR_LIMIT:-150}" python bench.py --section pair --target $GGUF --draft $R/draft-$BEST/model \
    --prompts $R/world/eval_story.jsonl --paths graphs,fused+compile+graphs --out $O/pair.json 2>&1 | grep -v -i warn > $O/pair.log
fi
tar czf $OUT/call${CALL:-}.tgz -C /tmp/o .
tail -c 5000 "$O/smollm2_run.log"; tail -c 2500 $O/pair.log 2>/dev/null
