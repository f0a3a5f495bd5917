"""Where a distillation step of the smollm2 preset spends its time, and what each change of train.py buys.

    python tools/profile_distill.py --data runs/smollm2/distill.jsonl

Random weights at SmolLM2-135M's shape, the draft its first 4 blocks; the batches of the preset's
own distillation data (--data), so the lengths and the answer share are the real ones. Variants,
each in a fresh process (so first-sight costs count as they do in a real run: each new sequence
length makes cuDNN build attention plans), each a whole train.py step (teacher, draft, loss,
backward, clip, AdamW; float32 weights under bf16 autocast) on the run's first batches:
  every-position          both heads over every position, the loss selecting the answers with
                          the boolean mask on the GPU, batches padded to their longest example
                          (train.py before commit 7a9fbda)
  answer-only             train.objective: the heads multiply only the answer rows, whose
                          indices come from the CPU (train.on_device)
  pad N                   batch lengths rounded up to a multiple of N (train.collate)
  --compile               train.py --compile: every block of both models compiled
                          (fast_decode.compile_blocks), forward and backward
The first --warmup steps are timed apart (compilation included); then --steps steps together.
The last variant also runs one step under torch.profiler: the GPU's busy time, its launches.
Needs a CUDA GPU. Recorded in results/bench/profile_distill.log (one H200).
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules


def variants() -> dict:
    """name: (answer-only logits, pad multiple, compiled)"""
    from train import PAD_MULTIPLE
    return {
        "every-position": (False, 1, False),
        "answer-only": (True, 1, False),
        f"answer-only, pad {PAD_MULTIPLE}": (True, PAD_MULTIPLE, False),
        "answer-only, --compile": (True, 1, True),
        f"answer-only, pad {PAD_MULTIPLE}, --compile": (True, PAD_MULTIPLE, True),
    }


def every_position_step_inputs(batch):
    """What train.py of section 0c handed the models: the boolean mask, on the GPU."""
    return tuple(t.cuda() for t in batch)


def every_position_objective(model, teacher, loss_fn, inputs, targets, mask, generator):
    """train.objective as it was: (B, T, V) logits from both models, the loss selects the answers."""
    import torch
    draft_logits = model(inputs)
    with torch.no_grad():
        target_logits = teacher(inputs)
    return loss_fn(draft_logits, target_logits, targets, mask, generator=generator)


def run_variant(name: str, args) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fast_decode import compile_blocks
    from losses import get_loss
    from model import Llama, get_config
    from train import batch_indices, collate, load_examples, make_optimizer, objective, on_device, split_examples

    answer_only, multiple, compiled = variants()[name]
    examples, _ = split_examples(load_examples([args.data], None, 512))
    lengths = tuple(len(ids) for ids, _ in examples)
    config = get_config("smollm2-135m")
    batches = [collate([examples[i] for i in batch_indices(lengths, args.batch_size, 0, s)], 0, multiple,
                       config.max_seq_len) for s in range(args.warmup + args.steps)]
    torch.manual_seed(0)
    with torch.device("cuda"):
        teacher = Llama(config).requires_grad_(False).eval()
        draft = Llama(replace(config, n_layers=args.draft_layers)).train()
    if compiled:
        compile_blocks(teacher)
        compile_blocks(draft)
    optimizer, loss_fn = make_optimizer(draft, 1e-4, 0.1), get_loss(args.loss)
    objective_fn = objective if answer_only else every_position_objective

    def step(batch):
        inputs, targets, positions = (on_device(batch, torch.device("cuda")) if answer_only
                                      else every_position_step_inputs(batch))
        with torch.autocast("cuda", torch.bfloat16):
            loss = objective_fn(draft, teacher, loss_fn, inputs, targets, positions, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(steps) -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in steps:
            step(batch)
        torch.cuda.synchronize()
        return time.perf_counter() - started

    warm_s = timed(batches[: args.warmup])
    torch.cuda.reset_peak_memory_stats()
    step_ms = timed(batches[args.warmup:]) / args.steps * 1e3
    padded = sum(b[0].numel() for b in batches[args.warmup:]) / args.steps
    shapes = len({b[0].shape for b in batches})
    print(f"| {name} | {step_ms:.1f} | {warm_s:.1f} | {shapes} | {padded:,.0f} | "
          f"{torch.cuda.max_memory_allocated() / 1e9:.1f} |", flush=True)
    if args.trace:
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            wall_ms = timed(batches[-1:]) * 1e3
        kernels = [e for e in prof.key_averages() if e.self_device_time_total > 0 and e.device_type.name == "CUDA"]
        busy_ms = sum(e.self_device_time_total for e in kernels) / 1e3
        print(f"\n{name}: one step (a batch seen before) under the profiler: {wall_ms:.1f} ms of wall time, "
              f"{busy_ms:.1f} ms of it the GPU's kernels ({sum(e.count for e in kernels)} launches); the costliest:")
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]:
            print(f"  {e.self_device_time_total / 1e3:7.2f} ms  {e.count:5d} x  {e.key[:90]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the preset's distill.jsonl")
    p.add_argument("--loss", default="kld")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--draft-layers", type=int, default=4)
    p.add_argument("--warmup", type=int, default=6)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--variant", default=None, help="run this variant alone (the script runs each so)")
    p.add_argument("--trace", action="store_true")
    args = p.parse_args()
    if args.variant:
        return run_variant(args.variant, args)
    import torch                                  # after the flags: --help needs no torch
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | loss {args.loss} | batch {args.batch_size} | "
          f"steps 1-{args.warmup} warm-up, {args.warmup + 1}-{args.warmup + args.steps} timed")
    print("\n| variant | ms per step | warm-up s | sequence lengths seen | padded tokens per step | peak GB |\n"
          "|---|---|---|---|---|---|", flush=True)
    names = list(variants())
    for i, name in enumerate(names):
        flags = ["--trace"] if i == len(names) - 1 else []
        subprocess.run([sys.executable, os.path.abspath(__file__), "--variant", name, "--data", args.data, "--loss", args.loss,
                        "--batch-size", str(args.batch_size), "--draft-layers", str(args.draft_layers),
                        "--warmup", str(args.warmup), "--steps", str(args.steps), *flags], check=True)


if __name__ == "__main__":
    main()
