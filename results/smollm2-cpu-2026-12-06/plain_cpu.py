"""Our plain decoding of SmolLM2 on this CPU, beside llama.cpp's (llamacpp_plain.txt here): the
same 8 held-out prompts per task, greedy, at most 64 new tokens, stopping at the end of the
answer, float32, on both CPU decode paths, counted as evaluate.py's baseline counts (pooled new
tokens over pooled seconds, every prompt warmed up first; speculative.plain_tokens_per_s).

    PYTHONPATH=. python results/smollm2-cpu-2026-12-06/plain_cpu.py models/SmolLM2-135M-Instruct.Q4_1.gguf runs/smollm2-gpu/world
"""
import sys

import torch

import fast_decode
from checkpoints import load_model
from data import load_jsonl_prompts
from speculative import plain_tokens_per_s
from tokenizer import chat_prompt, load_tokenizer

gguf, world = sys.argv[1], sys.argv[2]
tok = load_tokenizer(gguf)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for path in ("eager", "few-row-matmuls"):
    target = load_model(gguf, "cpu", torch.float32)
    fast_decode.apply_decode_path([target], path)
    for task in ("story", "summary", "highlights"):
        prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in load_jsonl_prompts(f"{world}/eval_{task}.jsonl")[:8]]
        speed = plain_tokens_per_s(target, prompts, 64, 0.0, stop_ids=tok.stop_ids)
        print(f"{path} {task}: {speed:.1f} tok/s", flush=True)
