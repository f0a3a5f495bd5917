"""
train.py: phases 0, 1 and 3 of the recipe (PAPER.md section 2), one loop for all of them.

  --mode pretrain   next-token prediction (cross-entropy) on a plain-text corpus and/or on chat
                    examples with the prompt masked out. Phase 1 pretrains the draft on generic
                    text; phase 0 (synthetic world only) trains the stand-in chat TARGET.
  --mode distill    phase 3, knowledge distillation: the frozen target (--teacher) runs on the
                    fly under no_grad on the target-written data (distill_data.py) and the draft
                    matches its full next-token distribution at every RESPONSE position with
                    the chosen loss (--loss kld | tvd | tvdpp | lk | lk_hybrid | ..., losses.py).

Every example is one token sequence plus the index where the loss starts; batches group
examples of similar length (little padding) and a mask keeps padding and prompts out of the loss.

Runs survive being killed at any moment (SIGKILL included) and resume to the same weights, bit
for bit on CPU, because everything random or step-dependent is a pure function of (seed, step)
(the batch of step s, the samples of on-policy losses, the learning rate), so a checkpoint needs
no data-loader state; see `save_checkpoint` and `resume` for the rest. The same purity makes
DistributedDataParallel simple: under torchrun each rank takes its slice of the step's batch, and
a checkpoint resumes under any number of ranks.
"""

import argparse
import functools
import hashlib
import json
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from answers import load_distill_records
from checkpoints import load_model, save_model
from common import (differences, format_seconds, mix_seed, rank_and_world, replace_atomically, run_cli,
                    write_atomically)
from data import load_corpus, load_jsonl_examples, load_jsonl_prompts
from evaluate import evaluate_pair
from fast_decode import compile_blocks
from losses import get_loss
from model import Llama, count_params, get_config
from speculative import check_context
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
    examples = []
    for path in paths:
        if path.endswith(".txt"):
            for doc in load_corpus(path):
                ids = tok.encode(doc, bos=True, eos=True)
                # Windows overlap by one token: each token is a target exactly once.
                examples += [(ids[i: i + max_len], 1) for i in range(0, len(ids) - 1, max_len - 1)]
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"training data {path} not found; check --data")
        with open(path, encoding="utf-8", errors="replace") as f:
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


def fingerprint(examples: list[tuple[list[int], int]]) -> str:
    """A short hash of the tokenized examples: a resumed run must train on the same data."""
    return hashlib.sha256(json.dumps(examples).encode()).hexdigest()[:16]


BUCKET_BATCHES = 16   # batches whose examples are sorted by length together (see batch_indices)


def batch_indices(lengths: tuple[int, ...], batch_size: int, seed: int, step: int) -> list[int]:
    """The examples of `step`'s batch: a pure function of its arguments, so resuming and sharding
    over ranks need no data-loader state.

    Epoch e = step // (batches per epoch) visits a fresh permutation of the examples (seeded by
    seed and e; the n % batch_size left over sit the epoch out). Each window of BUCKET_BATCHES
    batches is sorted by length and cut into batches, so a batch holds examples of similar length
    and little of it is padding; then the epoch's batches are shuffled, so lengths do not come
    in order. Every example still weighs the same in expectation."""
    epoch, batch = divmod(step, len(lengths) // batch_size)
    return epoch_batches(tuple(lengths), batch_size, seed, epoch)[batch]


@functools.lru_cache(maxsize=2)      # computed once per epoch, not once per step
def epoch_batches(lengths: tuple[int, ...], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Epoch `epoch`'s batches, in the order they are trained (see batch_indices)."""
    per_epoch = len(lengths) // batch_size
    generator = torch.Generator().manual_seed(mix_seed(seed, epoch))
    order = torch.randperm(len(lengths), generator=generator).tolist()[: per_epoch * batch_size]
    window = BUCKET_BATCHES * batch_size
    order = [i for w in range(0, len(order), window) for i in sorted(order[w: w + window], key=lambda i: lengths[i])]
    batches = [order[b * batch_size: (b + 1) * batch_size] for b in range(per_epoch)]
    return [batches[b] for b in torch.randperm(per_epoch, generator=generator).tolist()]


PAD_MULTIPLE = 32     # on a GPU, batch lengths are rounded up to a multiple of this (see collate)


def collate(examples: list[tuple[list[int], int]], pad_id: int, multiple: int = 1, limit: int | None = None):
    """Right-pad into (inputs, targets, mask), each (B, L) with L = longest example - 1, rounded
    up to a multiple of `multiple` (but not past `limit`, the models' context).

    inputs[:, t] predicts targets[:, t] = ids[t + 1]; mask[:, t] is True where that target is
    a token we train on (at or after loss_start, and not padding). Why round L up: on a GPU each
    new sequence length costs set-up on first sight (cuDNN's attention plans among it, and
    torch.compile may compile again), and a run's batches would show it a hundred lengths; rounded
    up to a multiple of 32 they show at most max_len / 32. Padding at the right changes nothing
    before it (attention is causal) and the mask keeps it out of the loss.
    """
    longest = max(len(ids) for ids, _ in examples) - 1
    length = max(longest, min(-(-longest // multiple) * multiple, limit or math.inf))
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
# Optimisation
# ----------------------------------------------------------------------------------------------

def learning_rate(step: int, max_steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to lr, then cosine decay to min_ratio * lr at max_steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: Llama, lr: float, weight_decay: float):
    """AdamW over the trainable parameters; weight decay on matrices only (not on norms), as in nanoGPT."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    matrices = [p for p in trainable if p.dim() >= 2]
    vectors = [p for p in trainable if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=model.device.type == "cuda")


def on_device(batch, device: torch.device):
    """(inputs, targets, keep) of a collated batch on the device; keep holds the flat indices
    b * T + t of the trained positions, (N,), found here on the CPU: indexing with the boolean
    mask on the GPU would make the CPU wait for the GPU (to learn N), once per model."""
    inputs, targets, mask = batch
    keep = mask.flatten().nonzero().squeeze(1)                              # (N,)
    return inputs.to(device), targets.to(device), keep.to(device)


def objective(model, teacher, loss_fn, inputs, targets, keep, generator):
    """Mean loss over the trained positions `keep` (flat indices, see on_device) of one
    micro-batch (float32).

    Both models compute their logits only at those positions (in distillation the answers,
    about half of a batch of prompts and answers): the head, (dim x vocab) and the largest matrix of a small
    model with a big vocabulary, then multiplies N rows instead of B x T, and no (B, T, V)
    logits tensor is ever written or copied."""
    draft_logits = model(inputs, keep=keep)                                 # (N, V)
    trained = targets.flatten()[keep]                                       # (N,)
    if teacher is None:   # pretraining: cross-entropy against the data tokens
        return F.cross_entropy(draft_logits.float(), trained)
    with torch.no_grad():
        target_logits = teacher(inputs, keep=keep)                          # (N, V), no gradient
    return loss_fn(draft_logits[None], target_logits[None], trained[None], None, generator=generator)


# ----------------------------------------------------------------------------------------------
# The run: its models, its data, its directory (checkpoint, log, resume)
# ----------------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything one training run works with, built once by `setup`."""
    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    tok: object
    model: Llama                  # the model being trained
    teacher: Llama | None         # distill: the frozen target
    loss_fn: object
    eval_pair: tuple | None       # (target, prompts) for the block-efficiency check, or None
    train_examples: list
    eval_examples: list
    micro_batch: int
    accumulation: int
    settings: dict                # what decides the weights (checked on resume)
    lengths: tuple = ()           # of the training examples, for the length-bucketed batches

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def path(self, name: str) -> str:
        return os.path.join(self.args.out, name)

    def collate(self, examples: list[tuple[list[int], int]]):
        """collate() for this run: on a GPU, lengths rounded up to PAD_MULTIPLE; never past the
        context of the models."""
        multiple = PAD_MULTIPLE if self.device.type == "cuda" else 1
        return collate(examples, self.tok.pad_id, multiple, shared_context(self.model, self.teacher))


def shared_context(*models) -> int:
    """The longest sequence every one of the models (None: absent) takes."""
    return min(m.config.max_seq_len for m in models if m is not None)


def init_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun: one process per GPU with NCCL, or gloo on CPU."""
    rank, world = rank_and_world()
    use_cuda = torch.cuda.is_available() and device_arg in (None, "cuda")
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return rank, world, torch.device("cuda", local_rank)
    return rank, world, torch.device(device_arg or "cpu")


def build_models(args, tok, device):
    """(model being trained, teacher or None, loss function or None, eval_pair or None)."""
    # The trained weights are float32 whatever --init stores (a bf16 export, say): AdamW's small
    # updates vanish in bf16 weights, and on a CPU bf16 products run far slower than float32.
    # Speed on the GPU comes from autocast, which computes in bf16 from these float32 weights.
    model = (load_model(args.init, device, torch.float32, n_layers=args.init_layers) if args.init
             else Llama(get_config(args.preset, vocab_size=tok.vocab_size)).to(device))
    check_vocab(tok, model.config.vocab_size, args.init or f"preset {args.preset}")
    if args.freeze_embeddings:    # no gradient, so no optimizer state and no update (make_optimizer)
        model.tok_embeddings.weight.requires_grad_(False)
    teacher, loss_fn = None, None
    if args.mode == "distill":
        loss_fn = get_loss(args.loss)
        teacher = load_model(args.teacher, device).requires_grad_(False)
        check_vocab(tok, teacher.config.vocab_size, args.teacher)
    eval_target = teacher
    if eval_target is None and args.eval_target:
        eval_target = load_model(args.eval_target, device)
        check_vocab(tok, eval_target.config.vocab_size, args.eval_target)
    if eval_target is None or not args.eval_prompts:
        return model, teacher, loss_fn, None
    records = load_jsonl_prompts(args.eval_prompts)[: args.eval_n_prompts]
    prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in records]
    for i, prompt in enumerate(prompts, 1):
        for checked in (model, eval_target):
            check_context(checked, len(prompt) + args.eval_max_new_tokens, f"prompt {i} of {args.eval_prompts} "
                          f"with --eval-max-new-tokens {args.eval_max_new_tokens}")
    return model, teacher, loss_fn, (eval_target, prompts)


def run_settings(args, examples: list[tuple[list[int], int]]) -> dict:
    """Everything besides the model config that decides the weights a run ends with. Not in
    here, because they change nothing or only the float rounding: the device, the number of
    ranks, --micro-batch-size, --compile and the logging / evaluation / checkpoint intervals."""
    return {"mode": args.mode, "loss": get_loss(args.loss).__name__ if args.mode == "distill" else None,
            "seed": args.seed, "max_steps": args.max_steps, "batch_size": args.batch_size,
            "lr": args.lr, "warmup": args.warmup, "weight_decay": args.weight_decay,
            "grad_clip": args.grad_clip, "data_hash": fingerprint(examples),
            **({"freeze_embeddings": True} if args.freeze_embeddings else {})}


def setup(args) -> Run:
    """Models, data and batch layout of the run, every file and flag checked before training."""
    rank, world, device = init_distributed(args.device)
    prepare_run_dir(args.out)
    torch.manual_seed(args.seed)
    tok = load_tokenizer(args.tokenizer)
    model, teacher, loss_fn, eval_pair = build_models(args, tok, device)
    context = shared_context(model, teacher)
    max_len = args.max_len or context
    if max_len > context:
        raise ValueError(f"--max-len {max_len} exceeds the context of the model{'s' if teacher else ''} "
                         f"({context}); lower --max-len")
    examples = load_examples(args.data.split(","), tok, max_len)
    train_examples, eval_examples = split_examples(examples)
    if len(train_examples) < args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size} is more than the {len(train_examples)} training "
                         "examples; lower --batch-size or add data")
    micro_batch = args.micro_batch_size or max(1, args.batch_size // world)
    if args.batch_size % (world * micro_batch) != 0:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of world size ({world}) "
                         f"x --micro-batch-size ({micro_batch})")
    return Run(args, rank, world, device, tok, model, teacher, loss_fn, eval_pair, train_examples, eval_examples,
               micro_batch, args.batch_size // (world * micro_batch), run_settings(args, examples),
               tuple(len(ids) for ids, _ in train_examples))


def prepare_run_dir(out: str) -> None:
    """Create --out and prove it writable now, not after an hour of training."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ValueError(f"cannot write the run directory {out} ({error.strerror}); "
                         "choose another --out") from None


CHECKPOINT_KEYS = ("model", "optimizer", "step", "config", "settings", "rng")


def load_checkpoint(path: str, device: torch.device) -> dict:
    """Read ckpt.pt. weights_only=True: unpickling can run arbitrary code, so accept nothing
    but tensors and plain containers."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:   # a damaged file raises many types: UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"{path} cannot be read ({type(error).__name__}); it is damaged or not a "
                         "train.py checkpoint: delete it to start the run over, or choose another --out") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise ValueError(f"{path} lacks {missing}; it was not written by this train.py: "
                         "delete it to start the run over, or choose another --out")
    return ckpt


def resume(run: Run, optimizer) -> int | None:
    """Continue from --out/ckpt.pt if there is one: its step (None if the run starts afresh).

    ckpt.pt records the model config and the settings that decide the result (seed, batch
    size, learning-rate schedule, a hash of the tokenized data, ...): resuming with other ones
    would not continue the same run, so it is refused with the differences named. log.jsonl is
    cut back to the checkpoint's step, so the recomputed steps are not logged twice."""
    ckpt_path, step = run.path("ckpt.pt"), None
    if os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, run.device)
        config = asdict(run.model.config)
        if ckpt["config"] != config:
            raise ValueError(f"{ckpt_path} holds a model of another config ({differences(ckpt['config'], config)}); "
                             "use the --preset/--init it was trained with, or another --out")
        if ckpt["settings"] != run.settings:
            raise ValueError(f"{ckpt_path} belongs to a run with other settings ({differences(ckpt['settings'], run.settings)}); "
                             f"rerun the original command to resume it, or use another --out "
                             f"(with --init {run.path('model')} to start from its weights)")
        run.model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["cpu"].cpu())
        if run.device.type == "cuda" and ckpt["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), run.device)
        step = ckpt["step"]
        if run.is_main:
            print(f"resuming from {ckpt_path} at step {step}")
    if run.world > 1:
        # Rank 0 alone writes ckpt.pt but every rank reads it, so every rank must see the same
        # file: with --out on one host's local disk, the other hosts' ranks would start over at
        # step 0 and train on other batches with other optimizer states until they hang.
        steps = [None] * run.world
        dist.all_gather_object(steps, step)
        if len(set(steps)) > 1:
            raise ValueError(f"the ranks found different checkpoints in {ckpt_path} (the step of rank r "
                             f"is entry r of {steps}); on several hosts, put --out on a filesystem "
                             "that every host shares")
    if run.is_main:
        trim_log(run.path("log.jsonl"), step or 0)
    return step


def save_checkpoint(run: Run, optimizer, step: int, saved_step: int | None) -> None:
    """model/ first, then ckpt.pt, each written atomically (temp file, fsync, rename): the last
    good checkpoint is never replaced by a partial one, and a finished ckpt.pt means the final
    model/ is complete too. torch's global RNG state is saved although nothing in the loop draws
    from it today, so that resume stays exact if something ever does (e.g. dropout)."""
    if not run.is_main:
        return
    rng = {"cpu": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None}
    try:
        save_model(run.model, run.path("model"))
        state = {"model": run.model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "config": asdict(run.model.config), "settings": run.settings, "rng": rng}
        replace_atomically(run.path("ckpt.pt"), lambda tmp: torch.save(state, tmp))
    except OSError as error:                                    # e.g. a full disk
        last = f"step {saved_step}" if saved_step is not None else "the start"
        raise ValueError(f"cannot save the checkpoint of step {step} in {run.args.out} ({error.strerror}); "
                         f"make room and run the same command again: it resumes from {last}") from None


def trim_log(path: str, step: int) -> None:
    """Keep only the complete records of steps <= `step`, atomically (a line torn by a kill
    would break every reader of the log)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            complete = line.endswith("\n") and json.loads(line)["step"] <= step
        except (json.JSONDecodeError, KeyError, TypeError):
            complete = False
        if complete:
            kept.append(line)
    if kept != lines:
        write_atomically(path, "".join(kept))


def log(run: Run, record: dict) -> None:
    if run.is_main:
        print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()), flush=True)
        with open(run.path("log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------
# One step, the held-out evaluation, the loop
# ----------------------------------------------------------------------------------------------

def train_step(run: Run, train_model, optimizer, step: int, saved_step: int | None):
    """One optimizer step on step `step`'s batch: (its loss as a tensor, its learning rate, the
    padded tokens it processed)."""
    args = run.args
    lr = learning_rate(step, args.max_steps, args.lr, args.warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr
    global_batch = [run.train_examples[i] for i in batch_indices(run.lengths, args.batch_size, args.seed, step)]
    global_tokens = int(collate(global_batch, run.tok.pad_id)[2].sum())     # trained tokens of the whole step
    mine = global_batch[run.rank::run.world]                                # this rank's share
    generator = torch.Generator(run.device).manual_seed(mix_seed(args.seed, step))  # on-policy losses sample with it
    step_loss, processed = torch.zeros((), device=run.device), 0
    for micro in range(run.accumulation):
        batch = run.collate(mine[micro * run.micro_batch: (micro + 1) * run.micro_batch])
        # Weight each micro-batch's mean by its share of the step's trained tokens, so the
        # gradient is the mean over all of them, whatever the split (DDP averages over ranks,
        # hence the factor world). Counted on the CPU: on the GPU the count would make the CPU wait.
        share = int(batch[2].sum()) / global_tokens
        inputs, targets, keep = on_device(batch, run.device)
        last = micro == run.accumulation - 1
        sync = train_model.no_sync() if (run.world > 1 and not last) else nullcontext()   # all-reduce once per step
        with sync, torch.autocast(run.device.type, torch.bfloat16, enabled=run.device.type == "cuda"):
            loss = objective(train_model, run.teacher, run.loss_fn, inputs, targets, keep, generator)
            (loss * share * run.world).backward()
        step_loss += loss.detach() * share
        processed += inputs.numel() * run.world
    if run.world > 1:
        dist.all_reduce(step_loss)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip)
    # Stop BEFORE the optimizer step: a non-finite gradient would poison the weights (and the
    # next checkpoint). Every rank sees the same all-reduced loss and gradients.
    if not (torch.isfinite(step_loss) and torch.isfinite(grad_norm)):
        kept = (f"the last good checkpoint (step {saved_step}) stays in {run.path('ckpt.pt')}, and --init "
                f"{run.path('model')} starts from its weights" if saved_step is not None
                else "no checkpoint was written yet")
        raise ValueError(f"training diverged at step {step + 1}: loss {step_loss.item():.4g}, gradient norm "
                         f"{grad_norm.item():.4g} (learning rate {lr:.3g}); lower --lr or lengthen --warmup "
                         f"(or check the data) and train into a new --out; {kept}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, lr, processed


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Held-out loss (the training objective) and, if a target and prompts are given, the
    block efficiency of speculative decoding at --eval-gamma on a few held-out prompts."""
    run.model.eval()
    total, weight = 0.0, 0
    for i in range(0, len(run.eval_examples), run.micro_batch):
        batch = run.collate(run.eval_examples[i: i + run.micro_batch])
        inputs, targets, keep = on_device(batch, run.device)
        with torch.autocast(run.device.type, torch.bfloat16, enabled=run.device.type == "cuda"):
            loss = objective(run.model, run.teacher, run.loss_fn, inputs, targets, keep,
                             torch.Generator(run.device).manual_seed(0))
        total, weight = total + loss.item() * len(keep), weight + len(keep)
    result = {"eval_loss": total / max(weight, 1)}
    if run.eval_pair is not None:
        target, prompts = run.eval_pair
        [stats] = evaluate_pair(target, run.model, prompts, [run.args.eval_gamma], 1.0, run.args.eval_max_new_tokens,
                                stop_ids=run.tok.stop_ids, seed=run.args.seed)
        result["block_efficiency"], result["acceptance_rate"] = stats["block_efficiency"], stats["acceptance_rate"]
    run.model.train()
    return result


def train(run: Run, optimizer, step: int, saved_step: int | None) -> None:
    """Steps `step`..max_steps, logging, evaluating and checkpointing at their intervals."""
    args = run.args
    if args.compile:
        # Block by block, as the decode paths do (fast_decode.compile_blocks): each block's norms,
        # RoPE, SwiGLU and residual adds fused into few kernels, forward and backward; the
        # teacher's blocks too (its forward is a large part of a distillation step).
        for model in (run.model, run.teacher):
            if model is not None:
                compile_blocks(model)
    train_model = run.model
    if run.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)
    run.model.train()
    started, processed, start_step = time.perf_counter(), 0, step
    while step < args.max_steps:
        loss, lr, tokens = train_step(run, train_model, optimizer, step, saved_step)
        processed += tokens
        step += 1
        if step % args.log_interval == 0 or step == args.max_steps:
            elapsed = time.perf_counter() - started
            eta = elapsed / (step - start_step) * (args.max_steps - step)
            log(run, {"step": step, "loss": loss.item(), "lr": lr, "tok/s": round(processed / elapsed),
                      "eta": format_seconds(eta)})
        if (step % args.eval_interval == 0 or step == args.max_steps) and run.is_main:
            log(run, {"step": step, **evaluate(run)})
        if step % args.ckpt_interval == 0 or step == args.max_steps:
            save_checkpoint(run, optimizer, step, saved_step)
            saved_step = step
    if step == start_step and run.is_main:
        print(f"{args.out} already finished {step} steps; nothing to do")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Pretrain (phases 0/1) or distill (phase 3) a Llama model.")
    p.add_argument("--mode", choices=["pretrain", "distill"], required=True)
    p.add_argument("--data", required=True, help="comma-separated .txt corpus / .jsonl example files")
    p.add_argument("--tokenizer", required=True, help="tokenizer.model or a .gguf (the target's vocabulary)")
    p.add_argument("--out", required=True, help="run directory: ckpt.pt, model/ and log.jsonl")
    p.add_argument("--preset", default=None, help="model preset to train from scratch (model.PRESETS)")
    p.add_argument("--init", default=None, help="checkpoint to start from (e.g. the pretrained draft)")
    p.add_argument("--init-layers", type=int, default=None,
                   help="with --init: keep only its first N blocks (a draft cut from the target)")
    p.add_argument("--freeze-embeddings", action="store_true",
                   help="keep the token embedding (and a tied head) as --init has it: a draft cut from its target "
                        "then shares them, and save_model can store it without them (checkpoints.save_model)")
    p.add_argument("--teacher", default=None, help="distill: the target model (a directory or a .gguf)")
    p.add_argument("--loss", default="tvdpp", help="distill: kld, tvd, tvdpp (tvd++), lk, lk_hybrid, ...")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="sequences per optimizer step (global)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="sequences per forward per rank")
    p.add_argument("--max-len", type=int, default=None, help="longest training sequence (default: context)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="the whole run is reproducible from it (bit for bit on CPU)")
    p.add_argument("--log-interval", type=int, default=25)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--ckpt-interval", type=int, default=250)
    p.add_argument("--eval-prompts", default=None, help="JSONL prompts for block-efficiency evaluation")
    p.add_argument("--eval-target", default=None, help="pretrain: target to measure the draft against")
    p.add_argument("--eval-n-prompts", type=int, default=8)
    p.add_argument("--eval-gamma", type=int, default=4)
    p.add_argument("--eval-max-new-tokens", type=int, default=64)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--compile", action="store_true", help="torch.compile every block of the model and the teacher (GPU)")
    return p.parse_args(argv)


def check_args(args) -> None:
    """Every flag that needs no file is checked first, before anything is loaded or trained."""
    at_least = {"--max-steps": (args.max_steps, 1), "--batch-size": (args.batch_size, 1),
                "--micro-batch-size": (args.micro_batch_size, 1), "--max-len": (args.max_len, 2),
                "--warmup": (args.warmup, 0), "--log-interval": (args.log_interval, 1),
                "--eval-interval": (args.eval_interval, 1), "--ckpt-interval": (args.ckpt_interval, 1),
                "--eval-n-prompts": (args.eval_n_prompts, 1), "--eval-gamma": (args.eval_gamma, 1),
                "--eval-max-new-tokens": (args.eval_max_new_tokens, 1), "--init-layers": (args.init_layers, 1)}
    for flag, (value, minimum) in at_least.items():
        if value is not None and value < minimum:
            raise ValueError(f"{flag} must be >= {minimum}, got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not (math.isfinite(args.grad_clip) and args.grad_clip > 0) or not args.weight_decay >= 0:
        raise ValueError(f"--grad-clip must be > 0 and --weight-decay >= 0, got {args.grad_clip} and {args.weight_decay}")
    if (args.preset is None) == (args.init is None):
        raise ValueError("give exactly one of --preset (train from scratch) or --init (continue from a checkpoint)")
    if args.init_layers is not None and args.init is None:
        raise ValueError("--init-layers cuts the checkpoint given by --init; give --init too")
    if args.freeze_embeddings and args.init is None:
        raise ValueError("--freeze-embeddings keeps the embedding of --init (a draft's target); give --init too")
    if args.preset is not None:
        get_config(args.preset)                 # an unknown preset names the valid ones
    if args.mode == "distill":
        if not args.teacher:
            raise ValueError("--mode distill needs --teacher (the target model)")
        get_loss(args.loss)                     # an unknown loss names the valid ones


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    run = setup(args)
    optimizer = make_optimizer(run.model, args.lr, args.weight_decay)
    saved_step = resume(run, optimizer)
    if run.is_main:
        print(f"{args.mode}: {count_params(run.model):,} parameters, {len(run.train_examples):,} train / "
              f"{len(run.eval_examples):,} held-out examples, {run.world} rank(s) x {run.micro_batch} x "
              f"{run.accumulation} accumulation = {args.batch_size} sequences per step, device {run.device}")
    train(run, optimizer, saved_step or 0, saved_step)
    if run.world > 1:
        # Every rank waits here for rank 0's last evaluation and checkpoint: a rank that tears its
        # gloo connections down while a peer still uses them can abort at exit ("terminate called
        # without an active exception"), seen about once in five two-rank test runs on a CPU.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
