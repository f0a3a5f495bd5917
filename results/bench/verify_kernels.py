"""Why a 5-token verify of SmolLM2 costs more than a 1-token step on one GPU (BENCHMARKS.md 0f:
1.317 against 1.100 ms, 440 against 410 kernels): the kernels of one call of each, by name, on
fused+compile+graphs with random bf16 weights and 256 tokens in the cache; then both calls
recorded and replayed with the attention mask as KVCache makes it (bool) and as an additive float
mask (0 / -inf in the cache's dtype, made once per call), to see whether the mask is the cost.

    PYTHONPATH=. python results/bench/verify_kernels.py
"""
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

import fast_decode
import model as model_module
from bench import cuda_time
from model import Llama, get_config

CONTEXT = 256


def kernel_names(fn) -> Counter:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return Counter({e.key: e.count for e in prof.key_averages() if e.self_device_time_total > 0})


torch.manual_seed(0)
with torch.device("cuda"):
    target = Llama(get_config("smollm2-135m")).to(torch.bfloat16).eval()
fast_decode.apply_decode_path([target], "fused+compile+graphs")
cache = target.new_cache(1, CONTEXT + 8)
with torch.no_grad():
    target(torch.randint(0, 49152, (1, CONTEXT), device="cuda"), cache, torch.arange(CONTEXT, device="cuda"))
calls = {n: (torch.randint(0, 49152, (1, n), device="cuda"), torch.arange(CONTEXT, CONTEXT + n, device="cuda"))
         for n in (1, 5)}


def call(n):
    tokens, slots = calls[n]
    return lambda: target(tokens, cache, slots)


bool_mask = model_module.KVCache.attention_mask


def additive_mask(self, input_pos):
    allowed = bool_mask(self, input_pos)                                         # (B, 1, T, S) bool
    return torch.zeros(allowed.shape, dtype=self.k[0].dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


with torch.no_grad():
    names = {n: kernel_names(call(n)) for n in (1, 5)}
    print(f"kernels per call: 1 token {sum(names[1].values())}, 5 tokens {sum(names[5].values())}")
    for name in sorted(set(names[1]) | set(names[5]), key=lambda k: names[5][k] - names[1][k]):
        if names[1][name] != names[5][name]:
            print(f"  {names[1][name]:4d} -> {names[5][name]:4d}  {name[:150]}")
    for label, mask in (("bool mask (KVCache.attention_mask)", bool_mask), ("additive float mask", additive_mask)):
        model_module.KVCache.attention_mask = mask
        torch._dynamo.reset()
        ms = {n: cuda_time(fast_decode.CudaGraph(call(n)), repeats=50) * 1e3 for n in (1, 5)}
        print(f"{label}: recorded 1-token step {ms[1]:.3f} ms, 5-token verify {ms[5]:.3f} ms "
              f"({ms[5] / ms[1]:.2f}x); kernels {sum(kernel_names(call(1)).values())} / {sum(kernel_names(call(5)).values())}",
              flush=True)
