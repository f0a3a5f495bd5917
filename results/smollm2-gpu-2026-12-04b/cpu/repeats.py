"""How far one CPU evaluation can be trusted: the best T=0 cells of cpu/evaluate-lk_hybrid-2400
(gamma 3, the 8,192-token shortlist head, both models on few-row-matmuls in float32) measured
again three times each, as evaluate.py measures them (evaluate_pair: every prompt decoded plainly
right before its speculative run, after an untimed warm-up).

    PYTHONPATH=. python results/smollm2-gpu-2026-12-04b/cpu/repeats.py > results/smollm2-gpu-2026-12-04b/cpu/repeats.txt
"""
import torch

from checkpoints import load_model
from data import load_jsonl_prompts
from distill_data import answer_vocabulary, load_distill_records
from evaluate import evaluate_pair
from fast_decode import few_row_matmuls, shortlist_head
from speculative import Decoder, decoder_slots
from tokenizer import chat_prompt, load_tokenizer

GGUF, R, GAMMA, REPEATS = "models/SmolLM2-135M-Instruct.Q4_1.gguf", "runs/smollm2-gpu", 3, 3
tok = load_tokenizer(GGUF)
shortlist, _ = answer_vocabulary(load_distill_records(f"{R}/distill.jsonl"), 8192)
target = few_row_matmuls(load_model(GGUF, "cpu", torch.float32))
draft = few_row_matmuls(shortlist_head(load_model(f"{R}/draft-lk_hybrid-2400/model", "cpu", torch.float32), shortlist))
for task in ("highlights", "story", "summary"):
    prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in load_jsonl_prompts(f"{R}/world/eval_{task}.jsonl")[:8]]
    plain = Decoder(target, 1, decoder_slots(target, None, prompts, 64))
    for repeat in range(REPEATS):
        [row] = evaluate_pair(target, draft, prompts, [GAMMA], 0.0, 64, stop_ids=tok.stop_ids, plain=plain)
        print(f"{task} T=0 gamma {GAMMA} repeat {repeat}: tau {row['block_efficiency']:.2f}, speed-up "
              f"{row['speedup']:.2f}x ({row['tokens_per_s']:.1f} against plain {row['baseline_tokens_per_s']:.1f} tok/s)",
              flush=True)
