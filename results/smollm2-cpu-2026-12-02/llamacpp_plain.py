"""The CPU anchor a user would pick instead: llama.cpp's own plain decoding of the same GGUF (its
quantized Q4_1/Q8_0 kernels), greedy, on the same held-out prompts as evaluate.py, counted the way
speculative.plain_tokens_per_s (evaluate.py until 2026-12-03) counts (new tokens / wall time,
prefill included, at most 64 new tokens, stopping at the end of the answer), one warm-up first. Run it where llama-cpp-python is
installed, in a process that does not import torch:

    python results/smollm2-cpu-2026-12-02/llamacpp_plain.py models/SmolLM2-135M-Instruct.Q4_1.gguf runs/smollm2-gpu/world
"""
import json
import sys
import time

import llama_cpp

model_path, world = sys.argv[1], sys.argv[2]
llm = llama_cpp.Llama(model_path, n_ctx=1024, n_threads=2, verbose=False)
print(f"llama-cpp-python {llama_cpp.__version__}, 2 threads")
for task in ("story", "summary", "highlights"):
    records = [json.loads(line) for line in open(f"{world}/eval_{task}.jsonl")][:8]
    tokens = seconds = 0
    for i, record in enumerate(records[:1] + records):                     # the first run is a warm-up
        messages = ([{"role": "system", "content": record["system"]}] if record.get("system") else []) + \
                   [{"role": "user", "content": record["prompt"]}]
        started = time.perf_counter()
        out = llm.create_chat_completion(messages, max_tokens=64, temperature=0.0)
        if i:
            seconds += time.perf_counter() - started
            tokens += out["usage"]["completion_tokens"]
    print(f"{task}: {tokens} new tokens in {seconds:.2f} s: {tokens / seconds:.1f} tok/s")
