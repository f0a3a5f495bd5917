"""
train.py: phases 0, 1 and 3 of the recipe (PAPER.md), one loop for all of them.

  --mode pretrain   next-token prediction (cross-entropy) on a plain-text corpus and/or on chat
                    examples with the prompt masked out. Phase 1 pretrains the draft on generic
                    text; phase 0 (offline stand-in only) trains the stand-in chat TARGET on
                    corpus + instruction data, where the real recipe would download Llama 2 Chat.
  --mode distill    phase 3, knowledge distillation: the frozen target (--teacher) runs on the
                    fly under no_grad on the target-generated data (distill_data.py) and the
                    draft matches its full next-token distribution at every RESPONSE position
                    with the chosen loss (--loss kld | tvd | tvdpp | rkl | jsd | ..., losses.py).

Every training example is one token sequence plus the index where the loss starts: corpus
documents are learned whole, chat examples only from the response on. Batches are right-padded
and a mask keeps padding and prompts out of the loss.

Runs are resumable: re-running the same command continues from --out/ckpt.pt (model, optimizer,
step). No data-loader state is needed, because the batch of step s is a pure function of
(seed, s) (see `batch_indices`): a resumed run sees exactly the batches an uninterrupted run
would. The same property makes DistributedDataParallel simple: under torchrun each rank takes
its slice of the step's global batch, and a checkpoint resumes under any number of ranks.
"""

import argparse
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn.functional as F

from data import load_corpus, load_jsonl_examples, load_jsonl_prompts
from losses import get_loss
from model import Llama, ModelConfig, count_params, get_config, load_model, save_model
from speculative import evaluate_pair, run_cli
from tokenizer import chat_example, chat_prompt, check_vocab, load_tokenizer


# ----------------------------------------------------------------------------------------------
# Data: examples, deterministic batches, collation
# ----------------------------------------------------------------------------------------------

def load_examples(paths: list[str], tok, max_len: int) -> list[tuple[list[int], int]]:
    """Read training files into (token ids, loss_start) pairs.

    *.txt          a corpus: [bos] + document + [eos], loss on every token after bos; documents
                   longer than max_len are cut into windows.
    *.jsonl with "response_ids": target-generated distillation records (distill_data.py).
    *.jsonl with "response":     instruction examples, rendered with the chat template.
    For the JSONL kinds the loss starts at the first response token.
    """
    from distill_data import load_distill_records   # imported here: only distillation data needs it
    examples = []
    for path in paths:
        if path.endswith(".txt"):
            for doc in load_corpus(path):
                ids = tok.encode(doc, bos=True, eos=True)
                examples += [(ids[i: i + max_len], 1) for i in range(0, len(ids) - 1, max_len - 1)]
            continue
        with open(path, encoding="utf-8") as f:
            first_line = f.readline()
        if '"response_ids"' in first_line:
            records = [(r["prompt_ids"] + r["response_ids"], len(r["prompt_ids"]))
                       for r in load_distill_records(path)]
        else:
            records = [chat_example(tok, r["prompt"], r["response"], r.get("system"))
                       for r in load_jsonl_examples(path)]
        for ids, response_start in records:
            if len(ids) > max_len:
                raise ValueError(f"{path}: an example of {len(ids)} tokens exceeds --max-len {max_len}; "
                                 f"raise --max-len (up to the model's context) or shorten the data")
            examples.append((ids, response_start))
    if not examples:
        raise ValueError(f"no training examples in {paths}")
    return examples


def split_examples(examples: list, every: int = 50) -> tuple[list, list]:
    """A fixed held-out split: every `every`-th example is for evaluation only."""
    return ([e for i, e in enumerate(examples) if i % every != 0],
            [e for i, e in enumerate(examples) if i % every == 0])


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The global batch of `step`: examples [step*B, (step+1)*B) of an endless stream of
    epochs, each epoch a fresh permutation seeded by (seed, epoch). A pure function of its
    arguments, so resuming and sharding over ranks need no data-loader state."""
    indices = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n_examples)
        order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        indices.append(int(order[offset]))
    return indices


def collate(examples: list[tuple[list[int], int]], pad_id: int):
    """Right-pad into (inputs, targets, mask), each (B, L) with L = longest example - 1.

    inputs[:, t] predicts targets[:, t] = ids[t + 1]; mask[:, t] is True where that target is
    a token we train on (at or after loss_start, and not padding).
    """
    length = max(len(ids) for ids, _ in examples) - 1
    inputs = torch.full((len(examples), length), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.bool)
    for row, (ids, loss_start) in enumerate(examples):
        n = len(ids) - 1
        inputs[row, :n] = torch.tensor(ids[:-1])
        targets[row, :n] = torch.tensor(ids[1:])
        mask[row, max(loss_start - 1, 0): n] = True        # target ids[t+1] is trained iff t+1 >= loss_start
    return inputs, targets, mask


# ----------------------------------------------------------------------------------------------
# Optimisation helpers
# ----------------------------------------------------------------------------------------------

def learning_rate(step: int, max_steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to lr, then cosine decay to min_ratio * lr at max_steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: Llama, lr: float, weight_decay: float, device: torch.device):
    """AdamW; weight decay on matrices only (not on norms), as in nanoGPT."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file, fsync, then rename over `path`: a crash at any moment leaves
    either the old complete file or the new complete one, never a torn one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def objective(model, teacher, loss_fn, inputs, targets, mask, generator):
    """Mean loss over the masked positions of one micro-batch (float32)."""
    draft_logits = model(inputs)                                            # (B, T, V)
    if teacher is None:   # pretraining: cross-entropy against the data tokens
        return F.cross_entropy(draft_logits[mask].float(), targets[mask])
    with torch.no_grad():
        target_logits = teacher(inputs)                                     # (B, T, V), no gradient
    return loss_fn(draft_logits, target_logits, targets, mask, generator=generator)


# ----------------------------------------------------------------------------------------------
# Distributed set-up (torchrun) and evaluation
# ----------------------------------------------------------------------------------------------

def init_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun: one process per GPU with NCCL, or gloo on CPU."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = torch.cuda.is_available() and device_arg in (None, "cuda")
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return rank, world, torch.device("cuda", local_rank)
    return rank, world, torch.device(device_arg or "cpu")


@torch.no_grad()
def evaluate(model, teacher, loss_fn, eval_examples, pad_id, device, micro_batch, eval_pair, args):
    """Held-out loss (the training objective) and, if a target and prompts are given, the
    block efficiency of speculative decoding at --eval-gamma on a few held-out prompts."""
    model.eval()
    total, weight = 0.0, 0
    for i in range(0, len(eval_examples), micro_batch):
        inputs, targets, mask = (t.to(device) for t in collate(eval_examples[i: i + micro_batch], pad_id))
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = objective(model, teacher, loss_fn, inputs, targets, mask, torch.Generator(device).manual_seed(0))
        total, weight = total + loss.item() * int(mask.sum()), weight + int(mask.sum())
    result = {"eval_loss": total / max(weight, 1)}
    if eval_pair is not None:
        target, prompts = eval_pair
        stats = evaluate_pair(target, model, prompts, args.eval_gamma, 1.0, args.eval_max_new_tokens,
                              eos_id=args.eos_id, seed=args.seed)
        result["block_efficiency"], result["acceptance_rate"] = stats["block_efficiency"], stats["acceptance_rate"]
    model.train()
    return result


def format_seconds(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Pretrain (phases 0/1) or distill (phase 3) a Llama model.")
    p.add_argument("--mode", choices=["pretrain", "distill"], required=True)
    p.add_argument("--data", required=True, help="comma-separated .txt corpus / .jsonl example files")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True, help="run directory: ckpt.pt, model/ and log.jsonl")
    p.add_argument("--preset", default=None, help="model preset to train from scratch (model.PRESETS)")
    p.add_argument("--init", default=None, help="checkpoint to start from (e.g. the pretrained draft)")
    p.add_argument("--teacher", default=None, help="distill: the target model")
    p.add_argument("--loss", default="tvdpp", help="distill: kld, tvd, tvdpp (tvd++), rkl, jsd, ...")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="sequences per optimizer step (global)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="sequences per forward per rank")
    p.add_argument("--max-len", type=int, default=None, help="longest training sequence (default: context)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-interval", type=int, default=25)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--ckpt-interval", type=int, default=250)
    p.add_argument("--eval-prompts", default=None, help="JSONL prompts for block-efficiency evaluation")
    p.add_argument("--eval-target", default=None, help="pretrain: target to measure the draft against")
    p.add_argument("--eval-n-prompts", type=int, default=8)
    p.add_argument("--eval-gamma", type=int, default=4)
    p.add_argument("--eval-max-new-tokens", type=int, default=64)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = init_distributed(args.device)
    is_main = rank == 0
    torch.manual_seed(args.seed)
    tok = load_tokenizer(args.tokenizer)
    args.eos_id = tok.eos_id

    # --- the model being trained, and the frozen target for distillation / evaluation ---
    if (args.preset is None) == (args.init is None):
        raise ValueError("give exactly one of --preset (train from scratch) or --init (continue from a checkpoint)")
    model = (load_model(args.init, device) if args.init
             else Llama(get_config(args.preset, vocab_size=tok.vocab_size)).to(device))
    check_vocab(tok, model.config.vocab_size, args.init or f"preset {args.preset}")
    teacher, loss_fn = None, None
    if args.mode == "distill":
        if not args.teacher:
            raise ValueError("--mode distill needs --teacher (the target model)")
        loss_fn = get_loss(args.loss)
        teacher = load_model(args.teacher, device).requires_grad_(False)
        check_vocab(tok, teacher.config.vocab_size, args.teacher)
    eval_target = teacher if teacher is not None else (load_model(args.eval_target, device) if args.eval_target else None)
    eval_pair = None
    if eval_target is not None and args.eval_prompts:
        records = load_jsonl_prompts(args.eval_prompts)[: args.eval_n_prompts]
        eval_pair = (eval_target, [chat_prompt(tok, r["prompt"], r.get("system")) for r in records])

    # --- data ---
    max_len = args.max_len or model.config.max_seq_len
    if max_len > model.config.max_seq_len:
        raise ValueError(f"--max-len {max_len} exceeds the model's context ({model.config.max_seq_len})")
    train_examples, eval_examples = split_examples(load_examples(args.data.split(","), tok, max_len))
    micro_batch = args.micro_batch_size or max(1, args.batch_size // world)
    if args.batch_size % (world * micro_batch) != 0:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of world size ({world}) "
                         f"x --micro-batch-size ({micro_batch})")
    accumulation = args.batch_size // (world * micro_batch)

    # --- optimizer, resume ---
    optimizer = make_optimizer(model, args.lr, args.weight_decay, device)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path, step = os.path.join(args.out, "ckpt.pt"), 0
    if os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt["config"] != asdict(model.config):
            raise ValueError(f"{ckpt_path} was trained with model config {ckpt['config']}, not "
                             f"{asdict(model.config)}; use another --out or the matching --preset/--init")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        if is_main:
            print(f"resuming from {ckpt_path} at step {step}")
    train_model = torch.compile(model) if args.compile else model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)
    if is_main:
        print(f"{args.mode}: {count_params(model):,} parameters, {len(train_examples):,} train / "
              f"{len(eval_examples):,} held-out examples, {world} rank(s) x {micro_batch} x {accumulation} "
              f"accumulation = {args.batch_size} sequences per step, device {device}")

    def save_checkpoint():
        if is_main:
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "step": step, "config": asdict(model.config)}, ckpt_path)
            save_model(model, os.path.join(args.out, "model"))

    def log(record: dict):
        if is_main:
            print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()), flush=True)
            with open(os.path.join(args.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    model.train()
    started, tokens_seen, start_step = time.perf_counter(), 0, step
    while step < args.max_steps:
        lr = learning_rate(step, args.max_steps, args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # This rank's share of the step's global batch, in micro-batches.
        global_batch = [train_examples[i] for i in batch_indices(len(train_examples), args.batch_size, args.seed, step)]
        global_tokens = int(collate(global_batch, tok.pad_id)[2].sum())    # masked tokens of the whole step
        mine = global_batch[rank::world]
        generator = torch.Generator(device).manual_seed(args.seed * 1_000_003 + step)   # on-policy losses sample with it
        step_loss = torch.zeros((), device=device)
        for micro in range(accumulation):
            inputs, targets, mask = (t.to(device) for t in collate(mine[micro * micro_batch: (micro + 1) * micro_batch], tok.pad_id))
            # Weight each micro-batch's mean by its share of the global batch's tokens, so the
            # gradient is the mean over all masked tokens of the step, whatever the split.
            # (DDP averages gradients over ranks, hence the factor world.)
            share = int(mask.sum()) / global_tokens
            last = micro == accumulation - 1
            sync = train_model.no_sync() if (world > 1 and not last) else nullcontext()   # all-reduce once per step
            with sync, torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                loss = objective(train_model, teacher, loss_fn, inputs, targets, mask, generator)
                (loss * share * world).backward()
            step_loss += loss.detach() * share
            tokens_seen += inputs.numel() * world
        if world > 1:
            dist.all_reduce(step_loss)
        if not torch.isfinite(step_loss):
            raise ValueError(f"the loss became {step_loss.item()} at step {step}; lower --lr or check the "
                             f"data. The last good checkpoint in {args.out} is kept.")
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % args.log_interval == 0 or step == args.max_steps:
            elapsed = time.perf_counter() - started
            rate = tokens_seen / elapsed
            eta = elapsed / (step - start_step) * (args.max_steps - step)
            log({"step": step, "loss": step_loss.item(), "lr": lr, "tok/s": round(rate), "eta": format_seconds(eta)})
        if step % args.eval_interval == 0 or step == args.max_steps:
            if is_main:
                log({"step": step, **evaluate(model, teacher, loss_fn, eval_examples, tok.pad_id, device,
                                              micro_batch, eval_pair, args)})
        if step % args.ckpt_interval == 0 or step == args.max_steps:
            save_checkpoint()
    if step == start_step and is_main:
        print(f"{args.out} already finished {step} steps; nothing to do")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
