"""
bench.py: where the time goes on one GPU, measured side by side in one run.

    python bench.py --section shapes            # random bf16 weights at the paper's shapes
    python bench.py --section pair --run runs/gpu   # the pair trained by PRESET=gpu bash run.sh

--section shapes
  1. decode latency per token at batch 1 (llama2-7b and drafter-115m shapes) and the verify
     latency for gamma+1 tokens, eager / CUDA graphs / torch.compile + CUDA graphs, each as a
     fraction of its bandwidth floor (bytes of weights + KV cache read, over the measured copy
     bandwidth): the floor is what a perfect kernel could do, since batch-1 decoding is
     memory bound.
  2. the speed-up projected for block efficiency 2.3 at gamma 3, 4, 5 from those measured
     costs, beside MBSU (which assumes time proportional to parameters read).
  5a. training throughput of the drafter-115m shape (tokens/s and MFU against the measured
     bf16 matmul peak).
--section pair
  3. real speculative decoding with the trained pair: tokens/s of speculative_generate vs
     generate (greedy and T=1), measured tau, MBSU, and speed-up / MBSU; eager and graphed
     paths give the same greedy tokens (checked and printed).
  4. the same pair through Hugging Face transformers (export_hf): generate(assistant_model=...)
     vs ours at the same gamma, and plain transformers decoding. transformers is not a
     dependency of this project: install it only where this benchmark runs.
  5b. distillation-data generation: batched vs one prompt at a time (tokens/s).
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


def decode_costs(preset: str, mode: str, gamma: int, context: int, ceilings: dict) -> dict:
    """Seconds per 1-token decode step and per (gamma+1)-token verify step at `context` filled slots."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Llama(get_config(preset)).to(torch.bfloat16).eval()
    if mode != "eager":
        model.enable_cuda_graphs(compile=mode == "compile+graphs")
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
    cache_bytes = cache.k.numel() * cache.k.element_size() * 2           # attention reads every slot
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
        for mode in ("eager", "graphs", "compile+graphs"):
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
    for mode in ("eager", "graphs", "compile+graphs"):
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
    n_new = args.max_new_tokens
    results = {"speculative": [], "hf": [], "datagen": {}}
    print(f"\n{len(prompts)} prompts, {n_new} new tokens each (no EOS stop, so every run makes the same count)")
    print("| mode | T | plain tok/s | speculative tok/s | speed-up | tau | MBSU | speed-up / MBSU | greedy tokens equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in ("eager", "graphs"):
        target = load_model(os.path.join(args.run, "target", "model"), "cuda", torch.bfloat16)
        draft = load_model(os.path.join(args.run, f"draft-{args.draft}", "model"), "cuda", torch.bfloat16)
        if mode == "graphs":
            target.enable_cuda_graphs()
            draft.enable_cuda_graphs()
        for temperature in (0.0, 1.0):
            plain_s = spec_s = 0.0
            taus, same = [], 0
            for i, prompt in enumerate(prompts + prompts[:2]):       # the first 2 repeat as warm-up
                g = torch.Generator("cuda").manual_seed(i)
                plain, seconds = timed(lambda: generate(target, prompt, n_new, temperature, generator=g))
                g = torch.Generator("cuda").manual_seed(i)
                (spec, stats), spec_seconds = timed(lambda: speculative_generate(
                    target, draft, prompt, n_new, args.gamma, temperature, generator=g))
                if i < 2:
                    continue          # warm-up: CUDA-graph recording, allocator, cuBLAS handles
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
        if mode == "graphs":
            # eager and graphed decoding must produce the same greedy tokens
            graphed = [generate(target, p, n_new, 0.0).tolist() for p in prompts[:4]]
            eager_target = load_model(os.path.join(args.run, "target", "model"), "cuda", torch.bfloat16)
            eager = [generate(eager_target, p, n_new, 0.0).tolist() for p in prompts[:4]]
            results["graphs_equal_eager"] = sum(a == b for a, b in zip(graphed, eager))
            print(f"greedy tokens, CUDA graphs vs eager: {results['graphs_equal_eager']}/4 prompts identical")
        del target, draft
        torch.cuda.empty_cache()

    ours = next(r for r in results["speculative"] if r["mode"] == "graphs" and r["temperature"] == 0)
    results["hf"] = hf_assisted(args, prompts, n_new, ours["speculative_tokens_per_s"])
    results["datagen"] = datagen_throughput(args, prompts)
    return results


def hf_assisted(args, prompts, n_new, ours_tokens_per_s: float) -> list[dict]:
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
    rows.append({"label": "ours speculative (CUDA graphs)", "tokens_per_s": ours_tokens_per_s})
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


def main():
    p = argparse.ArgumentParser(description="GPU benchmarks (see the module docstring).")
    p.add_argument("--section", choices=["shapes", "pair"], required=True)
    p.add_argument("--run", default="runs/gpu", help="run directory of PRESET=gpu bash run.sh")
    p.add_argument("--draft", default="tvdpp", help="which distilled draft of the run to use")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--context", type=int, default=256, help="filled cache slots for the shape benchmark")
    p.add_argument("--prompts-per-task", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.py measures GPU performance: run it on a machine with a CUDA GPU")
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    results = section_shapes(args) if args.section == "shapes" else section_pair(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
