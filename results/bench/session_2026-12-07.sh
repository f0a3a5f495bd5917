#!/usr/bin/env bash
# Device calls of 2026-12-07 (one H100 or H200), run from the repository root there:
#   CALL=1: part 1 of the GGUF to /tmp (if carried); tests/test_gpu.py with compile_blocks
#           also compiling the final norm and Llama.cache_inputs (RoPE angles and mask); the
#           block profile (profile_smollm2.py --block-only --draft cut:4) with that change and
#           without it (.carry/old holds model.py and fast_decode.py as they were before it).
#           .carry/old: `for f in model.py fast_decode.py; do git show b90ee9e:$f > .carry/old/$f; done`.
#   CALL=2: the GGUF joined; `PRESET=smollm2 bash run.sh` with the preset's defaults, stopped
#           when a phase would start after 470 s or the evaluation after 250 s; if call 1's
#           tests failed, the change is undone first.
#   CALL=3: `PRESET=smollm2 bash run.sh` again: it resumes and evaluates; the results come back,
#           and the best distilled draft as bf16 in parts of 15 MiB.
# The GGUF travels in two parts of 47 MiB (a call carries at most 64 MiB), made with
#   split -b 47M -d models/SmolLM2-135M-Instruct.Q4_1.gguf gguf.part
# and carried in .carry/p0 (call 1) and .carry/p1 (call 2); the gguf wheel in .whl, every call.
# Only call 1 ran on 2026-12-07: the device time left after it did not fit calls 2 and 3, and
# results/smollm2-gpu-2026-12-07/commands.sh has the shorter calls that ran instead.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=/tmp/o/call$CALL GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf R=runs/smollm2
mkdir -p "$O" models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
case "$CALL" in
1)
  cp .carry/p0/gguf.part00 /tmp/ 2>/dev/null   # when calls 2 and 3 follow
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/gpu.txt"
  { time timeout 200 python -m pytest -q tests/test_gpu.py; } > "$O/test_gpu.log" 2>&1
  grep -q " passed" "$O/test_gpu.log" && ! grep -q -E " failed| error" "$O/test_gpu.log"; echo $? > /tmp/test_gpu.rc
  timeout 120 python results/bench/profile_smollm2.py --block-only --draft cut:4 > "$O/profile_new.log" 2>&1
  mkdir -p /tmp/old && cp -r *.py results /tmp/old/; cp .carry/old/*.py /tmp/old/
  (cd /tmp/old && PYTHONPATH=/tmp/site:. timeout 120 python results/bench/profile_smollm2.py --block-only --draft cut:4) > "$O/profile_old.log" 2>&1
  ;;
2)
  cat /tmp/gguf.part00 .carry/p1/gguf.part01 > $GGUF && sha256sum $GGUF > "$O/gguf.sha256"
  if [ "$(cat /tmp/test_gpu.rc 2>/dev/null)" != 0 ]; then cp .carry/old/*.py . && echo "change undone" > "$O/undone.txt"; fi
  PRESET=smollm2 bash run.sh > "$O/run.log" 2>&1 &
  job=$! seen=1
  while kill -0 $job 2>/dev/null; do     # watch for each phase's first line: "== <phase> (HH:MM:SS)"
    started=$(grep -c '^== .*([0-9][0-9]:[0-9][0-9]:[0-9][0-9])$' "$O/run.log")
    if [ "$started" -gt "$seen" ]; then
      seen=$started
      last=$(grep '^== .*([0-9][0-9]:[0-9][0-9]:[0-9][0-9])$' "$O/run.log" | tail -n 1)   # the phase that just started
      if { [ $SECONDS -gt 470 ] || { [ $SECONDS -gt 250 ] && [[ $last == "== evaluation"* ]]; }; } \
         && [[ $last != "== done"* ]]; then
        pkill -P $job; kill $job; echo "== stopped by the call script at ${SECONDS}s" >> "$O/run.log"; break
      fi
    fi
    sleep 1
  done
  ;;
3)
  if [ -f /tmp/o/call2/undone.txt ]; then cp .carry/old/*.py .; fi
  timeout 560 env PRESET=smollm2 bash run.sh > "$O/run.log" 2>&1
  cp $R/results.md $R/results.json $R/results.png "$O/" 2>/dev/null
  for d in $R/draft-*; do cp $d/log.jsonl "$O/$(basename $d).log.jsonl" 2>/dev/null; done
  best=$(python results/bench/best_draft.py $R/results.json) && echo "$best" > "$O/best_draft.txt"
  python results/bench/draft_parts.py $R/draft-$best/model /tmp/draft
  (cd /tmp/draft && cp config.json draft.part0[0-5] "$OUT/")
  ;;
esac
tar czf "$OUT/call$CALL.tgz" -C /tmp/o .
for f in "$O"/*.log; do echo "=== $f"; grep -v -i "warn" "$f" | tail -c 2500; done
