"""CPU cost of one cached forward pass of T tokens, for the SmolLM2 target and the GPU-trained
draft, float32, this machine's threads, on the decode paths 'eager' and 'few-row-matmuls'
(the costs behind the CPU speed-ups in README and BENCHMARKS.md); then the bare product of a few
rows with the 49,152 x 576 output matrix, both ways.

    PYTHONPATH=. python results/smollm2-cpu-2026-12-02/step_costs.py [draft_dir]

A speculative block at gamma g costs g draft steps (the first one 2 tokens: the draft is re-fed
the last two) plus one target pass of g + 1 tokens; plain decoding costs one target pass of 1 token
per token. Each figure is the median of 15 repeats after 3 warm-ups, at cache slots 64 and up."""
import sys
import time

import torch
import torch.nn.functional as F

from checkpoints import load_model
from fast_decode import apply_decode_path

GGUF = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


@torch.no_grad()
def median_ms(fn, repeats: int = 15) -> float:
    times = []
    for _ in range(3 + repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times[3:])[repeats // 2] * 1000


@torch.no_grad()
def pass_ms(model, n_tokens: int, context: int = 64) -> float:
    cache = model.new_cache(1, 512)
    model(torch.randint(0, 1000, (1, context)), cache, torch.arange(context))        # fill the cache
    tokens, slots = torch.randint(0, 1000, (1, n_tokens)), torch.arange(context, context + n_tokens)
    return median_ms(lambda: model(tokens, cache, slots))                # rewrites the same slots


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    paths = {"target (SmolLM2-135M)": GGUF, **({"draft": sys.argv[1]} if len(sys.argv) > 1 else {})}
    for decode_path in ("eager", "few-row-matmuls"):
        for name, path in paths.items():
            model = load_model(path, "cpu", torch.float32)
            apply_decode_path([model], decode_path)
            print(f"{decode_path:>15} {name}:", " ".join(f"T={t} {pass_ms(model, t):.1f}" for t in range(1, 8)), "ms")
    weight = torch.randn(49152, 576)
    for rows in range(1, 8):
        x = torch.randn(rows, 576)
        print(f"{rows} rows x (49152 x 576)^T: x W^T {median_ms(lambda: F.linear(x, weight)):.2f} ms, "
              f"(W x^T)^T {median_ms(lambda: (weight @ x.T).T):.2f} ms")
