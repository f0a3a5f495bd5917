"""The teacher's forward pass of a distillation step at the smollm2 preset's shapes, timed and taken apart.

    python tools/profile_teacher.py

SmolLM2-135M's shape with random weights, a batch of 64 x 256 tokens, no_grad, on one GPU: timed
as train.py runs it (float32 weights under bf16 autocast) and with bf16 weights without autocast;
the CUDA kernels of the first variant ranked by their GPU time (torch.profiler); last, the first
variant with every block compiled (fast_decode.compile_blocks). Needs a CUDA GPU.
Recorded in results/bench/profile_teacher.log (one H200).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules


def ms(fn, repeats: int = 20) -> float:
    """Mean wall ms of fn over `repeats` calls after one untimed call, the GPU synchronised around them."""
    import torch
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1e3


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import torch                                  # after the flags: --help needs no torch
    from torch.profiler import ProfilerActivity, profile

    from fast_decode import compile_blocks
    from model import Llama, get_config

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


if __name__ == "__main__":
    main()
