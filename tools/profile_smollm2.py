"""Where a speculative block's time goes at SmolLM2's shapes on one GPU, piece by piece (random weights).

    python tools/profile_smollm2.py --draft cut:4

SmolLM2-135M and a draft (--draft: a model preset, or cut:N for SmolLM2's own shape with N blocks,
train.py --init-layers N) with random bf16 weights on the decode path fused+compile+graphs, 256
tokens in the caches: each piece of one speculative block (gamma 4) recorded as a CUDA graph and
replayed alone (GPU ms), with its kernel count from torch.profiler (run without the graph); the
whole block and the plain decoder's step as the decoders record them, at T=0 (argmaxes) and T=1,
the sampling compiled as this path runs it (speculative.Sampler) and, at T=1, eager; both
replayed with a synchronisation after each; and the two decoders' own loops on one prompt in
the same process (plain decoding with and without a stop token, and gamma auto held to plain
steps), reading each iteration after the next is launched, as the decoders do on a GPU, and before.
--shortlist K gives the draft a head over K tokens (fast_decode.shortlist_head). Needs a CUDA GPU; no download.
Recorded in results/bench/profile_smollm2*.log and in the profile*.log files under results/smollm2-gpu/.
"""

import argparse
import math
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
    """fn recorded as a CUDA graph and replayed, each replay followed by a synchronisation, as a
    loop that reads every result before it launches the next runs it (run_ahead 0): the median
    wall ms of replay + synchronisation, and the median host ms of the replay call alone (the
    launch, which a loop reading one iteration late hides behind the GPU's work)."""
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
    from bench import wall_time
    from speculative import EAGER, Decoder, Sampler, SpeculativeDecoder, decode_step, sample_token, verify_draws
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
    }
    # The sampling pieces as this path runs them (compiled: speculative.Sampler) and eagerly.
    for sampler, suffix in ((Sampler("inductor"), ""), (EAGER, ", eager")):
        pieces.update({
            f"sampling one token, T=1 (draw: exponentials, then logits - log E's argmax){suffix}":
                lambda s=sampler: sample_token(logits_1, (1.0, None, None), generator, s),
            f"draft probabilities q, 4 rows, T=1{suffix}": lambda s=sampler: s.probs(logits_5[:GAMMA], 1.0),
            f"target probabilities p, 5 rows, T=1{suffix}": lambda s=sampler: s.probs(logits_5, 1.0),
            f"acceptance test + residual draw{suffix}": lambda s=sampler: s.verify(
                draft_tokens, draft_probs, target_probs, *verify_draws(target_probs, generator)),
        })
    print(f"\n(a) SmolLM2-135M + {draft_name}, fused+compile+graphs, random bf16 weights, {CONTEXT} "
          f"tokens in the caches; each piece recorded and replayed alone")
    print("| piece | kernels | GPU ms (graph replay) |\n|---|---|---|")
    ms = {}
    for name, fn in pieces.items():
        ms[name] = gpu_ms(fn)
        print(f"| {name} | {kernels_per_call(fn)} | {ms[name]:.3f} |", flush=True)
    # The whole block and the plain step, as the decoders record them on this path (sampling
    # compiled, speculative.Sampler), and at T=1 also with the sampling left eager.
    decoders = {}
    for compiled in (True, False):
        speculative = SpeculativeDecoder(target, draft, slots, graphs=True, compile_sampling=compiled)
        speculative.tokens[0, :CONTEXT] = fill[0]
        plain_decoder = Decoder(target, 1, slots, graphs=True, compile_sampling=compiled)
        plain_decoder.tokens[0, :CONTEXT] = fill[0]
        decoders[compiled] = speculative, plain_decoder
    # label -> (temperature, sampling compiled); T=0 takes argmaxes, with nothing to compile
    cases = {"T=0": (0.0, True), "T=1": (1.0, True), "T=1, eager sampling": (1.0, False)}
    wholes, synced = {}, {}
    for label, (temperature, compiled) in cases.items():
        speculative, plain_decoder = decoders[compiled]
        sampling = (temperature, None, None)
        block = lambda: (speculative.length.fill_(CONTEXT), speculative.block(GAMMA, sampling, generator))  # noqa: E731
        step = lambda: (plain_decoder.length.fill_(CONTEXT), decode_step(plain_decoder.model, plain_decoder.tokens, plain_decoder.cache, plain_decoder.length, sampling, generator, plain_decoder.sampler))  # noqa: E731
        wholes[label] = gpu_ms(block), gpu_ms(step)
        print(f"| one whole block (gamma {GAMMA}), {label} | {kernels_per_call(block)} | {wholes[label][0]:.3f} |")
        print(f"| one plain decoding step (Decoder.step), {label} | {kernels_per_call(step)} | {wholes[label][1]:.3f} |")
        synced[label] = synced_ms(block), synced_ms(step)
    for label, ((block_wall, block_launch), (step_wall, step_launch)) in synced.items():
        print(f"{label}, replayed with a synchronisation after each: "
              f"block {block_wall:.3f} ms (launch {block_launch:.3f} ms of host time), plain step "
              f"{step_wall:.3f} ms (launch {step_launch:.3f}); block / plain step {block_wall / step_wall:.2f}")
    # The same recordings in the decoders' own loops, same process, same caches: a prompt of
    # CONTEXT - 96 tokens, then the time of a call with SHORT new tokens subtracted from one with
    # LONG, per block and per plain step, so that what a call pays once (its recorded prefill,
    # the copies in and out) is not shared among its blocks -- at T=1 a block keeps more tokens
    # than at T=0, so a call has fewer blocks to share it. With a stop token, as evaluate.py
    # decodes: both loops then read every token or block, plain decoding after every token. The
    # stop id is one past the vocabulary, which no model can draw: every call makes all its
    # tokens. Plain decoding also runs without stop ids, reading nothing, so the difference is
    # what reading every token costs. And gamma "auto" held to plain steps (a block margin no
    # block can beat): the speculative loop's plain step with the loop's bookkeeping, what auto
    # pays where no block pays, against plain decoding. All of it twice: reading each iteration
    # after the next is launched (run_ahead 1, the decoders' default on a GPU), and before
    # (run_ahead 0: the GPU idles while the host reads, decides and launches).
    prompt, short, long, stop = fill[0, : CONTEXT - 96].tolist(), 16, 80, (V,)
    loops = {}
    for label, (temperature, compiled) in cases.items():
        speculative, plain_decoder = decoders[compiled]
        speculative.generate(prompt, 8, GAMMA, temperature)                  # records what is new
        plain_decoder.generate([prompt], 8, temperature)
        speculative.measure_costs(prompt, temperature, max_gamma=GAMMA)     # records the rest for "auto"
        speculative.block_margin = math.inf
        speculative.generate(prompt, 8, "auto", temperature)
        blocks = {}                                                          # n_new -> blocks of the last call

        def run_speculative(n_new):
            blocks[n_new] = len(speculative.generate(prompt, n_new, GAMMA, temperature, stop_ids=stop)[1]
                                ["accepted_per_block"])

        for run_ahead in (1, 0):
            speculative.steps.run_ahead = plain_decoder.steps.run_ahead = run_ahead
            per_block, per_step, per_unasked_step, per_auto_step = [], [], [], []
            for _ in range(5):                                               # the median of 5
                seconds = {}
                for n_new in (short, long):
                    seconds[n_new] = wall_time(lambda: run_speculative(n_new))
                    seconds["plain", n_new] = wall_time(lambda: plain_decoder.generate([prompt], n_new, temperature,
                                                                                       stop_ids=stop))
                    seconds["unasked", n_new] = wall_time(lambda: plain_decoder.generate([prompt], n_new, temperature))
                    seconds["auto", n_new] = wall_time(lambda: speculative.generate(prompt, n_new, "auto", temperature,
                                                                                    stop_ids=stop))
                per_block.append((seconds[long] - seconds[short]) * 1e3 / (blocks[long] - blocks[short]))
                per_step.append((seconds["plain", long] - seconds["plain", short]) * 1e3 / (long - short))
                per_unasked_step.append((seconds["unasked", long] - seconds["unasked", short]) * 1e3 / (long - short))
                per_auto_step.append((seconds["auto", long] - seconds["auto", short]) * 1e3 / (long - short))
            block_ms, step_ms, auto_ms = sorted(per_block)[2], sorted(per_step)[2], sorted(per_auto_step)[2]
            if run_ahead:
                loops[label] = block_ms, step_ms
                where = f"in the decoders' loops ({len(prompt)}-token prompt, {long} against {short} new tokens)"
            else:
                where = "in the loops, each iteration read before the next is launched (run_ahead 0)"
            print(f"{label}, {where}: {block_ms:.3f} ms per block, {step_ms:.3f} per plain step; block / plain step "
                  f"{block_ms / step_ms:.2f}; a plain step without stop ids (nothing read) "
                  f"{sorted(per_unasked_step)[2]:.3f} ms; gamma auto's plain step {auto_ms:.3f} ms, "
                  f"{auto_ms / step_ms:.3f}x plain decoding's")
        speculative.steps.run_ahead = plain_decoder.steps.run_ahead = 1
    for where, times in (("as recorded", wholes), ("in the loops", loops)):
        print(f"T=1 block / T=0 block, {where}: {times['T=1'][0] / times['T=0'][0]:.3f} "
              f"({times['T=1, eager sampling'][0] / times['T=0'][0]:.3f} with eager sampling)")
    whole = wholes["T=1"][0]
    draw = ms["sampling one token, T=1 (draw: exponentials, then logits - log E's argmax)"]
    parts = (ms["draft first step (2 tokens)"] + (GAMMA - 1) * ms["draft step (1 token)"] + GAMMA * draw
             + ms["draft probabilities q, 4 rows, T=1"] + ms["target verify (5 tokens)"]
             + ms["target probabilities p, 5 rows, T=1"] + ms["acceptance test + residual draw"])
    plain = ms["target step (1 token)"] + draw
    print(f"sum of the block's pieces {parts:.3f} ms; plain token (step + sampling) {plain:.3f} ms; "
          f"block / plain token {whole / plain:.2f}: the block efficiency tau at which speculative decoding "
          f"breaks even; 2x needs tau {2 * whole / plain:.2f}")
    for label, (block_ms, step_ms) in wholes.items():
        print(f"{label}, as the decoders record them: block / plain step {block_ms / step_ms:.2f}; "
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
