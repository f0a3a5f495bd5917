#!/usr/bin/env bash
# Device calls of the second session of 2026-12-04 (one H200), run from the repository root there:
# the smollm2 preset again with the recorded prefill (0e) and evaluate.py's interleaved baseline.
#   CALL=1: part 1 of the GGUF to /tmp; tests/test_gpu.py; the block profile that check_goals.py
#           projects from (profile_smollm2.py --block-only --draft cut:4).
#   CALL=2: the GGUF joined; `PRESET=smollm2 bash run.sh` with the preset's defaults, stopped when
#           the evaluation would start after 250 s or any phase after 450 s (a call may run 10
#           minutes); the phases' times are in run.log.
#   CALL=3: `PRESET=smollm2 bash run.sh` again: it resumes past the finished phases and evaluates;
#           the results come back, and the best distilled draft as bf16 in parts of 15 MiB.
# The GGUF travels in two parts of 47 MiB (a call carries at most 64 MiB), made with
#   split -b 47M -d models/SmolLM2-135M-Instruct.Q4_1.gguf gguf.part
# and carried in .carry/p0 (call 1) and .carry/p1 (call 2); the gguf wheel (and PyYAML's, tqdm's)
# in .whl, every call.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=/tmp/o/call$CALL GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf R=runs/smollm2
mkdir -p "$O" models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
case "$CALL" in
1)
  cp .carry/p0/gguf.part00 /tmp/
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/gpu.txt"
  { time timeout 200 python -m pytest -q tests/test_gpu.py; } > "$O/test_gpu.log" 2>&1
  timeout 200 python results/bench/profile_smollm2.py --block-only --draft cut:4 > "$O/profile.log" 2>&1
  ;;
2)
  cat /tmp/gguf.part00 .carry/p1/gguf.part01 > $GGUF && sha256sum $GGUF > "$O/gguf.sha256"
  PRESET=smollm2 bash run.sh > "$O/run.log" 2>&1 &
  job=$! seen=1
  while kill -0 $job 2>/dev/null; do     # watch for each phase's first line: "== <phase> (HH:MM:SS)"
    started=$(grep -c '^== .*([0-9][0-9]:[0-9][0-9]:[0-9][0-9])$' "$O/run.log")
    if [ "$started" -gt "$seen" ]; then
      seen=$started
      last=$(grep '^== .*([0-9][0-9]:[0-9][0-9]:[0-9][0-9])$' "$O/run.log" | tail -n 1)   # the phase that just started
      if { [ $SECONDS -gt 450 ] || { [ $SECONDS -gt 250 ] && [[ $last == "== evaluation"* ]]; }; } \
         && [[ $last != "== done"* ]]; then
        pkill -P $job; kill $job; echo "== stopped by the call script at ${SECONDS}s" >> "$O/run.log"; break
      fi
    fi
    sleep 1
  done
  ;;
3)
  timeout 560 env PRESET=smollm2 bash run.sh > "$O/run.log" 2>&1
  cp $R/results.md $R/results.json $R/results.png "$O/" 2>/dev/null
  for d in $R/draft-*; do cp $d/log.jsonl "$O/$(basename $d).log.jsonl" 2>/dev/null; done
  best=$(python results/bench/best_draft.py $R/results.json) && echo "$best" > "$O/best_draft.txt"
  python results/bench/draft_parts.py $R/draft-$best/model /tmp/draft
  (cd /tmp/draft && cp config.json draft.part0[0-5] "$OUT/")
  ;;
esac
tar czf "$OUT/call$CALL.tgz" -C /tmp/o .
for f in "$O"/*.log; do echo "=== $f"; grep -v -i "warn" "$f" | tail -c 3000; done
