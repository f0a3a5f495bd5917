"""One cached pass of 1 and 2 tokens of the KLD draft on this CPU, by dtype, decode path and head
(full or the 8,192-token shortlist); median of 15 (step_costs.pass_ms).

    python results/smollm2-gpu-2026-12-03/cpu/draft_dtype_step_costs.py > draft_dtype_step_costs.txt
"""
import sys, torch
sys.path.insert(0, ".")
from checkpoints import load_model
from fast_decode import apply_decode_path, shortlist_head
from distill_data import answer_vocabulary, load_distill_records
sys.path.insert(0, "results/smollm2-cpu-2026-12-02")
from step_costs import pass_ms
ids, cov = answer_vocabulary(load_distill_records("runs/smollm2/distill.jsonl"), 8192)
for dt in (torch.float32, torch.bfloat16, torch.float16):
    for path in ("eager", "few-row-matmuls"):
        for sl in (False, True):
            d = load_model("runs/smollm2/draft-kld/model", "cpu", dt)
            if sl: shortlist_head(d, ids)
            apply_decode_path([d], path)
            print(dt, path, "shortlist" if sl else "full", " ".join(f"T={t} {pass_ms(d, t):.2f}" for t in (1, 2)), "ms", flush=True)
