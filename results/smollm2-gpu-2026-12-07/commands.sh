#!/usr/bin/env bash
# The device calls of 2026-12-07 after results/bench/session_2026-12-07.sh (one H100, the machine
# kept warm between calls), as run from the repository root there: the whole preset did not fit
# the device time left; these did. CALL=a..d.
#   a: the block profile again, the code before the change first (call1/profile_*_repeat.log);
#   b: part 1 of the GGUF to /tmp (carried in .carry/p0), and the 2-block cut's profile;
#   c: the GGUF joined (part 2 in .carry/p1); the preset with one loss and 1,200 distillation
#      steps; its results, and the draft as bf16 in parts of 15 MiB (results/bench/draft_parts.py);
#   d: the two parts that call c's limit on returned files (64 MiB in all) left behind.
# Every call carries .whl (the gguf wheel); a carries .carry/old too (model.py and fast_decode.py
# before the change).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
case "$CALL" in
a)
  mkdir -p /tmp/old2 && cp -r *.py results /tmp/old2/ && cp .carry/old/*.py /tmp/old2/
  (cd /tmp/old2 && timeout 110 python results/bench/profile_smollm2.py --block-only --draft cut:4) > $OUT/profile_old_repeat.log 2>&1
  timeout 110 python results/bench/profile_smollm2.py --block-only --draft cut:4 > $OUT/profile_new_repeat.log 2>&1
  ;;
b)
  cp .carry/p0/gguf.part00 /tmp/
  timeout 100 python results/bench/profile_smollm2.py --block-only --draft cut:2 > $OUT/profile_new_cut2.log 2>&1
  ;;
c)
  mkdir -p models /tmp/o
  cat /tmp/gguf.part00 .carry/p1/gguf.part01 > models/SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum models/*.gguf > $OUT/gguf.sha256
  timeout 390 env PRESET=smollm2 LOSSES=lk_hybrid DISTILL_STEPS=1200 bash run.sh > /tmp/o/run.log 2>&1
  R=runs/smollm2
  cp $R/results.md $R/results.json $R/draft-lk_hybrid/log.jsonl /tmp/o/ 2>/dev/null
  python results/bench/draft_parts.py $R/draft-lk_hybrid/model /tmp/draft && (cd /tmp/draft && cp config.json draft.part0[0-5] $OUT/)
  tar czf $OUT/run.tgz -C /tmp/o .
  ;;
d)
  cp /tmp/draft/draft.part04 /tmp/draft/draft.part05 $OUT/
  ;;
esac
