"""
bench.py: where the time goes on one GPU, measured side by side in one run.

    python bench.py --section shapes            # random bf16 weights at the paper's shapes
    python bench.py --section pair --run runs/gpu   # the pair trained by PRESET=gpu bash run.sh

--section shapes
  1. decode latency per token at batch 1 (llama2-7b and drafter-115m shapes) and the verify
     latency for gamma+1 tokens on each decode path of MODES (eager; CUDA graphs; torch.compile +
     CUDA graphs; the same with fused projections, Llama.fuse_projections), each as a
     fraction of its bandwidth floor (bytes of weights + KV cache read, over the measured copy
     bandwidth): the floor is what a perfect kernel could do, since batch-1 decoding is
     memory bound.
  2. the speed-up projected for block efficiency 2.3 at gamma 3, 4, 5 from those measured
     costs, beside MBSU (which assumes time proportional to parameters read).
  5a. training throughput of the drafter-115m shape (tokens/s and MFU against the measured
     bf16 matmul peak).
--section pair
  3. real speculative decoding with the trained pair: tokens/s of speculative_generate vs
     generate (greedy and T=1) on each decode path of MODES, measured tau, MBSU, and
     speed-up / MBSU; and on how many of 4 prompts each fast path gives the eager path's
     greedy tokens (printed: bf16 near-ties may differ).
  4. the same pair through Hugging Face transformers (export_hf): generate(assistant_model=...)
     vs ours at the same gamma, and plain transformers decoding. transformers is not a
     dependency of this project: install it only where this benchmark runs.
  5b. distillation-data generation: batched vs one prompt at a time (tokens/s).
--section profile
  Where a decode step's time goes, from torch.profiler: (a) the llama2-7b step's GPU kernels
  by kind (matrix products, attention, fused element-wise, other), with the bandwidth the
  matrix products reach, with and without fused projections; (b) for the GPU-preset pair's
  shapes, the wall time of a token and of a speculative block against the GPU time of their
  CUDA graphs, and the host-side operations that fill the difference.
Every number is printed as a markdown table and saved as JSON (--out).
"""

import argparse
import json
import os
import tempfile
import time

import torch

from model import Llama, count_params, export_hf, get_config, load_model
from speculative import generate, generate_batch, memory_bound_speedup, speculative_generate


def cuda_time(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of fn() timed with CUDA events (device work is asynchronous)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def measure_ceilings() -> dict:
    """Copy bandwidth (bytes read + written per second) and bf16 matmul rate, measured here."""
    src = torch.randn(2 ** 30 // 2, device="cuda", dtype=torch.bfloat16)       # 1 GiB
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 2 / cuda_time(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    flops = 2 * 8192 ** 3 / cuda_time(lambda: a @ b)
    del src, dst, a, b
    return {"bandwidth_GBps": bandwidth / 1e9, "bf16_matmul_TFLOPs": flops / 1e12}


# The decode paths compared everywhere below, from the readable default to the fastest.
MODES = ("eager", "graphs", "compile+graphs", "fused+compile+graphs")


def prepare(model: Llama, mode: str) -> Llama:
    """Put a model (already on the GPU, in its dtype) on one of the decode paths of MODES."""
    if "fused" in mode:
        model.fuse_projections()
    if mode != "eager":
        model.enable_cuda_graphs(compile="compile" in mode)
    return model


def decode_costs(preset: str, mode: str, gamma: int, context: int, ceilings: dict) -> dict:
    """Seconds per 1-token decode step and per (gamma+1)-token verify step at `context` filled slots."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = prepare(Llama(get_config(preset)).to(torch.bfloat16).eval(), mode)
    cache = model.new_cache(1, context + gamma + 2)
    with torch.no_grad():
        model(torch.randint(0, model.config.vocab_size, (1, context), device="cuda"), cache,
              torch.arange(context, device="cuda"))                                      # prefill
        one, many = (torch.randint(0, model.config.vocab_size, (1, n), device="cuda") for n in (1, gamma + 1))
        pos_one = torch.tensor([context], device="cuda")
        pos_many = torch.arange(context, context + gamma + 1, device="cuda")
        decode = cuda_time(lambda: model(one, cache, pos_one), repeats=50)
        verify = cuda_time(lambda: model(many, cache, pos_many), repeats=50)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cache_bytes = sum(t.numel() * t.element_size() for t in cache.k + cache.v)   # attention reads every slot
    floor = (weight_bytes + cache_bytes) / (ceilings["bandwidth_GBps"] * 1e9)
    result = {"preset": preset, "mode": mode, "params": count_params(model), "decode_ms": decode * 1e3,
              "verify_ms": verify * 1e3, "floor_ms": floor * 1e3, "decode_fraction_of_floor": floor / decode}
    del model, cache
    torch.cuda.empty_cache()
    return result


def training_throughput(ceilings: dict, batch: int = 16, length: int = 1024, steps: int = 10) -> dict:
    """drafter-115m training step (bf16 autocast, fused AdamW, torch.compile): tokens/s and MFU."""
    torch.manual_seed(0)
    config = get_config("drafter-115m")
    model = Llama(config).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    compiled = torch.compile(model)
    tokens = torch.randint(0, config.vocab_size, (batch, length + 1), device="cuda")

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            logits = compiled(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = cuda_time(step, repeats=steps, warmup=3)
    tokens_per_s = batch * length / seconds
    # FLOPs per token: 6 per parameter (forward 2, backward 4), plus attention scores and
    # weighted values: 6 * 2 * n_layers * length * dim / 2 with causal masking (half the pairs).
    flops_per_token = 6 * count_params(model) + 6 * config.n_layers * length * config.dim
    mfu = tokens_per_s * flops_per_token / (ceilings["bf16_matmul_TFLOPs"] * 1e12)
    return {"tokens_per_s": tokens_per_s, "mfu": mfu, "batch": batch, "length": length}


def section_shapes(args) -> dict:
    ceilings = measure_ceilings()
    print(f"measured: copy bandwidth {ceilings['bandwidth_GBps']:.0f} GB/s, bf16 matmul {ceilings['bf16_matmul_TFLOPs']:.0f} TFLOP/s")
    rows = []
    for preset in ("llama2-7b", "drafter-115m"):
        for mode in MODES:
            try:
                rows.append(decode_costs(preset, mode, args.gamma, args.context, ceilings))
            except Exception as error:       # report and go on: one failed mode must not cost the run
                print(f"{preset} {mode} failed: {type(error).__name__}: {error}")
    print("\n| shape | mode | decode ms/token | verify ms (gamma+1 tokens) | floor ms | decode / floor |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['mode']} | {r['decode_ms']:.2f} | {r['verify_ms']:.2f} | {r['floor_ms']:.2f} | "
              f"{r['decode_fraction_of_floor']:.0%} |")
    projections = []
    tau = 2.3
    print(f"\nprojected speed-up at block efficiency {tau} (paper's headline) from measured costs")
    print("| mode | gamma | measured-cost speed-up | MBSU |\n|---|---|---|---|")
    for mode in MODES:
        target = next((r for r in rows if r["preset"] == "llama2-7b" and r["mode"] == mode), None)
        draft = next((r for r in rows if r["preset"] == "drafter-115m" and r["mode"] == mode), None)
        if target is None or draft is None:
            continue
        for gamma in (3, 4, 5):
            # one block: gamma draft steps + one verify of gamma+1 tokens yields tau tokens,
            # against tau plain target steps. (Verify cost measured at args.gamma + 1 tokens.)
            block = gamma * draft["decode_ms"] + target["verify_ms"]
            speedup = tau * target["decode_ms"] / block
            mbsu = memory_bound_speedup(target["params"], draft["params"], tau, gamma)
            projections.append({"mode": mode, "gamma": gamma, "speedup": speedup, "mbsu": mbsu})
            print(f"| {mode} | {gamma} | {speedup:.2f}x | {mbsu:.2f}x |")
    training = training_throughput(ceilings)
    print(f"\ndrafter-115m training: {training['tokens_per_s']:,.0f} tokens/s, MFU {training['mfu']:.0%} "
          f"(batch {training['batch']} x {training['length']}, bf16 autocast, torch.compile)")
    return {"ceilings": ceilings, "decode": rows, "projections": projections, "training": training}


def load_prompts(run: str, tok, n: int) -> list[list[int]]:
    from data import load_jsonl_prompts
    from tokenizer import chat_prompt
    records = []
    for task in ("story", "summary", "highlights"):
        records += load_jsonl_prompts(os.path.join(run, "world", f"eval_{task}.jsonl"))[:n]
    return [chat_prompt(tok, r["prompt"], r.get("system")) for r in records]


def timed(fn):
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - started


def section_pair(args) -> dict:
    from tokenizer import load_tokenizer
    tok = load_tokenizer(os.path.join(args.run, "tokenizer.model"))
    prompts = load_prompts(args.run, tok, args.prompts_per_task)
    longest = max(prompts, key=len)
    n_new = args.max_new_tokens
    results = {"speculative": [], "hf": [], "datagen": {}, "greedy_equal_eager": {}}

    def load(name: str, mode: str) -> Llama:
        return prepare(load_model(os.path.join(args.run, name, "model"), "cuda", torch.bfloat16), mode)

    eager_target = load("target", "eager")
    eager_tokens = [generate(eager_target, p, n_new, 0.0).tolist() for p in prompts[:4]]
    del eager_target
    print(f"\n{len(prompts)} prompts, {n_new} new tokens each (no EOS stop, so every run makes the same count)")
    print("| mode | T | plain tok/s | speculative tok/s | speed-up | tau | MBSU | speed-up / MBSU | greedy tokens equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        target, draft = load("target", mode), load(f"draft-{args.draft}", mode)
        # Warm-up, untimed: the longest prompt first, so that a graphed model allocates its one
        # KV cache at the largest size needed here (a later, longer prompt would allocate a new
        # one and record its graphs, and compile them again, inside the timed runs).
        for temperature in (0.0, 1.0):
            generate(target, longest, n_new, temperature)
            speculative_generate(target, draft, longest, n_new, args.gamma, temperature)
        for temperature in (0.0, 1.0):
            plain_s = spec_s = 0.0
            taus, same = [], 0
            for i, prompt in enumerate(prompts):
                g = torch.Generator("cuda").manual_seed(i)
                plain, seconds = timed(lambda: generate(target, prompt, n_new, temperature, generator=g))
                g = torch.Generator("cuda").manual_seed(i)
                (spec, stats), spec_seconds = timed(lambda: speculative_generate(
                    target, draft, prompt, n_new, args.gamma, temperature, generator=g))
                plain_s, spec_s = plain_s + seconds, spec_s + spec_seconds
                taus.append(stats["block_efficiency"])
                if temperature == 0:
                    same += int(spec.tolist() == plain.tolist())
            tau = sum(taus) / len(taus)
            mbsu = memory_bound_speedup(count_params(target), count_params(draft), tau, args.gamma)
            plain_rate, spec_rate = len(prompts) * n_new / plain_s, len(prompts) * n_new / spec_s
            row = {"mode": mode, "temperature": temperature, "plain_tokens_per_s": plain_rate,
                   "speculative_tokens_per_s": spec_rate, "speedup": spec_rate / plain_rate, "tau": tau,
                   "mbsu": mbsu, "greedy_equal": same if temperature == 0 else None}
            results["speculative"].append(row)
            print(f"| {mode} | {temperature:g} | {plain_rate:.0f} | {spec_rate:.0f} | {row['speedup']:.2f}x | {tau:.2f} | "
                  f"{mbsu:.2f}x | {row['speedup'] / mbsu:.2f} | "
                  + (f"{same}/{len(prompts)} spec==plain" if temperature == 0 else "-") + " |")
        # Every fast path must give the eager path's greedy tokens (up to bf16 near-ties).
        if mode != "eager":
            results["greedy_equal_eager"][mode] = sum(generate(target, p, n_new, 0.0).tolist() == tokens
                                                      for p, tokens in zip(prompts[:4], eager_tokens))
        del target, draft
        torch.cuda.empty_cache()
    print("greedy tokens identical to the eager path's (4 prompts): "
          + ", ".join(f"{mode} {n}/4" for mode, n in results["greedy_equal_eager"].items()))

    ours = max((r for r in results["speculative"] if r["temperature"] == 0), key=lambda r: r["speculative_tokens_per_s"])
    results["hf"] = hf_assisted(args, prompts, n_new, ours)
    results["datagen"] = datagen_throughput(args, prompts)
    return results


def hf_assisted(args, prompts, n_new, ours: dict) -> list[dict]:
    """The same pair through transformers: plain generate and assisted generation, greedy."""
    try:
        import transformers
    except ImportError:
        print("\ntransformers is not installed here: section 4 skipped (pip install transformers where you benchmark)")
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("target", os.path.join(args.run, "target", "model")),
                           ("draft", os.path.join(args.run, f"draft-{args.draft}", "model"))):
            export_hf(load_model(path), os.path.join(tmp, name), dtype=torch.bfloat16)
        hf_target = transformers.LlamaForCausalLM.from_pretrained(os.path.join(tmp, "target"), torch_dtype=torch.bfloat16).cuda().eval()
        hf_draft = transformers.LlamaForCausalLM.from_pretrained(os.path.join(tmp, "draft"), torch_dtype=torch.bfloat16).cuda().eval()
        hf_draft.generation_config.num_assistant_tokens = args.gamma
        hf_draft.generation_config.num_assistant_tokens_schedule = "constant"
        hf_draft.generation_config.assistant_confidence_threshold = 0.0
        for label, kwargs in (("transformers generate", {}), ("transformers assisted", {"assistant_model": hf_draft})):
            seconds = 0.0
            for i, prompt in enumerate(prompts[:2] + prompts):
                ids = torch.tensor([prompt], device="cuda")
                out, s = timed(lambda: hf_target.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new,
                                                          do_sample=False, **kwargs))
                if i >= 2:
                    seconds += s
            rows.append({"label": label, "tokens_per_s": len(prompts) * n_new / seconds})
    ours_tokens_per_s = ours["speculative_tokens_per_s"]
    rows.append({"label": f"ours, speculative ({ours['mode']})", "tokens_per_s": ours_tokens_per_s})
    print(f"\ntransformers {transformers.__version__}, greedy, gamma {args.gamma} (constant schedule), same prompts")
    print("| decoder | tok/s | ours / this |\n|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['tokens_per_s']:.0f} | {ours_tokens_per_s / r['tokens_per_s']:.2f}x |")
    return rows


def datagen_throughput(args, prompts) -> dict:
    """Distillation-data generation: one prompt at a time vs one batch (eager, T=1)."""
    target = load_model(os.path.join(args.run, "target", "model"), "cuda", torch.bfloat16)
    batch = (prompts * 8)[:64]
    n_new = 64
    _, single = timed(lambda: [generate_batch(target, [p], n_new, 1.0) for p in batch[:16]])
    _, batched = timed(lambda: generate_batch(target, batch, n_new, 1.0))
    result = {"one_at_a_time_tokens_per_s": 16 * n_new / single, "batched64_tokens_per_s": 64 * n_new / batched}
    print(f"\ndistillation data generation: one prompt at a time {result['one_at_a_time_tokens_per_s']:.0f} tok/s, "
          f"batch of 64 {result['batched64_tokens_per_s']:.0f} tok/s "
          f"({result['batched64_tokens_per_s'] / result['one_at_a_time_tokens_per_s']:.1f}x)")
    return result


# ----------------------------------------------------------------------------------------------
# --section profile: where the time of one decode step goes
# ----------------------------------------------------------------------------------------------

def kernel_kind(name: str) -> str:
    """Sort a CUDA kernel's name into the part of the step it serves."""
    lowered = name.lower()
    if any(key in lowered for key in ("gemv", "gemm", "nvjet", "cutlass", "xmma", "splitk")):
        return "matrix products"
    if any(key in lowered for key in ("flash", "fmha", "attention", "attn")):
        return "attention"
    if lowered.startswith("triton"):
        return "fused element-wise (inductor)"
    return "other"


def kernel_profile(step, repeats: int = 5) -> dict:
    """GPU time per step of each kind of kernel, summed from torch.profiler's kernel records."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
    by_kind, launches, kernels = {}, 0, []
    for event in prof.key_averages():
        if event.self_device_time_total <= 0:
            continue
        kind = kernel_kind(event.key)
        ms = event.self_device_time_total / repeats / 1e3                          # ms per step
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
        launches += event.count / repeats
        kernels.append({"kernel": event.key[:90], "kind": kind, "per_step": event.count / repeats, "ms": ms})
    kernels.sort(key=lambda k: -k["ms"])
    return {"ms_by_kind": by_kind, "kernel_ms": sum(by_kind.values()), "kernels_per_step": launches,
            "top_kernels": kernels[:12]}


def host_profile(fn, top: int = 8) -> list[dict]:
    """The host-side operations of fn() by self CPU time: what a graph replay does not cover."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if not e.key.startswith(("ProfilerStep", "cudaDeviceSynchronize"))]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3} for e in events[:top]]


def section_profile(args) -> dict:
    ceilings = measure_ceilings()
    results = {"ceilings": ceilings, "llama2-7b": {}}
    # (a) The 7B step compiled by torch.compile, run WITHOUT its graph (model.graphs["step"] is
    # the compiled function the graph records) so that the profiler sees every kernel; the
    # graph replay of the same kernels is timed beside.
    context = args.context
    for mode in ("compile+graphs", "fused+compile+graphs"):
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = prepare(Llama(get_config("llama2-7b")).to(torch.bfloat16).eval(), mode)
        cache = model.new_cache(1, context + 2)
        one, pos = torch.randint(0, 32000, (1, 1), device="cuda"), torch.tensor([context], device="cuda")
        with torch.no_grad():
            model(torch.randint(0, 32000, (1, context), device="cuda"), cache, torch.arange(context, device="cuda"))
            kernels = kernel_profile(lambda: model.graphs["step"](one, cache, pos))
            graph_ms = cuda_time(lambda: model(one, cache, pos), repeats=50) * 1e3
        matrix_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                           if p.dim() == 2 and "tok_embeddings" not in name)
        matmul_ms = kernels["ms_by_kind"].get("matrix products", float("nan"))
        row = {**kernels, "graph_ms": graph_ms, "matmul_GBps": matrix_bytes / (matmul_ms / 1e3) / 1e9}
        results["llama2-7b"][mode] = row
        print(f"\nllama2-7b decode step, {mode} (cache of {context + 2} slots): "
              f"{kernels['kernels_per_step']:.0f} kernels, {kernels['kernel_ms']:.2f} ms of kernel time "
              f"(profiled without the graph); replayed from the CUDA graph: {graph_ms:.2f} ms")
        print("| kernels | ms per step | share |\n|---|---|---|")
        for kind, ms in sorted(kernels["ms_by_kind"].items(), key=lambda item: -item[1]):
            print(f"| {kind} | {ms:.2f} | {ms / kernels['kernel_ms']:.0%} |")
        print("| top kernels | kind | launches per step | ms per step |\n|---|---|---|---|")
        for k in kernels["top_kernels"]:
            print(f"| `{k['kernel']}` | {k['kind']} | {k['per_step']:.0f} | {k['ms']:.3f} |")
        print(f"matrix products read {matrix_bytes / 1e9:.2f} GB of weights at {row['matmul_GBps']:.0f} GB/s "
              f"(copy bandwidth {ceilings['bandwidth_GBps']:.0f} GB/s)")
        del model, cache
        torch.cuda.empty_cache()
    results["pair_shapes"] = profile_pair_shapes(args)
    return results


def profile_pair_shapes(args) -> dict:
    """(b) The GPU-preset pair's shapes, random bf16 weights, the fastest decode path: where a
    speculative block's wall time goes, against the GPU time its steps need."""
    torch.manual_seed(0)
    models = {}
    for preset in ("gpu-target", "gpu-draft"):
        with torch.device("cuda"):
            models[preset] = prepare(Llama(get_config(preset)).to(torch.bfloat16).eval(), "fused+compile+graphs")
    target, draft = models["gpu-target"], models["gpu-draft"]
    gamma, n_new = args.gamma, 128
    prompt = torch.randint(0, target.config.vocab_size, (64,)).tolist()
    replay_ms = {}
    with torch.no_grad():
        for name, model, n_tokens in (("draft step", draft, 1), ("target step", target, 1),
                                      ("target verify", target, gamma + 1)):
            cache = model.new_cache(1, 64 + n_new + gamma)
            model(torch.tensor([prompt], device="cuda"), cache, torch.arange(64, device="cuda"))
            tokens, pos = torch.ones(1, n_tokens, dtype=torch.long, device="cuda"), torch.arange(64, 64 + n_tokens, device="cuda")
            replay_ms[name] = cuda_time(lambda: model(tokens, cache, pos), repeats=50) * 1e3
    for _ in range(2):                                                                # warm-up, recording
        generate(target, prompt, n_new, 1.0)
        speculative_generate(target, draft, prompt, n_new, gamma, 1.0)
    _, plain_s = timed(lambda: generate(target, prompt, n_new, 1.0))
    (_, stats), spec_s = timed(lambda: speculative_generate(target, draft, prompt, n_new, gamma, 1.0))
    blocks = len(stats["accepted_per_block"])
    result = {"replay_ms": replay_ms, "plain_ms_per_token": plain_s / n_new * 1e3,
              "spec_ms_per_block": spec_s / blocks * 1e3,
              "block_gpu_ms": gamma * replay_ms["draft step"] + replay_ms["target verify"],
              "host_ops_generate": host_profile(lambda: generate(target, prompt, n_new, 1.0)),
              "host_ops_speculative": host_profile(lambda: speculative_generate(target, draft, prompt, n_new, gamma, 1.0))}
    # With these costs, the best speed-up any draft could give (every token accepted, tau = gamma + 1):
    result["speedup_at_full_acceptance"] = (gamma + 1) * result["plain_ms_per_token"] / result["spec_ms_per_block"]
    result["mbsu_at_full_acceptance"] = memory_bound_speedup(count_params(target), count_params(draft), gamma + 1, gamma)
    print(f"\nGPU-preset shapes (random bf16 weights, fused+compile+graphs, gamma {gamma}, T=1): GPU time of one "
          f"graph replay vs wall time per token / per block")
    print("| | ms |\n|---|---|")
    for name, ms in replay_ms.items():
        print(f"| GPU: {name} (graph replay) | {ms:.3f} |")
    print(f"| GPU: one block = {gamma} draft steps + verify | {result['block_gpu_ms']:.3f} |")
    print(f"| wall: generate(), per token | {result['plain_ms_per_token']:.3f} |")
    print(f"| wall: speculative_generate(), per block | {result['spec_ms_per_block']:.3f} |")
    print(f"at these costs, even tau = gamma + 1 = {gamma + 1} would give {result['speedup_at_full_acceptance']:.2f}x, "
          f"against MBSU {result['mbsu_at_full_acceptance']:.2f}x")
    for label in ("generate", "speculative"):
        print(f"\nhost-side time of {label} ({n_new} tokens, T=1), top operations by self CPU time:")
        print("| op | calls | self CPU ms |\n|---|---|---|")
        for op in result[f"host_ops_{label}"]:
            print(f"| {op['op']} | {op['calls']} | {op['self_cpu_ms']:.2f} |")
    return result


def main():
    p = argparse.ArgumentParser(description="GPU benchmarks (see the module docstring).")
    p.add_argument("--section", choices=["shapes", "pair", "profile"], required=True)
    p.add_argument("--run", default="runs/gpu", help="run directory of PRESET=gpu bash run.sh")
    p.add_argument("--draft", default="tvdpp", help="which distilled draft of the run to use")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--context", type=int, default=256, help="filled cache slots for the shape benchmark")
    p.add_argument("--prompts-per-task", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--modes", default=",".join(MODES), help=f"pair: decode paths to compare, from {MODES}")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.py measures GPU performance: run it on a machine with a CUDA GPU")
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    sections = {"shapes": section_shapes, "pair": section_pair, "profile": section_profile}
    results = sections[args.section](args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
