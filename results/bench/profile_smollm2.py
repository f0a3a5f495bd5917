"""Where the time goes at SmolLM2's shapes on one GPU (random bf16 / float32 weights, no download):

  (a) one speculative block (gamma 4) of SmolLM2-135M + a 4-layer draft on the decode path
      fused+compile+graphs, taken apart: each piece recorded as a CUDA graph and replayed
      alone (GPU ms), with its kernel count from torch.profiler (run without the graph);
  (b) one distillation step of train.py at the smollm2 preset's shapes (teacher forward, draft
      forward, KLD loss, backward, optimizer), each piece timed with synchronizations.

    PYTHONPATH=. python results/bench/profile_smollm2.py | tee results/bench/profile_smollm2.log

Options (added in the fifth session; the defaults are the run above): --draft cut:N for a draft of
SmolLM2's own shape with N blocks (train.py --init-layers N), --shortlist K to give the draft a
fast_decode.ShortlistHead over K tokens, --block-only to skip (b). Since 2026-12-03 (a) also
records the whole block and the plain decoder's step at T=0, where both take argmaxes; since
2026-12-04 it also replays both as the decoders do, with a synchronisation after each (synced_ms),
and times the two decoders' own loops on one prompt in the same process.
"""

import argparse
import time
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

import fast_decode
from bench import cuda_time
from losses import get_loss
from model import Llama, get_config
from speculative import Decoder, SpeculativeDecoder, sample, sample_probs, verify
from train import make_optimizer, objective

GAMMA, CONTEXT = 4, 256


def gpu_ms(fn) -> float:
    """Median GPU ms of one replay of fn recorded as a CUDA graph. (As run on 2026-12-02 this
    function held its own copy of bench.cuda_time's loop: the same 3 warm-ups, 50 repeats and
    median of CUDA-event timings.)"""
    return cuda_time(fast_decode.CudaGraph(fn), repeats=50) * 1e3


def synced_ms(fn, repeats: int = 50) -> tuple[float, float]:
    """fn recorded as a CUDA graph and replayed as the decoders replay their recordings, each
    replay followed by a synchronisation (the host reads every block's or token's result before
    it launches the next): the median wall ms of replay + synchronisation, and the median host
    ms of the replay call alone (the launch)."""
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
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.self_device_time_total > 0)     # the kernels


def random_model(preset: str, dtype=torch.bfloat16) -> Llama:
    torch.manual_seed(0)
    config = (replace(get_config("smollm2-135m"), n_layers=int(preset[4:])) if preset.startswith("cut:")
              else get_config(preset))
    with torch.device("cuda"):
        return Llama(config).to(dtype).eval()


@torch.no_grad()
def block_pieces(draft_name: str = "smollm2-draft-4l", shortlist: int | None = None) -> None:
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
        step = lambda: (plain_decoder.length.fill_(CONTEXT), plain_decoder.step(sampling, generator))  # noqa: E731
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


def distill_step_pieces(batch: int = 64, length: int = 256, answer: int = 160) -> None:
    """train.py's distillation step at the smollm2 preset's shapes, piece by piece (float32
    weights, bf16 autocast, as train.py runs it)."""
    teacher = random_model("smollm2-135m", torch.float32).requires_grad_(False)
    draft = random_model("smollm2-draft-4l", torch.float32).train()
    optimizer = make_optimizer(draft, 1e-3, 0.1)
    loss_fn = get_loss("kld")
    V = teacher.config.vocab_size
    inputs = torch.randint(0, V, (batch, length), device="cuda")
    targets = torch.randint(0, V, (batch, length), device="cuda")
    mask = torch.zeros(batch, length, dtype=torch.bool, device="cuda")
    mask[:, length - answer:] = True
    keep = mask.flatten().nonzero().squeeze(1)   # train.objective takes the trained positions' indices (since 2026-12-03b)
    generator = torch.Generator("cuda").manual_seed(0)

    def timed(fn, repeats: int = 5) -> tuple[float, object]:
        out = fn()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) / repeats * 1e3, out

    autocast = lambda: torch.autocast("cuda", torch.bfloat16)  # noqa: E731
    with torch.no_grad(), autocast():
        teacher_ms, target_logits = timed(lambda: teacher(inputs))
    with autocast():
        draft_ms, _ = timed(lambda: draft(inputs))

    def forward_and_loss():
        with autocast():
            return loss_fn(draft(inputs), target_logits, targets, mask, generator=generator)
    loss_ms, _ = timed(forward_and_loss)

    def whole_step():
        with autocast():
            loss = objective(draft, teacher, loss_fn, inputs, targets, keep, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step_ms, _ = timed(whole_step)
    tokens = batch * length
    print(f"\n(b) one distillation step (KLD), batch {batch} x {length} tokens, loss on the last {answer} "
          f"of each; V = {V}; float32 weights under bf16 autocast, as train.py")
    print("| piece | ms |\n|---|---|")
    print(f"| teacher forward (SmolLM2-135M, logits of every position) | {teacher_ms:.1f} |")
    print(f"| draft forward | {draft_ms:.1f} |")
    print(f"| draft forward + KLD loss | {loss_ms:.1f} |")
    print(f"| whole step (teacher, draft, loss, backward, clip, AdamW) | {step_ms:.1f} |")
    print(f"{tokens / step_ms * 1e3:,.0f} padded tokens/s; the logits alone are {tokens * V:,} numbers per model "
          f"({tokens * V * 2 / 1e9:.1f} GB in bf16)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--draft", default="smollm2-draft-4l", help="a model preset or cut:N")
    parser.add_argument("--shortlist", type=int, default=None)
    parser.add_argument("--block-only", action="store_true")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), "| torch", torch.__version__)
    block_pieces(args.draft, args.shortlist)
    if not args.block_only:
        distill_step_pieces()
