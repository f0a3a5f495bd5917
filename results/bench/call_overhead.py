"""Where a whole decoding call's wall time goes, beyond its recorded steps: the real SmolLM2 on one
GPU, on the held-out prompts, with the decoders and the decode path evaluate.py uses.

Why: fitted over the 216 rows of the 2026-12-03b run, the speculative calls' time per token is
A + c0 / tau + cd * gamma / tau with c0 and cd near the blocks' GPU costs, and A = 0.24-0.36 ms
per generated token on stories and highlights (0.54-0.96 on the shorter summaries): a per-call
cost of 15-25 ms that the block profile does not see. It was the prefill, unrecorded then
(BENCHMARKS.md section 0e). This script takes single calls apart: each model's forward calls
outside a recorded step ("unrecorded": eagerly, every step; on a GPU path, after the warm-up,
nothing since the prefill is recorded), timed with a synchronisation around each, the recorded
steps' replays (each timed with a synchronisation after it), and the rest (host
time: Python, transfers). The instrumented calls are separate from the timed ones.

    PYTHONPATH=. python results/bench/call_overhead.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --world runs/smollm2/world

The draft is SmolLM2's first 4 blocks, not trained (the preset's draft before phase 1): its
cost per step is the trained draft's, its tau is lower.
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import fast_decode
from checkpoints import DTYPES, load_model
from data import load_jsonl_prompts
from speculative import Decoder, SpeculativeDecoder, decoder_slots, synchronize, warm_up
from tokenizer import chat_prompt, load_tokenizer


class Clock:
    """Seconds spent in the models' forward calls outside recorded steps, and in replays."""

    def __init__(self, device):
        self.seconds, self.device = {}, device

    def add(self, key, seconds):
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def time_forwards(self, model, key):
        started = {}

        def before(module, args):
            synchronize(self.device)
            started[0] = time.perf_counter()

        def after(module, args, output):
            synchronize(self.device)
            self.add(key, time.perf_counter() - started[0])
        return [model.register_forward_pre_hook(before), model.register_forward_hook(after)]


def timed_replays(clock: Clock):
    """Patch CudaGraph.__call__ to time every replay (with a synchronisation after it)."""
    original = fast_decode.CudaGraph.__call__

    def call(self):
        torch.cuda.synchronize()
        started = time.perf_counter()
        output = original(self)
        torch.cuda.synchronize()
        clock.add("replays", time.perf_counter() - started)
        return output
    fast_decode.CudaGraph.__call__ = call
    return lambda: setattr(fast_decode.CudaGraph, "__call__", original)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--world", required=True)
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--path", default="fused+compile+graphs")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu (with --path eager or few-row-matmuls)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    args = parser.parse_args()

    tok = load_tokenizer(args.gguf)
    target = load_model(args.gguf, args.device, DTYPES[args.dtype])
    draft = load_model(args.gguf, args.device, DTYPES[args.dtype], n_layers=4)
    options = fast_decode.apply_decode_path([target, draft], args.path)
    prompts = {task: [chat_prompt(tok, r["prompt"], r.get("system"))
                      for r in load_jsonl_prompts(f"{args.world}/eval_{task}.jsonl")[: args.n_prompts]]
               for task in ("story", "summary", "highlights")}
    every_prompt = [p for ps in prompts.values() for p in ps]
    plain = Decoder(target, 1, decoder_slots(target, None, every_prompt, args.max_new_tokens), **options)
    spec = SpeculativeDecoder(target, draft, decoder_slots(target, draft, every_prompt, args.max_new_tokens,
                                                           args.gamma), **options)
    new = args.max_new_tokens
    for temperature in (0.0, 1.0):
        plain_call = lambda p, g=None: plain.generate([p], new, temperature, stop_ids=tok.stop_ids, generator=g)  # noqa: E731
        spec_call = lambda p, g=None: spec.generate(p, new, args.gamma, temperature, stop_ids=tok.stop_ids,  # noqa: E731
                                                    generator=g)
        warm_up(lambda p: plain.generate([p], 2, temperature), every_prompt)
        warm_up(lambda p: spec.generate(p, args.gamma + 1, args.gamma, temperature), every_prompt)
        for task, task_prompts in prompts.items():
            lengths = [len(p) for p in task_prompts]
            sums = {}
            for i, prompt in enumerate(task_prompts):
                for name, call in (("plain", plain_call), ("spec", spec_call)):
                    synchronize(target.device)
                    started = time.perf_counter()
                    out = call(prompt, torch.Generator(args.device).manual_seed(i))
                    synchronize(target.device)
                    wall = time.perf_counter() - started
                    tokens = len(out[0]) if name == "plain" else out[0].numel()
                    steps = tokens if name == "plain" else out[1]["target_calls"]
                    clock = Clock(target.device)                                   # the same call, instrumented
                    hooks = clock.time_forwards(target, "target unrecorded") + clock.time_forwards(draft, "draft unrecorded")
                    restore = timed_replays(clock)
                    synchronize(target.device)
                    started = time.perf_counter()
                    call(prompt, torch.Generator(args.device).manual_seed(i))
                    synchronize(target.device)
                    instrumented = time.perf_counter() - started
                    restore()
                    for hook in hooks:
                        hook.remove()
                    parts = {"wall": wall, "instrumented": instrumented, "tokens": tokens, "steps": steps, **clock.seconds}
                    parts["rest"] = instrumented - sum(clock.seconds.values())
                    for key, value in parts.items():
                        sums.setdefault(name, {}).setdefault(key, 0.0)
                        sums[name][key] += value
            for name, s in sums.items():
                n = len(task_prompts)
                ms = {k: 1e3 * v / n for k, v in s.items() if k not in ("tokens", "steps")}
                print(f"T={temperature:g} {task:>10} {name:>5}: prompt {min(lengths)}-{max(lengths)} tokens, "
                      f"{s['tokens'] / n:.1f} tokens, {s['steps'] / n:.1f} steps per call; ms per call: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
                      + f"; tok/s {s['tokens'] / s['wall']:.1f}; replay ms per step {ms.get('replays', 0) * n / s['steps']:.3f}",
                      flush=True)
    # One speculative call of the longest summary prompt under the profiler: the host's busiest ops.
    prompt = max(prompts["summary"], key=len)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        spec.generate(prompt, new, args.gamma, 0.0, stop_ids=tok.stop_ids)
        synchronize(target.device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
