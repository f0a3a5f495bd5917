"""Where a speculative block's time goes at SmolLM2's shapes on one GPU, piece by piece (random weights).

    python tools/profile_smollm2.py --draft cut:4

SmolLM2-135M and a draft (--draft: a model preset, or cut:N for SmolLM2's own shape with N blocks,
train.py --init-layers N) with random bf16 weights on the decode path fused+compile+graphs, 256
tokens in the caches: each piece of one speculative block (gamma 4) recorded as a CUDA graph and
replayed alone (GPU ms), with its kernel count from torch.profiler (run without the graph); the
whole block and the plain decoder's step as the decoders record them, at T=0 (argmaxes) and T=1;
both replayed with a synchronisation after each, as the decoders run them; and the two
decoders' own loops on one prompt in the same process. --shortlist K gives the draft a head over
K tokens (fast_decode.shortlist_head). Needs a CUDA GPU; no download.
Recorded in results/bench/profile_smollm2*.log (one H100) and results/smollm2-gpu/profile.log (one H200).
"""

import argparse
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules

GAMMA, CONTEXT = 4, 256


def gpu_ms(fn) -> float:
    """Median GPU ms of one replay of fn recorded as a CUDA graph (bench.cuda_time: 3 warm-ups,
    50 repeats, CUDA-event timings)."""
    import fast_decode
    from bench import cuda_time
    return cuda_time(fast_decode.CudaGraph(fn), repeats=50) * 1e3


def synced_ms(fn, repeats: int = 50) -> tuple[float, float]:
    """fn recorded as a CUDA graph and replayed as the decoders replay their recordings, each
    replay followed by a synchronisation (the host reads every block's or token's result before
    it launches the next): the median wall ms of replay + synchronisation, and the median host
    ms of the replay call alone (the launch)."""
    import torch

    import fast_decode
    graph = fast_decode.CudaGraph(fn)
    for _ in range(3):
        graph()
    torch.cuda.synchronize()
    walls, launches = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        graph()
        launched = time.perf_counter()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - started)
        launches.append(launched - started)
    return sorted(walls)[repeats // 2] * 1e3, sorted(launches)[repeats // 2] * 1e3


def kernels_per_call(fn) -> int:
    from bench import kernel_counts
    return sum(kernel_counts(fn).values())


def random_model(preset: str, dtype=None):
    import torch

    from model import Llama, get_config
    torch.manual_seed(0)
    config = (replace(get_config("smollm2-135m"), n_layers=int(preset[4:])) if preset.startswith("cut:")
              else get_config(preset))
    with torch.device("cuda"):
        return Llama(config).to(dtype or torch.bfloat16).eval()


def block_pieces(draft_name: str = "smollm2-draft-4l", shortlist: int | None = None) -> None:
    import torch

    import fast_decode
    from speculative import Decoder, SpeculativeDecoder, decode_step, sample, sample_probs, verify
    torch.set_grad_enabled(False)                 # inference only, as under torch.no_grad()
    target, draft = random_model("smollm2-135m"), random_model(draft_name)
    if shortlist:
        fast_decode.shortlist_head(draft, list(range(shortlist)))
        draft_name += f" over a {shortlist}-token shortlist"
    fast_decode.apply_decode_path([target, draft], "fused+compile+graphs")
    V = target.config.vocab_size
    slots = CONTEXT + GAMMA + 4
    caches = {"target": target.new_cache(1, slots), "draft": draft.new_cache(1, slots)}
    fill = torch.randint(0, V, (1, CONTEXT), device="cuda")
    for name, model in (("target", target), ("draft", draft)):
        model(fill, caches[name], torch.arange(CONTEXT, device="cuda"))
    generator = None          # torch's default CUDA generator: a recording needs no registration for it
    logits_1 = torch.randn(1, V, device="cuda", dtype=torch.bfloat16)
    logits_5 = torch.randn(GAMMA + 1, V, device="cuda", dtype=torch.bfloat16)
    draft_tokens = torch.randint(0, V, (GAMMA,), device="cuda")
    draft_probs = torch.softmax(torch.randn(GAMMA, V, device="cuda"), -1)
    target_probs = torch.softmax(torch.randn(GAMMA + 1, V, device="cuda"), -1)

    def model_call(name, model, n):
        tokens = torch.randint(0, V, (1, n), device="cuda")
        positions = torch.arange(CONTEXT, CONTEXT + n, device="cuda")
        return lambda: model(tokens, caches[name], positions)

    pieces = {
        "target step (1 token)": model_call("target", target, 1),
        "target verify (5 tokens)": model_call("target", target, GAMMA + 1),
        "draft step (1 token)": model_call("draft", draft, 1),
        "draft first step (2 tokens)": model_call("draft", draft, 2),
        "sampling one token, T=1 (softmax + draw)": lambda: sample(sample_probs(logits_1, 1.0), generator),
        "target probabilities, 5 rows, T=1": lambda: sample_probs(logits_5, 1.0),
        "acceptance test + residual draw": lambda: verify(draft_tokens, draft_probs, target_probs, generator),
    }
    print(f"\n(a) SmolLM2-135M + {draft_name}, fused+compile+graphs, random bf16 weights, {CONTEXT} "
          f"tokens in the caches; each piece recorded and replayed alone")
    print("| piece | kernels | GPU ms (graph replay) |\n|---|---|---|")
    ms = {}
    for name, fn in pieces.items():
        ms[name] = gpu_ms(fn)
        print(f"| {name} | {kernels_per_call(fn)} | {ms[name]:.3f} |", flush=True)
    # The whole block and the plain step, as the decoders record them.
    speculative = SpeculativeDecoder(target, draft, slots, graphs=True)
    speculative.tokens[0, :CONTEXT] = fill[0]
    speculative.length.fill_(CONTEXT)
    plain_decoder = Decoder(target, 1, slots, graphs=True)
    plain_decoder.tokens[0, :CONTEXT] = fill[0]
    wholes, synced = {}, {}
    for temperature in (0.0, 1.0):    # at T=0 the decoders take argmaxes (speculative.verify_greedy)
        sampling = (temperature, None, None)
        block = lambda: (speculative.length.fill_(CONTEXT), speculative.block(GAMMA, sampling, generator))  # noqa: E731
        step = lambda: (plain_decoder.length.fill_(CONTEXT), decode_step(plain_decoder.model, plain_decoder.tokens, plain_decoder.cache, plain_decoder.length, sampling, generator))  # noqa: E731
        wholes[temperature] = gpu_ms(block), gpu_ms(step)
        print(f"| one whole block (gamma {GAMMA}), T={temperature:g} | {kernels_per_call(block)} | "
              f"{wholes[temperature][0]:.3f} |")
        print(f"| one plain decoding step (Decoder.step), T={temperature:g} | {kernels_per_call(step)} | "
              f"{wholes[temperature][1]:.3f} |")
        synced[temperature] = synced_ms(block), synced_ms(step)
    for temperature, ((block_wall, block_launch), (step_wall, step_launch)) in synced.items():
        print(f"T={temperature:g}, replayed with a synchronisation after each (as the decoders run them): "
              f"block {block_wall:.3f} ms (launch {block_launch:.3f} ms of host time), plain step "
              f"{step_wall:.3f} ms (launch {step_launch:.3f}); block / plain step {block_wall / step_wall:.2f}")
    # The same recordings in the decoders' own loops, same process, same caches: a prompt of
    # CONTEXT - 64 tokens, 64 new ones; wall time of the whole call (its recorded prefill
    # included) per block and per plain step.
    prompt, n_new = fill[0, : CONTEXT - 64].tolist(), 64
    for temperature in (0.0, 1.0):
        speculative.generate(prompt, 8, GAMMA, temperature)                  # records what is new
        plain_decoder.generate([prompt], 8, temperature)
        torch.cuda.synchronize()
        started = time.perf_counter()
        blocks = len(speculative.generate(prompt, n_new, GAMMA, temperature)[1]["accepted_per_block"])
        block_ms = (time.perf_counter() - started) * 1e3 / blocks            # generate synchronises at its end
        started = time.perf_counter()
        plain_decoder.generate([prompt], n_new, temperature)
        step_ms = (time.perf_counter() - started) * 1e3 / n_new
        print(f"T={temperature:g}, in the decoders' loops ({len(prompt)}-token prompt, {n_new} new tokens, "
              f"{blocks} blocks): {block_ms:.3f} ms per block, {step_ms:.3f} per plain step; "
              f"block / plain step {block_ms / step_ms:.2f}")
    whole = wholes[1.0][0]
    parts = (ms["draft first step (2 tokens)"] + (GAMMA - 1) * ms["draft step (1 token)"]
             + GAMMA * ms["sampling one token, T=1 (softmax + draw)"] + ms["target verify (5 tokens)"]
             + ms["target probabilities, 5 rows, T=1"] + ms["acceptance test + residual draw"])
    plain = ms["target step (1 token)"] + ms["sampling one token, T=1 (softmax + draw)"]
    print(f"sum of the block's pieces {parts:.3f} ms; plain token (step + sampling) {plain:.3f} ms; "
          f"block / plain token {whole / plain:.2f}: the block efficiency tau at which speculative decoding "
          f"breaks even; 2x needs tau {2 * whole / plain:.2f}")
    for temperature, (block_ms, step_ms) in wholes.items():
        print(f"T={temperature:g}, as the decoders record them: block / plain step {block_ms / step_ms:.2f}; "
              f"2x needs tau {2 * block_ms / step_ms:.2f}")
    layers = target.config.n_layers
    print(f"target: {layers} layers, {ms['target step (1 token)'] / layers * 1e3:.1f} us per layer per step; "
          f"verify / step = {ms['target verify (5 tokens)'] / ms['target step (1 token)']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draft", default="smollm2-draft-4l", help="a model preset, or cut:N (SmolLM2's first N blocks)")
    parser.add_argument("--shortlist", type=int, default=None, help="give the draft a head over this many tokens")
    args = parser.parse_args()
    import torch                                  # after the flags: --help needs no torch
    print(torch.cuda.get_device_name(), "| torch", torch.__version__)
    block_pieces(args.draft, args.shortlist)


if __name__ == "__main__":
    main()
