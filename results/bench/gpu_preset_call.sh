#!/usr/bin/env bash
# Device calls (2026-12-02): PRESET=gpu bash run.sh with the five default losses for at most LIMIT
# seconds (it resumes, so two calls in a row on the same warm machine finish it); then, with
# SHAPES_LIMIT set, the 7B-shape decode step of bench.py on the hand-captured paths beside
# torch.compile(mode="reduce-overhead"). Small files come back as one tarball ($OUT/callN.tgz).
set -uo pipefail
export PYTHONUNBUFFERED=1
O=/tmp/o/call${CALL:-}
mkdir -p "$O"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$O/gpu.txt"
{ time timeout "${LIMIT:-560}" env PRESET=gpu bash run.sh; } 2>&1 | grep -v -i warn > "$O/gpu_run.log"
cp runs/gpu/results.json runs/gpu/results.md runs/gpu/results.png "$O/" 2>/dev/null
if [ -n "${SHAPES_LIMIT:-}" ]; then
  { time timeout "$SHAPES_LIMIT" python bench.py --section shapes --presets llama2-7b \
      --paths "fused+compile+graphs,compile(reduce-overhead)" --out "$O/shapes.json"; } 2>&1 \
    | grep -v -i warn > "$O/shapes.log"
fi
tar czf "$OUT/call${CALL:-}.tgz" -C /tmp/o .
tail -c 4000 "$O/gpu_run.log"; tail -c 3000 "$O/shapes.log" 2>/dev/null
