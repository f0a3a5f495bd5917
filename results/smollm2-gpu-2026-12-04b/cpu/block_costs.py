"""Where a CPU evaluation's time goes (BENCHMARKS.md section 0f): the lk_hybrid-1200 draft with the
8,192-token shortlist head and SmolLM2, float32, few-row-matmuls (1-row products taken the faster
way, as few_row_matmuls measures it), the 8 highlights prompts of the evaluation at T=0, 64 new
tokens: one draft step timed alone, then plain and speculative decoding of each prompt (untimed
warm-up first) at gamma 3 and 4, as ms per plain token and per block, prefill included.

    PYTHONPATH=. python results/smollm2-gpu-2026-12-04b/cpu/block_costs.py > results/smollm2-gpu-2026-12-04b/cpu/block_costs.txt
"""
import time

import torch

from checkpoints import load_model
from data import load_jsonl_prompts
from distill_data import answer_vocabulary, load_distill_records
from fast_decode import few_row_matmuls, shortlist_head
from speculative import Decoder, SpeculativeDecoder, decoder_slots
from tokenizer import chat_prompt, load_tokenizer

GGUF, R = "models/SmolLM2-135M-Instruct.Q4_1.gguf", "runs/smollm2-gpu"
tok = load_tokenizer(GGUF)
shortlist, _ = answer_vocabulary(load_distill_records(f"{R}/distill.jsonl"), 8192)
target = few_row_matmuls(load_model(GGUF, "cpu", torch.float32))
draft = few_row_matmuls(shortlist_head(load_model(f"{R}/draft-lk_hybrid-1200/model", "cpu", torch.float32), shortlist))
prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in load_jsonl_prompts(f"{R}/world/eval_highlights.jsonl")[:8]]
print(f"prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens; one row as two: "
      f"target {target.output.one_row_as_two}, draft {draft.output.proj.one_row_as_two}")
plain = Decoder(target, 1, decoder_slots(target, None, prompts, 64))
speculative = SpeculativeDecoder(target, draft, decoder_slots(target, draft, prompts, 64, 4))
with torch.no_grad():
    cache = draft.new_cache(1, 256)
    for n_tokens in (1, 2):
        tokens, slots = torch.zeros(1, n_tokens, dtype=torch.long), torch.arange(70, 70 + n_tokens)
        times = []
        for _ in range(24):
            started = time.perf_counter()
            draft(tokens, cache, slots)
            times.append(time.perf_counter() - started)
        print(f"draft step of {n_tokens} token(s): {sorted(times[3:])[10] * 1e3:.2f} ms")
for gamma in (3, 4):
    plain_s = speculative_s = 0.0
    plain_tokens = speculative_tokens = blocks = 0
    for prompt in prompts:
        plain.generate([prompt], 2, 0.0)
        speculative.generate(prompt, gamma + 1, gamma, 0.0)
        started = time.perf_counter()
        plain_tokens += len(plain.generate([prompt], 64, 0.0, stop_ids=tok.stop_ids)[0])
        plain_s += time.perf_counter() - started
        new, stats = speculative.generate(prompt, 64, gamma, 0.0, stop_ids=tok.stop_ids)
        speculative_s, speculative_tokens = speculative_s + stats["seconds"], speculative_tokens + len(new)
        blocks += stats["target_calls"]
    print(f"gamma {gamma}: plain {plain_s / plain_tokens * 1e3:.2f} ms per token ({plain_tokens} tokens); speculative "
          f"{speculative_s / blocks * 1e3:.2f} ms per block ({blocks} blocks, {speculative_tokens / blocks:.2f} tokens "
          f"each); speed-up {(speculative_tokens / speculative_s) / (plain_tokens / plain_s):.2f}x")
