#!/usr/bin/env bash
# Device calls of the session of 2026-12-03 (one H200), run from the repository root there.
#   CALL=1: tests/test_gpu.py (the argmax paths at T=0 and the reused decoders had not run on a
#           GPU); where a block's time goes now, for the cut draft and the 4-layer one
#           (profile_smollm2.py --block-only, T=0 and T=1); part 1 of the GGUF copied to /tmp.
#   CALL=2: `PRESET=smollm2 bash run.sh` with the preset's defaults (the draft cut from SmolLM2,
#           five losses, gammas 1-6), stopped at the first phase that starts after 450 s (a call
#           may run 10 minutes); the phases' own times are in run.log.
#   CALL=3: the same command again: it resumes (finished phases are skipped) and evaluates; the
#           results come back, and the best distilled draft as bf16 in parts of 15 MiB (4 here).
#   CALL=4: the draft's remaining parts and the distillation data (gzipped: the CPU side's
#           shortlist is built from it); bench.py --section pair with that draft (transformers'
#           generate and assisted generation beside ours, the same weights and prompts).
#           (Call 4 was typed as one command line doing what CALL=4 does below, with the
#           bench under `timeout 250`: the session had about 5 device-minutes left.)
# The SmolLM2 GGUF travels in two parts (a call carries at most 64 MiB): .carry/p0 in call 1,
# .carry/p1 in call 2, joined into models/ there.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=/tmp/o/call$CALL GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf R=runs/smollm2
mkdir -p "$O" models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
best_draft() {  # the distilled draft with the highest mean tau at gamma 4 over every task and T
  python - <<'EOF'
import json
rows = json.load(open("runs/smollm2/results.json"))["results"]
taus = {}
for r in rows:
    if r["gamma"] == 4 and r["draft"] != "pretrained":
        taus.setdefault(r["draft"], []).append(r["block_efficiency"])
print(max(taus, key=lambda d: sum(taus[d]) / len(taus[d])))
EOF
}
case "$CALL" in
1)
  cp .carry/p0/gguf.part00 /tmp/
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/gpu.txt"
  { time timeout 200 python -m pytest -q tests/test_gpu.py; } > "$O/test_gpu.log" 2>&1
  for d in "cut:4" "smollm2-draft-4l"; do
    timeout 100 python results/bench/profile_smollm2.py --block-only --draft $d
  done > "$O/profile.log" 2>&1
  ;;
2)
  cat /tmp/gguf.part00 .carry/p1/gguf.part01 > $GGUF && sha256sum $GGUF > "$O/gguf.sha256"
  PRESET=smollm2 bash run.sh > "$O/run.log" 2>&1 &
  job=$! seen=1
  while kill -0 $job 2>/dev/null; do     # watch for each phase's first line: "== <phase> (HH:MM:SS)"
    started=$(grep -c '^== .*([0-9][0-9]:[0-9][0-9]:[0-9][0-9])$' "$O/run.log")
    if [ "$started" -gt "$seen" ]; then
      seen=$started
      if [ $SECONDS -gt 450 ] && ! tail -n 1 "$O/run.log" | grep -q "^== done"; then
        # the phase that just started would not end inside this call: stop it, resume in call 3
        pkill -P $job; kill $job; echo "== stopped by the call script at ${SECONDS}s" >> "$O/run.log"; break
      fi
    fi
    sleep 1
  done
  ;;
3)
  timeout 530 env PRESET=smollm2 bash run.sh > "$O/run.log" 2>&1
  cp $R/results.md $R/results.json $R/results.png "$O/" 2>/dev/null
  for d in $R/draft-*; do cp $d/log.jsonl "$O/$(basename $d).log.jsonl" 2>/dev/null; done
  best=$(best_draft) && echo "$best" > "$O/best_draft.txt"
  python - "$best" <<'EOF'
import sys, torch
from checkpoints import load_model, save_model
save_model(load_model(f"runs/smollm2/draft-{sys.argv[1]}/model").to(torch.bfloat16), "/tmp/draft")
EOF
  (cd /tmp/draft && split -b 15M -d model.safetensors draft.part && cp config.json draft.part00 draft.part01 draft.part02 draft.part03 "$OUT/")
  ;;
4)
  best=$(cat /tmp/o/call3/best_draft.txt)
  (cd /tmp/draft && cp draft.part0[4-9] "$OUT/")
  gzip -c $R/distill.jsonl > "$OUT/distill.jsonl.gz"
  timeout 250 python bench.py --section pair --target $GGUF --draft $R/draft-$best/model \
    --prompts $R/world/eval_story.jsonl --n-prompts 5 --max-new-tokens 128 --paths fused+compile+graphs \
    --out "$O/pair.json" > "$O/pair.log" 2>&1
  ;;
esac
tar czf "$OUT/call$CALL.tgz" -C /tmp/o .
for f in "$O"/*.log; do echo "=== $f"; grep -v -i "warn" "$f" | tail -c 3000; done
