"""Why the teacher's forward pass in a distillation step takes ~9x its FLOP time (BENCHMARKS.md
section 0b: 49.6 ms at the smollm2 preset's shapes): the same pass (SmolLM2-135M's shape,
random weights, a batch of 64 x 256 tokens, no_grad) timed as train.py runs it (float32 weights
under bf16 autocast) and with bf16 weights without autocast, then the CUDA kernels of the first
variant ranked by their GPU time (torch.profiler); last, the first variant with every block
compiled (fast_decode.compile_blocks, as the decode paths do).

    PYTHONPATH=. python results/bench/profile_teacher.py
"""
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fast_decode import compile_blocks
from model import Llama, get_config


def ms(fn, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1e3


torch.manual_seed(0)
with torch.device("cuda"):
    teacher = Llama(get_config("smollm2-135m")).eval().requires_grad_(False)
inputs = torch.randint(0, teacher.config.vocab_size, (64, 256), device="cuda")
print(torch.cuda.get_device_name(), "| torch", torch.__version__)
with torch.no_grad():
    with torch.autocast("cuda", torch.bfloat16):
        autocast_ms = ms(lambda: teacher(inputs))
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            teacher(inputs)
            torch.cuda.synchronize()
    teacher.to(torch.bfloat16)
    bf16_ms = ms(lambda: teacher(inputs))
print(f"teacher forward, float32 weights + bf16 autocast (train.py): {autocast_ms:.1f} ms; "
      f"bf16 weights, no autocast: {bf16_ms:.1f} ms")
print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=70))
teacher.float()
compile_blocks(teacher)
with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
    started = time.perf_counter()
    teacher(inputs)
    torch.cuda.synchronize()
    compiling_s = time.perf_counter() - started
    compiled_ms = ms(lambda: teacher(inputs))
print(f"teacher forward, float32 weights + bf16 autocast, blocks compiled: {compiled_ms:.1f} ms "
      f"(first call, compiling: {compiling_s:.0f} s)")
