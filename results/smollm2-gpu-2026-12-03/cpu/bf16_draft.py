"""Tried on the 2026-12-03 CPU: the KLD draft (8,192-token shortlist head) in bfloat16 on the eager
path against float32 on few-row-matmuls, the target in float32 on few-row-matmuls; story prompts,
T=0, gamma 3, 4 alternating repeats, each against a fresh plain baseline (docs/lab-notes.md).

    python results/smollm2-gpu-2026-12-03/cpu/bf16_draft.py story > bf16_draft.txt
"""
import sys

import torch
sys.path.insert(0, ".")
from checkpoints import load_model
from fast_decode import few_row_matmuls, shortlist_head
from distill_data import answer_vocabulary, load_distill_records
from evaluate import evaluate_pair
from speculative import plain_tokens_per_s
from tokenizer import load_tokenizer, chat_prompt
from data import load_jsonl_prompts
G = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
tok = load_tokenizer(G)
task = sys.argv[1] if len(sys.argv) > 1 else "story"
prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in load_jsonl_prompts(f"runs/smollm2/world/eval_{task}.jsonl")[:8]]
ids, _ = answer_vocabulary(load_distill_records("runs/smollm2/distill.jsonl"), 8192)
target = few_row_matmuls(load_model(G, "cpu", torch.float32))
drafts = {}
for name, dt, fr in (("fp32 few-row", torch.float32, True), ("bf16 eager", torch.bfloat16, False)):
    d = shortlist_head(load_model("runs/smollm2/draft-kld/model", "cpu", dt), ids)
    drafts[name] = few_row_matmuls(d) if fr else d
for T in (0.0,):
    for rep in range(4):
        base = plain_tokens_per_s(target, prompts, 64, T, stop_ids=tok.stop_ids)
        for name, d in drafts.items():
            r = evaluate_pair(target, d, prompts, 3, T, 64, stop_ids=tok.stop_ids, baseline_tokens_per_s=base)
            print(f"{task} T={T:g} rep {rep} {name}: tau {r['block_efficiency']:.3f} speed-up {r['speedup']:.2f}x "
                  f"({r['tokens_per_s']:.1f} vs plain {base:.1f} tok/s)", flush=True)
