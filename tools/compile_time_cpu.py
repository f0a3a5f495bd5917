"""Compile time of a decode step on a CPU: the whole forward compiled at once against compile_blocks.

    python tools/compile_time_cpu.py

A 32-layer model of the llama2-7b layout at width 128 (compile time follows the number of
operations, not their size): torch.compile of the whole Llama.forward (what fast_decode did before
block-wise compilation) against fast_decode.compile_blocks (one block compiled, every layer
reusing it); the first call of a 1-token decode step, then of a 5-token verify. Each variant runs
in a fresh process with an empty inductor cache. Output recorded in results/bench/compile_time_cpu.log.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules

VARIANTS = ("whole forward", "compile_blocks")


def one_variant(variant: str) -> None:
    import torch

    import fast_decode
    from model import Llama, get_config

    torch.manual_seed(0)
    config = get_config("llama2-7b", dim=128, n_heads=4, n_kv_heads=4, ffn_dim=256, vocab_size=512, max_seq_len=256)
    model = Llama(config).eval()
    if variant == "whole forward":
        compiled = torch.compile(Llama.forward, fullgraph=True)
        step = lambda *args: compiled(model, *args)      # noqa: E731
    else:
        step = fast_decode.compile_blocks(model)
    with torch.no_grad():
        cache = model.new_cache(1, 64)
        model(torch.randint(0, 512, (1, 20)), cache, torch.arange(20))      # a prefill (compiled for blocks)
        for n_tokens in (1, 5):                         # a decode step, then a verify of 5 tokens
            started = time.perf_counter()
            step(torch.randint(0, 512, (1, n_tokens)), cache, torch.arange(20, 20 + n_tokens))
            print(f"{variant}: first call with {n_tokens} token(s) {time.perf_counter() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="run this variant alone, in this process (the script runs each so)")
    args = parser.parse_args()
    if args.variant:
        return one_variant(args.variant)
    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, 32 layers")
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory() as cache_dir:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
            started = time.perf_counter()
            subprocess.run([sys.executable, os.path.abspath(__file__), "--variant", variant], env=env, check=True)
            print(f"{variant}: whole process {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
