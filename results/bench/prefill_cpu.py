"""What Llama.prefill saves on a CPU: the real SmolLM2 (GGUF, float32) and its 4-block cut (the
preset's draft shape, full head), one prompt of 45 and of 100 tokens written into a KV cache
with the logits of every position (Llama.forward, the decoders' prefill before 2026-12-04) and
without (Llama.prefill); median ms of 5 after one warm-up, 2 threads.

    PYTHONPATH=. python results/bench/prefill_cpu.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import time

import torch

from checkpoints import load_model


def median_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[repeats // 2] * 1e3


parser = argparse.ArgumentParser()
parser.add_argument("--gguf", required=True)
args = parser.parse_args()
torch.set_num_threads(2)
with torch.no_grad():
    for name, model in (("SmolLM2-135M", load_model(args.gguf)), ("its first 4 blocks", load_model(args.gguf, n_layers=4))):
        for length in (45, 100):
            tokens = torch.randint(0, model.config.vocab_size, (1, length))
            cache, slots = model.new_cache(1, length), torch.arange(length)
            with_logits = median_ms(lambda: model(tokens, cache, slots))
            without = median_ms(lambda: model.prefill(tokens, cache, slots))
            print(f"{name}, {length} tokens: {with_logits:.1f} ms with every position's logits, "
                  f"{without:.1f} ms without ({with_logits / without:.2f}x)", flush=True)
