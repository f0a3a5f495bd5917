"""
bench.py: where the time goes on one GPU, measured side by side in one run (BENCHMARKS.md).

    python bench.py --section shapes                 # one decode step at the paper's shapes
    python bench.py --section loop                   # the decode loops: wall time vs GPU time
    python bench.py --section pair --target T --draft D --tokenizer TOK --prompts P.jsonl
                                                     # a trained pair: ours vs transformers

--section shapes   Random bf16 weights. The latency of one decode step at batch 1 and of one
  (gamma+1)-token verify on each decode path of fast_decode.DECODE_PATHS (plus torch.compile's
  own CUDA graphs, mode="reduce-overhead", for comparison), with the time spent compiling and
  recording before the first timed step, each against its bandwidth floor (the
  bytes of weights + KV cache a step must read over the measured copy bandwidth: what a perfect
  kernel could do, since batch-1 decoding is memory bound); the speed-up those costs project for
  tau = 2.3 beside MBSU; and (--training) the drafter-115m shape's training throughput.
--section loop   Random bf16 weights at the SmolLM2 shape (with 2- and 4-layer drafts) and at the
  GPU-preset shapes, on one decode path: the GPU time of one recorded speculative block (gamma
  draft steps with their sampling, the verify, the acceptance test) and of one plain step, against
  the wall time they take inside SpeculativeDecoder.generate and Decoder.generate (differences of
  two runs of different lengths, so the prefill cancels), and the speed-up the wall times give
  at a few block efficiencies (the block's cost does not depend on how many tokens it accepts).
--section pair   A trained (target, draft) pair on real prompts: plain and speculative tokens/s on
  each decode path, tau and the speed-up, and the same weights through Hugging Face transformers
  (export_hf): generate and generate(assistant_model=...). transformers is not a dependency of
  this project: install it only where this benchmark runs. The one section that also runs on
  a CPU (--device cpu, float32; --paths eager or few-row-matmuls).
Every table is printed as markdown and saved as JSON (--out).
"""

import argparse
import json
import os
import tempfile
import time
from collections import Counter

import torch

import fast_decode
from checkpoints import export_hf, load_model
from data import load_jsonl_prompts
from evaluate import memory_bound_speedup
from model import Llama, count_params, get_config
from speculative import Decoder, SpeculativeDecoder, decoder_slots, synchronize, timed_plain_run, warm_up
from tokenizer import chat_prompt, load_tokenizer


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


def kernel_counts(fn) -> Counter:
    """The GPU kernels one call of fn() runs, by name, with how often each ran (torch.profiler),
    after one unprofiled call (which may compile or record)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return Counter({e.key: e.count for e in prof.key_averages() if e.self_device_time_total > 0})


def wall_time(fn, device: torch.device = torch.device("cuda")) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


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


def random_model(preset: str, **overrides) -> Llama:
    torch.manual_seed(0)
    with torch.device("cuda"):
        return Llama(get_config(preset, **overrides)).to(torch.bfloat16).eval()


# ----------------------------------------------------------------------------------------------
# --section shapes
# ----------------------------------------------------------------------------------------------

def step_function(model: Llama, path: str, options: dict, cache, tokens, slots):
    """A zero-argument model step on `path`: eager, recorded (CUDA graph), or torch.compile's own
    graphs (mode="reduce-overhead", which records and replays by itself)."""
    if path == "compile(reduce-overhead)":
        for tensor in cache.k + cache.v:           # a cache it may update in place between replays
            torch._dynamo.mark_static_address(tensor)
        compiled = torch.compile(Llama.forward, mode="reduce-overhead", fullgraph=True)
        return lambda: compiled(model, tokens, cache, slots)
    step = lambda: model(tokens, cache, slots)             # noqa: E731
    return fast_decode.CudaGraph(step) if options["graphs"] else step


def decode_costs(preset: str, path: str, gamma: int, context: int, ceilings: dict) -> dict:
    """Seconds per 1-token decode step and per (gamma+1)-token verify step at `context` filled slots,
    and the wall time spent before the timing: prefills and first calls, i.e. compiling and recording."""
    model = random_model(preset)
    options = fast_decode.apply_decode_path([model], "eager" if path.startswith("compile(") else path)
    times, setup_s = {}, 0.0
    with torch.no_grad():
        for name, n_tokens in (("decode", 1), ("verify", gamma + 1)):
            started = time.perf_counter()
            cache = model.new_cache(1, context + gamma + 2)
            model.prefill(torch.randint(0, model.config.vocab_size, (1, context), device="cuda"), cache,
                          torch.arange(context, device="cuda"))
            tokens = torch.randint(0, model.config.vocab_size, (1, n_tokens), device="cuda")
            slots = torch.arange(context, context + n_tokens, device="cuda")
            step = step_function(model, path, options, cache, tokens, slots)
            step()                                              # compiles and records on first use
            torch.cuda.synchronize()
            setup_s += time.perf_counter() - started
            times[name] = cuda_time(step, repeats=50)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cache_bytes = sum(t.numel() * t.element_size() for t in cache.k + cache.v)   # attention reads every slot
    floor = (weight_bytes + cache_bytes) / (ceilings["bandwidth_GBps"] * 1e9)
    return {"preset": preset, "path": path, "params": count_params(model), "decode_ms": times["decode"] * 1e3,
            "verify_ms": times["verify"] * 1e3, "floor_ms": floor * 1e3, "decode_fraction_of_floor": floor / times["decode"],
            "setup_s": setup_s}


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
    return {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops_per_token / (ceilings["bf16_matmul_TFLOPs"] * 1e12)}


def section_shapes(args) -> dict:
    ceilings = measure_ceilings()
    print(f"measured: copy bandwidth {ceilings['bandwidth_GBps']:.0f} GB/s, bf16 matmul {ceilings['bf16_matmul_TFLOPs']:.0f} TFLOP/s")
    rows = []
    # Each row is printed as soon as it is measured, so that a run cut short keeps what it measured.
    print("\n| shape | decode path | decode ms/token | verify ms (gamma+1 tokens) | floor ms | floor / decode "
          "| compile + record s |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for preset in args.presets.split(","):
        for path in args.paths.split(","):
            if path == "compile(reduce-overhead)" and preset not in args.reduce_overhead_presets.split(","):
                continue
            try:
                r = decode_costs(preset, path, args.gamma, args.context, ceilings)
                rows.append(r)
                print(f"| {r['preset']} | {r['path']} | {r['decode_ms']:.2f} | {r['verify_ms']:.2f} | "
                      f"{r['floor_ms']:.2f} | {r['decode_fraction_of_floor']:.0%} | {r['setup_s']:.0f} |", flush=True)
            except Exception as error:       # report and go on: one failed path must not cost the run
                print(f"{preset} {path} failed: {type(error).__name__}: {error}", flush=True)
            torch.cuda.empty_cache()
    projections = []
    targets = [r for r in rows if r["params"] > 1e9]
    drafts = {r["path"]: r for r in rows if r["params"] < 1e9}
    if targets and drafts:
        print("\nprojected speed-up at block efficiency 2.3 (the paper's headline) from the measured costs")
        print("| decode path | gamma | from measured costs | MBSU |\n|---|---|---|---|")
    for target in targets:
        draft = drafts.get(target["path"])
        for gamma in (3, 4, 5) if draft else ():
            # One block: gamma draft steps + one verify (measured at args.gamma + 1 tokens) yields
            # tau tokens, against tau plain target steps.
            speedup = 2.3 * target["decode_ms"] / (gamma * draft["decode_ms"] + target["verify_ms"])
            mbsu = memory_bound_speedup(target["params"], draft["params"], 2.3, gamma)
            projections.append({"path": target["path"], "gamma": gamma, "speedup": speedup, "mbsu": mbsu})
            print(f"| {target['path']} | {gamma} | {speedup:.2f}x | {mbsu:.2f}x |")
    result = {"ceilings": ceilings, "decode": rows, "projections": projections}
    if args.training:
        result["training"] = training = training_throughput(ceilings)
        print(f"\ndrafter-115m training: {training['tokens_per_s']:,.0f} tokens/s, MFU {training['mfu']:.0%} "
              "(batch 16 x 1024, bf16 autocast, torch.compile)")
    return result


# ----------------------------------------------------------------------------------------------
# --section loop
# ----------------------------------------------------------------------------------------------

def loop_costs(target: Llama, draft: Llama, path: str, gamma: int, temperature: float = 1.0) -> dict:
    """GPU time of one recorded block / plain step vs their wall time inside the decode loops."""
    options = fast_decode.apply_decode_path([target, draft], path)
    prompt = torch.randint(0, target.config.vocab_size, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    short, long = 64, 192
    speculative = SpeculativeDecoder(target, draft, 64 + long + gamma + 2, **options)
    plain = Decoder(target, 1, 64 + long, **options)
    blocks = {}

    def run_speculative(n_new):
        blocks[n_new] = len(speculative.generate(prompt, n_new, gamma, temperature)[1]["accepted_per_block"])

    for n_new in (short, long):                                          # warm-up: record, compile
        run_speculative(n_new)
        plain.generate([prompt], n_new, temperature)
    spec_seconds = {n: wall_time(lambda: run_speculative(n)) for n in (short, long)}
    plain_seconds = {n: wall_time(lambda: plain.generate([prompt], n, temperature)) for n in (short, long)}
    block_wall = (spec_seconds[long] - spec_seconds[short]) / (blocks[long] - blocks[short])
    token_wall = (plain_seconds[long] - plain_seconds[short]) / (long - short)
    # The GPU time of the recorded steps, replayed from a fixed position (reset between replays).
    first = 1 + 64 + short          # a position inside the decoder's slots, whatever the last run left
    block_graph = speculative.steps.recorded[(gamma, (temperature, None, None), "sample")]
    step_graph = plain.steps.recorded[(temperature, None, None)]
    block_gpu = cuda_time(lambda: (speculative.length.fill_(first), block_graph()), repeats=50)
    start = 64 + short
    token_gpu = cuda_time(lambda: (plain.length.fill_(start), step_graph()), repeats=50)
    row = {"path": path, "gamma": gamma, "target_params": count_params(target), "draft_params": count_params(draft),
           "block_gpu_ms": block_gpu * 1e3, "block_wall_ms": block_wall * 1e3,
           "token_gpu_ms": token_gpu * 1e3, "token_wall_ms": token_wall * 1e3}
    row["block_wall_over_gpu"] = block_wall / block_gpu
    row["token_wall_over_gpu"] = token_wall / token_gpu
    row["speedup_at_tau"] = {tau: tau * token_wall / block_wall for tau in (2.0, 3.0, 4.0, gamma + 1.0)}
    return row


def section_loop(args) -> dict:
    pairs = [("smollm2-135m", "smollm2-draft-2l"), ("smollm2-135m", "smollm2-draft-4l"), ("gpu-target", "gpu-draft")]
    rows = []
    for target_preset, draft_preset in pairs:
        target, draft = random_model(target_preset), random_model(draft_preset, vocab_size=get_config(target_preset).vocab_size)
        rows.append({"pair": f"{target_preset} + {draft_preset}", **loop_costs(target, draft, args.path, args.gamma)})
        del target, draft
        torch.cuda.empty_cache()
    print(f"\ndecode path {args.path}, gamma {args.gamma}, T=1, batch 1, random bf16 weights")
    print("| pair | block GPU ms | block wall ms | wall / GPU | token GPU ms | token wall ms | wall / GPU | "
          "speed-up at tau 2 / 3 / 4 / gamma+1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        speedups = " / ".join(f"{s:.2f}x" for s in r["speedup_at_tau"].values())
        print(f"| {r['pair']} | {r['block_gpu_ms']:.3f} | {r['block_wall_ms']:.3f} | {r['block_wall_over_gpu']:.2f} | "
              f"{r['token_gpu_ms']:.3f} | {r['token_wall_ms']:.3f} | {r['token_wall_over_gpu']:.2f} | {speedups} |")
    return {"rows": rows}


# ----------------------------------------------------------------------------------------------
# --section pair
# ----------------------------------------------------------------------------------------------

def section_pair(args) -> dict:
    """Ours and transformers on the same trained pair: bf16 on a GPU, float32 on a CPU."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok = load_tokenizer(args.tokenizer or args.target)
    prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in load_jsonl_prompts(args.prompts)[: args.n_prompts]]
    n_new, results = args.max_new_tokens, {"ours": [], "hf": []}
    print(f"\n{len(prompts)} prompts, {n_new} new tokens each (no stop token, so every run makes the same count), "
          f"gamma {args.gamma}, {device.type}, {dtype}")
    print("| decode path | T | plain tok/s | speculative tok/s | speed-up | tau | MBSU |\n|---|---|---|---|---|---|---|")
    for path in args.paths.split(","):
        target = load_model(args.target, device, dtype)
        draft = load_model(args.draft, device, dtype, base=args.target)
        params = (count_params(target), count_params(draft))    # before a quantized path makes weights buffers
        options = fast_decode.apply_decode_path([target, draft], path)
        speculative = SpeculativeDecoder(target, draft, decoder_slots(target, draft, prompts, n_new, args.gamma), **options)
        plain = Decoder(target, 1, decoder_slots(target, None, prompts, n_new), **options)
        for temperature in (0.0, 1.0):
            warm_up(lambda prompt: speculative.generate(prompt, args.gamma + 1, args.gamma, temperature), prompts)
            warm_up(lambda prompt: plain.generate([prompt], 2, temperature), prompts)
            plain_s = spec_s = 0.0
            taus = []
            for i, prompt in enumerate(prompts):    # interleaved, prompt by prompt, as evaluate.py times
                plain_s += timed_plain_run(plain, prompt, n_new, temperature, None, None, (),
                                           torch.Generator(device).manual_seed(i))[1]
                stats = speculative.generate(prompt, n_new, args.gamma, temperature,
                                             generator=torch.Generator(device).manual_seed(i))[1]
                spec_s += stats["seconds"]
                taus.append(stats["block_efficiency"])
            tau = sum(taus) / len(taus)
            row = {"path": path, "temperature": temperature, "plain_tokens_per_s": len(prompts) * n_new / plain_s,
                   "speculative_tokens_per_s": len(prompts) * n_new / spec_s, "tau": tau,
                   "mbsu": memory_bound_speedup(*params, tau, args.gamma)}
            row["speedup"] = row["speculative_tokens_per_s"] / row["plain_tokens_per_s"]
            results["ours"].append(row)
            print(f"| {path} | {temperature:g} | {row['plain_tokens_per_s']:.1f} | {row['speculative_tokens_per_s']:.1f} | "
                  f"{row['speedup']:.2f}x | {tau:.2f} | {row['mbsu']:.2f}x |")
        del target, draft, speculative, plain
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["hf"] = hf_assisted(args, prompts, n_new, max(results["ours"], key=lambda r: r["speculative_tokens_per_s"]
                                                          * (r["temperature"] == 0)), device, dtype)
    return results


def hf_assisted(args, prompts, n_new, ours: dict, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """The same pair through transformers: plain generate and assisted generation, greedy."""
    try:
        import transformers
    except ImportError:
        print("\ntransformers is not installed here: its rows are skipped (pip install transformers where you benchmark)")
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("target", args.target), ("draft", args.draft)):
            export_hf(load_model(path, base=args.target), os.path.join(tmp, name), dtype=dtype)
        hf_target = transformers.LlamaForCausalLM.from_pretrained(os.path.join(tmp, "target"), dtype=dtype).to(device).eval()
        hf_draft = transformers.LlamaForCausalLM.from_pretrained(os.path.join(tmp, "draft"), dtype=dtype).to(device).eval()
        hf_draft.generation_config.num_assistant_tokens = args.gamma
        hf_draft.generation_config.num_assistant_tokens_schedule = "constant"
        hf_draft.generation_config.assistant_confidence_threshold = 0.0
        for label, kwargs in (("transformers generate", {}), ("transformers assisted generation", {"assistant_model": hf_draft})):
            seconds = 0.0
            for i, prompt in enumerate(prompts[:1] + prompts):           # the first run is a warm-up
                ids = torch.tensor([prompt], device=device)
                s = wall_time(lambda: hf_target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                                                         min_new_tokens=n_new, do_sample=False, **kwargs), device)
                seconds += s if i else 0.0
            rows.append({"label": label, "tokens_per_s": len(prompts) * n_new / seconds})
    rows.append({"label": f"ours, speculative ({ours['path']})", "tokens_per_s": ours["speculative_tokens_per_s"]})
    print(f"\ntransformers {transformers.__version__}, greedy, gamma {args.gamma} (constant schedule), same prompts")
    print("| decoder | tok/s | ours / this |\n|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['tokens_per_s']:.1f} | {ours['speculative_tokens_per_s'] / r['tokens_per_s']:.2f}x |")
    return rows


def main():
    p = argparse.ArgumentParser(description="Decode benchmarks, on a GPU (pair also on a CPU; see the module docstring).")
    p.add_argument("--section", choices=["shapes", "loop", "pair"], required=True)
    p.add_argument("--presets", default="llama2-7b,drafter-115m", help="shapes: model presets")
    p.add_argument("--paths", default=None,
                   help="shapes / pair: decode paths to compare (default: shapes every GPU path and "
                        "compile(reduce-overhead); pair the decode paths of its device)")
    p.add_argument("--reduce-overhead-presets", default="drafter-115m",
                   help="shapes: the presets measured on compile(reduce-overhead), which compiles the whole "
                        "forward at once (slow for deep models; our compile paths compile one block)")
    p.add_argument("--path", default="fused+compile+graphs", help="loop: the decode path")
    p.add_argument("--training", action="store_true", help="shapes: also the drafter-115m training throughput")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--context", type=int, default=256, help="shapes: filled cache slots")
    p.add_argument("--target", help="pair: the target checkpoint (a directory or a .gguf)")
    p.add_argument("--draft", help="pair: the draft checkpoint")
    p.add_argument("--tokenizer", default=None, help="pair: tokenizer (default: the target's own, for a .gguf)")
    p.add_argument("--prompts", help="pair: JSONL prompts")
    p.add_argument("--n-prompts", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="pair: where to run it (bf16 on a GPU, float32 on a CPU; the other sections need a GPU)")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args()
    on_cpu = torch.device(args.device).type == "cpu"
    if args.section == "pair":   # check the paths before a model is loaded
        runnable = ("eager", "few-row-matmuls") if on_cpu else fast_decode.DECODE_PATHS
        args.paths = args.paths or ",".join(runnable if on_cpu else ("eager", *fast_decode.GPU_PATHS))
        for path in args.paths.split(","):
            if path not in runnable:
                raise SystemExit(f"--section pair cannot run decode path {path!r} on {args.device}; "
                                 f"choose from {', '.join(runnable)}")
    else:
        args.paths = args.paths or ",".join(("eager", *fast_decode.GPU_PATHS, "compile(reduce-overhead)"))
    if args.section == "pair" and on_cpu:
        print(f"CPU, {torch.get_num_threads()} threads | torch {torch.__version__}")
    elif not torch.cuda.is_available():
        raise SystemExit("bench.py measures GPU performance (--section pair also runs with --device cpu): "
                         "run it on a machine with a CUDA GPU")
    else:
        print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    results = {"shapes": section_shapes, "loop": section_loop, "pair": section_pair}[args.section](args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
