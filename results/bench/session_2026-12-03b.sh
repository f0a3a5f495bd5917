#!/usr/bin/env bash
# Device calls of the second session of 2026-12-03 (one H200), run from the repository root there.
#   CALL=1: tests/test_gpu.py (train.py --compile on a GPU had not run); where a distillation
#           step's time goes, and what answer-only logits and --compile buy
#           (profile_distill.py, on the batches of the previous run's distillation data, carried
#           gzipped); part 1 of the GGUF copied to /tmp.
#   CALL=2: `PRESET=smollm2 bash run.sh` with the preset's defaults, stopped at the first phase
#           that starts after 450 s, or at the evaluation if it starts after 250 s (a call may run
#           10 minutes); the phases' times are in run.log.
#   CALL=3: the same command again: it resumes (finished phases are skipped) and evaluates; the
#           results come back, and the best distilled draft as bf16 in parts of 15 MiB.
# Call 1 ran twice: first with an earlier profile_distill.py, which ran its variants one after the
# other in one process (call1/profile_distill_first_version.log), and with --warmup 6 --steps 20.
# Calls 2 and 3 were run as `TRAIN_COMPILE=' ' CALL=2 bash ...`: run.sh then defaulted to
# train.py --compile on a GPU, and call 1's profile said it costs more than it saves at the
# preset's 500 steps; the committed run.sh has no such default, so its plain command is the one run.
# After call 3 the last two parts of the draft, left out by the limit on what comes back, were
# fetched with `cp /tmp/draft/draft.part04 /tmp/draft/draft.part05 "$OUT/"`. (As run, call 3 held
# results/bench/best_draft.py's and draft_parts.py's few lines inline, as session_2026-12-03.sh
# does; draft_parts.py cuts the same 15 MiB parts as the `split -b 15M` used then.)
# The SmolLM2 GGUF travels in two parts (a call carries at most 64 MiB): .carry/p0 in call 1,
# .carry/p1 in call 2, joined into models/ there.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=/tmp/o/call$CALL GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf R=runs/smollm2
mkdir -p "$O" models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
case "$CALL" in
1)
  cp .carry/p0/gguf.part00 /tmp/
  gunzip -c .carry/p0/distill.jsonl.gz > /tmp/distill.jsonl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/gpu.txt"
  { time timeout 150 python -m pytest -q tests/test_gpu.py; } > "$O/test_gpu.log" 2>&1
  timeout 300 python results/bench/profile_distill.py --data /tmp/distill.jsonl > "$O/profile_distill.log" 2>&1
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
        # the phase that just started (the evaluation takes about 300 s) would not end inside
        # this call: stop it, resume in call 3
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
for f in "$O"/*.log; do echo "=== $f"; grep -v -i "warn" "$f" | tail -c 3500; done
