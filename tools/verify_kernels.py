"""Why a 5-token verify of SmolLM2 costs more than a 1-token step on one GPU: their kernels, by name.

    python tools/verify_kernels.py

SmolLM2-135M with random bf16 weights on fused+compile+graphs, 256 tokens in the cache: the
kernels of one call of each (torch.profiler), those whose counts differ listed by name; then
both calls recorded and replayed with the attention mask as Llama.cache_inputs makes it (an
additive float mask, 0 / -inf in the cache's dtype, made once per call) and as the boolean mask
of KVCache.attention_mask that the code passed before, each with caches of a few slot counts
(the attention kernels may pad the key length); last, the additive mask with each of
scaled_dot_product_attention's backends allowed alone (torch.nn.attention.sdpa_kernel, the blocks
compiled anew under it, since the compiled graph fixes the backend it traced), those that take
these calls timed, with their verify logits' largest difference from the default backend's and
the attention kernels the verify ran.
Needs a CUDA GPU. Recorded in results/bench/verify_kernels.log.
"""
import argparse
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules

CONTEXT = 256


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import torch                                  # after the flags: --help needs no torch

    import fast_decode
    import model as model_module
    from bench import cuda_time, kernel_counts
    from model import Llama, get_config

    torch.manual_seed(0)
    with torch.device("cuda"):
        target = Llama(get_config("smollm2-135m")).to(torch.bfloat16).eval()
    fast_decode.apply_decode_path([target], "fused+compile+graphs")
    additive = model_module.Llama.cache_inputs

    def boolean(self, cache, input_pos):                  # the mask as SDPA got it before
        positions = cache.positions(input_pos)
        return self.rope_cos[positions], self.rope_sin[positions], cache.attention_mask(input_pos)

    def calls(slots: int):
        torch.manual_seed(0)                              # the same tokens in every call
        cache = target.new_cache(1, slots)
        with torch.no_grad():
            target(torch.randint(0, 49152, (1, CONTEXT), device="cuda"), cache, torch.arange(CONTEXT, device="cuda"))
        made = {n: (torch.randint(0, 49152, (1, n), device="cuda"), torch.arange(CONTEXT, CONTEXT + n, device="cuda"))
                for n in (1, 5)}
        return {n: (lambda tokens=tokens, where=where: target(tokens, cache, where)) for n, (tokens, where) in made.items()}

    with torch.no_grad():
        print_kernels(calls(CONTEXT + 8))
        for label, inputs in (("additive float mask (Llama.cache_inputs)", additive), ("boolean mask", boolean)):
            target.cache_inputs = torch.compile(types.MethodType(inputs, target), fullgraph=True)  # as compile_blocks does
            torch._dynamo.reset()
            for slots in (CONTEXT + 8, CONTEXT + 16, CONTEXT + 64):
                call = calls(slots)
                ms = {n: cuda_time(fast_decode.CudaGraph(call[n]), repeats=50) * 1e3 for n in (1, 5)}
                print(f"{label}, {slots} slots: recorded 1-token step {ms[1]:.3f} ms, 5-token verify {ms[5]:.3f} ms "
                      f"({ms[5] / ms[1]:.2f}x); kernels {sum(kernel_counts(call[1]).values())} / "
                      f"{sum(kernel_counts(call[5]).values())}", flush=True)
        target.cache_inputs = torch.compile(types.MethodType(additive, target), fullgraph=True)
        compare_backends(calls)


def print_kernels(call) -> None:
    """The kernels of a 1-token call and of a 5-token one: how many, and those whose counts differ."""
    from bench import kernel_counts
    names = {n: kernel_counts(call[n]) for n in (1, 5)}
    print(f"kernels per call: 1 token {sum(names[1].values())}, 5 tokens {sum(names[5].values())}")
    for name in sorted(set(names[1]) | set(names[5]), key=lambda k: names[5][k] - names[1][k]):
        if names[1][name] != names[5][name]:
            print(f"  {names[1][name]:4d} -> {names[5][name]:4d}  {name[:150]}")


def compare_backends(calls) -> None:
    """The recorded step and verify with each SDPA backend allowed alone. Why: the verify's extra
    kernels (a memset and a copy per layer) come with cuDNN's kernel for more than one query; a
    backend whose 5-query kernel is its 1-query one might not need them. A backend that cannot
    take a call (a mask, grouped-query heads) raises, and is reported with torch's error (its
    warnings before it say why). For each backend that runs, the attention kernels the verify ran
    are named: a restriction that did not reach the compiled graph shows as another backend's
    kernels."""
    from contextlib import nullcontext

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import fast_decode
    from bench import cuda_time, kernel_counts

    reference = None
    for backend in (None, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        label = "default backend" if backend is None else backend.name
        torch._dynamo.reset()                     # trace anew: the backend is chosen while tracing
        try:
            with sdpa_kernel(backend) if backend is not None else nullcontext():
                call = calls(CONTEXT + 8)
                logits = call[5]().float()                                        # (1, 5, vocab)
                ms = {n: cuda_time(fast_decode.CudaGraph(call[n]), repeats=50) * 1e3 for n in (1, 5)}
                reference = logits if reference is None else reference
                print(f"{label}: recorded 1-token step {ms[1]:.3f} ms, 5-token verify {ms[5]:.3f} ms "
                      f"({ms[5] / ms[1]:.2f}x); verify logits differ from the default's by at most "
                      f"{(logits - reference).abs().max().item():.3g}", flush=True)
                print_kernels(call)
                ran = sorted(name for name in kernel_counts(call[5])
                             if any(part in name.lower() for part in ("sdpa", "attention", "fmha", "flash")))
                print(f"  the verify's attention kernels: {', '.join(name[:100] for name in ran) or 'none by name'}")
        except RuntimeError as error:             # torch.compile quotes the backend's own error after "got "
            reason = str(error).split("got ", 1)[-1].strip().splitlines()[0]
            print(f"{label}: cannot take these calls ({reason[:200]})", flush=True)


if __name__ == "__main__":
    main()
