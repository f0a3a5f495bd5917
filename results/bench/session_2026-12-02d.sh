#!/usr/bin/env bash
# Device calls of the fourth session of 2026-12-02 (one H200), run from the repository root there.
#   CALL=1: where the time goes at SmolLM2's shapes (results/bench/profile_smollm2.py: one
#           speculative block taken apart, one distillation step taken apart).
#   CALL=2: PRESET=smollm2 with LOSSES=kld and a bigger distillation budget than the preset's
#           (twice the answers, 2.4 times the steps), until the call's time is nearly up.
#   As run, call 2 finished the whole command (505 s, evaluation included), and the machine went
#   back before a planned third call (resume, bench.py's pair section, save the draft; removed
#   here, never run) could save the draft. CALL=4 and 5 (a fresh machine) train the same draft
#   again by the same command, stop it when the evaluation starts, and bring the draft back as
#   bf16 in <16 MiB parts for the CPU measurement.
# The SmolLM2 GGUF travels in two parts (a call carries at most 64 MiB): .carry/p0 in call 1,
# .carry/p1 in call 2, joined into models/ there. Small files come back as one tarball.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=/tmp/o/call$CALL GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf R=runs/smollm2-scaled
mkdir -p "$O" models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
# The experiment: SETTINGS_PER_PROMPT 2 -> 4 (24,000 answers), DISTILL_STEPS 500 -> 1200.
SCALED="env PRESET=smollm2 RUN=$R LOSSES=kld SETTINGS_PER_PROMPT=4 DISTILL_STEPS=1200 CKPT_INTERVAL=200 bash run.sh"
case "$CALL" in
1|4)
  cp .carry/p0/gguf.part00 /tmp/
  [ "$CALL" = 4 ] && exit 0
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/gpu.txt"
  { time timeout 150 python results/bench/profile_smollm2.py; } > "$O/profile_smollm2.log" 2>&1
  ;;
2)
  cat /tmp/gguf.part00 .carry/p1/gguf.part01 > $GGUF && sha256sum $GGUF > "$O/gguf.sha256"
  { time timeout 550 $SCALED; } > "$O/run.log" 2>&1
  ;;
5)
  cat /tmp/gguf.part00 .carry/p1/gguf.part01 > $GGUF && sha256sum $GGUF > "$O/gguf.sha256"
  $SCALED > "$O/run.log" 2>&1 &
  while kill -0 $! 2>/dev/null && ! grep -q "^== evaluation" "$O/run.log" && [ $SECONDS -lt 520 ]; do sleep 2; done
  pkill -f evaluate.py; kill $! 2>/dev/null
  python - <<'EOF2'
import torch
from checkpoints import load_model, save_model
save_model(load_model("runs/smollm2-scaled/draft-kld/model").to(torch.bfloat16), "/tmp/draft")
EOF2
  (cd /tmp/draft && split -b 15M -d model.safetensors draft.part && cp config.json draft.part* "$OUT/")
  ;;
esac
tar czf "$OUT/call$CALL.tgz" -C /tmp/o .
for f in "$O"/*.log; do echo "=== $f"; grep -v -i "warn" "$f" | tail -c 3000; done
