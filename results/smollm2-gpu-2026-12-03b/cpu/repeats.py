"""How far one CPU evaluation can be trusted: the best T=0 cells of cpu/evaluate (lk_hybrid draft,
8,192-token shortlist head, gamma 3, both models on few-row-matmuls in float32) measured again,
each repeat a fresh plain baseline and then the speculative run, alternating.

    python results/smollm2-gpu-2026-12-03b/cpu/repeats.py > results/smollm2-gpu-2026-12-03b/cpu/repeats.txt
"""
import sys

import torch

sys.path.insert(0, ".")
from checkpoints import load_model
from data import load_jsonl_prompts
from distill_data import answer_vocabulary, load_distill_records
from evaluate import evaluate_pair
from fast_decode import few_row_matmuls, shortlist_head
from speculative import plain_tokens_per_s
from tokenizer import chat_prompt, load_tokenizer

GGUF, DRAFT, GAMMA, REPEATS = "models/SmolLM2-135M-Instruct.Q4_1.gguf", "runs/smollm2/draft-lk_hybrid/model", 3, 3
tok = load_tokenizer(GGUF)
shortlist, _ = answer_vocabulary(load_distill_records("runs/smollm2/distill.jsonl"), 8192)
target = few_row_matmuls(load_model(GGUF, "cpu", torch.float32))
draft = few_row_matmuls(shortlist_head(load_model(DRAFT, "cpu", torch.float32), shortlist))
for task in ("highlights", "story"):
    records = load_jsonl_prompts(f"runs/smollm2/world/eval_{task}.jsonl")[:8]
    prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in records]
    for repeat in range(REPEATS):
        baseline = plain_tokens_per_s(target, prompts, 64, 0.0, stop_ids=tok.stop_ids)
        row = evaluate_pair(target, draft, prompts, GAMMA, 0.0, 64, stop_ids=tok.stop_ids, baseline_tokens_per_s=baseline)
        print(f"{task} T=0 gamma {GAMMA} repeat {repeat}: tau {row['block_efficiency']:.2f}, speed-up "
              f"{row['speedup']:.2f}x ({row['tokens_per_s']:.1f} against plain {baseline:.1f} tok/s)", flush=True)
