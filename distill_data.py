"""
distill_data.py: phase 2 of the recipe, the TARGET writes the distillation data set.

A draft model must imitate the chat model's answers, not the pretraining text (PAPER.md section 2). So the
seed prompts are wrapped in the target's chat template and the target answers them. Speculative
decoding is later run at many temperatures and top-p values, with and without system prompts,
and each setting gives a different target distribution; the paper therefore generates the data
under a GRID of sampling settings, so that the draft sees every distribution it will be
asked to match.

The layout of the work:
  setting  {"temperature", "top_p", "system"}: one point of the grid
  job      one (prompt, setting) pair, with a stable index "job" -> exactly one output record
  batch    consecutive jobs with the same temperature and top-p, at most --batch-size of them
           (a Decoder samples a whole batch with one temperature and top-p)

Reproducibility is the design principle. Batches are FIXED by the job order, and batch b draws
its randomness from its own generator seeded with (seed, b). So a batch's records depend on
nothing but the command and b, which buys three things at once:
  * resume: after a crash (even SIGKILL) the same command skips the finished batches and the
    final file is byte-for-byte what an uninterrupted run writes;
  * sharding: under torchrun, rank r answers batches b with b % WORLD_SIZE == r and writes
    `<out>.rank<r>-of-<w>.jsonl`; the union of the shards equals the single-process output;
  * merging needs no communication: every rank, when done, merges the shards into <out>
    (sorted by job, atomically) if they hold every job. The last rank to finish sees them all.
    No process group, barrier or timeout is involved; rerunning the command merges again.

Crash safety: each batch is appended with one write, flushed and fsync'ed. A killed process can
only leave a torn last line or part of a batch; on restart those are dropped (the file is
rewritten atomically) and the batch is generated again, identically.

    python distill_data.py --target ckpt/target --tokenizer tok.model \
        --prompts world/seed_prompts.jsonl --out distill.jsonl
    torchrun --nproc-per-node 8 distill_data.py ...same arguments...
"""

import argparse
import json
import os
import sys
import time

import torch

import fast_decode
from answers import parse_record, read_lines
from checkpoints import DTYPES, load_model
from common import check_output, format_seconds, mix_seed, parse_list, rank_and_world, run_cli, write_atomically
from data import load_jsonl_prompts
from model import Llama
from speculative import Decoder, check_sampling
from tokenizer import Tokenizer, chat_prompt, check_vocab, load_tokenizer

# Llama 2's default system prompt opens with this sentence (Meta's llama/generation.py).
DEFAULT_SYSTEM = "You are a helpful, respectful and honest assistant."
SYSTEM_CHOICES = {"with": True, "without": False}


# ----------------------------------------------------------------------------------------------
# The plan: settings -> jobs -> batches (pure functions)
# ----------------------------------------------------------------------------------------------

def sampling_grid(temperatures: list[float], top_ps: list[float], systems: list[bool]) -> list[dict]:
    """Every (temperature, top_p, system) setting, nested in that order, without duplicates.

    Temperature 0 is greedy decoding: the argmax does not depend on top-p, so T=0 gets a single
    top_p=1.0 entry instead of several settings that would produce identical data.
    """
    if not temperatures or not top_ps or not systems:
        raise ValueError("the sampling grid needs at least one temperature, top-p and system choice")
    for value in temperatures:
        check_sampling(value, None, None)
    for value in top_ps:
        check_sampling(1.0, None, value)
    grid = []
    for temperature in temperatures:
        for top_p in top_ps if temperature > 0 else [1.0]:
            for system in systems:
                setting = {"temperature": float(temperature), "top_p": float(top_p), "system": bool(system)}
                if setting not in grid:
                    grid.append(setting)
    return grid


def make_jobs(prompts: list[dict], grid: list[dict], settings_per_prompt: int | None = None) -> list[dict]:
    """One job per (prompt, setting), ordered by setting and then by prompt.

    settings_per_prompt=k (default: the whole grid) gives prompt i only the settings i, i+1, ...,
    i+k-1 (mod the grid size): every setting still gets about k/len(grid) of the prompts, at
    k/len(grid) of the cost. "system": True uses the record's own system prompt if it has one,
    else DEFAULT_SYSTEM; False uses none.
    """
    k = len(grid) if settings_per_prompt is None else settings_per_prompt
    if not 1 <= k <= len(grid):
        raise ValueError(f"settings per prompt must be in 1..{len(grid)} (the grid size), got {k}")
    jobs = []
    for s, setting in enumerate(grid):
        for i, record in enumerate(prompts):
            if (s - i) % len(grid) >= k:         # setting s is not among i, i+1, ..., i+k-1
                continue
            system = (record.get("system") or DEFAULT_SYSTEM) if setting["system"] else None
            jobs.append({"job": len(jobs), "task": record.get("task"), "system": system,
                         "prompt": record["prompt"], "temperature": setting["temperature"],
                         "top_p": setting["top_p"]})
    return jobs


def make_batches(jobs: list[dict], batch_size: int) -> list[list[int]]:
    """Job indices cut into batches of consecutive jobs that share temperature and top-p."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batches, previous = [], None
    for job in jobs:
        setting = (job["temperature"], job["top_p"])
        if setting != previous or len(batches[-1]) == batch_size:
            batches.append([])
        batches[-1].append(job["job"])
        previous = setting
    return batches


def add_prompt_ids(jobs: list[dict], batches: list[list[int]], tok: Tokenizer, max_seq_len: int,
                   max_new_tokens: int, seed: int) -> None:
    """Add what a record inherits from the command: its templated prompt ids, the seed, and its
    batch's cap on new tokens, min(max_new_tokens, context - longest prompt of the batch)."""
    if max_new_tokens < 1:
        raise ValueError(f"max new tokens must be >= 1, got {max_new_tokens}")
    for batch in batches:
        for j in batch:
            job = jobs[j]
            job["prompt_ids"] = chat_prompt(tok, job["prompt"], job["system"])
            if len(job["prompt_ids"]) >= max_seq_len:
                raise ValueError(f"job {j} (prompt {job['prompt'][:50]!r}...) has {len(job['prompt_ids'])} "
                                 f"prompt tokens, leaving no room for an answer in the target's context "
                                 f"of {max_seq_len}; shorten or remove that prompt")
        cap = min(max_new_tokens, max_seq_len - max(len(jobs[j]["prompt_ids"]) for j in batch))
        for j in batch:
            jobs[j].update(seed=seed, max_new_tokens=cap)


# ----------------------------------------------------------------------------------------------
# Files: fsync'ed appends, atomic rewrites (reading them back: answers.py)
# ----------------------------------------------------------------------------------------------

def append_durably(path: str, text: str) -> None:
    """Append in one write and force it to disk before going on."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def resume(path: str, jobs: list[dict], batches: list[list[int]]) -> set[int]:
    """The batches already complete in `path`. A torn last line and the records of a batch cut
    short by a crash are dropped (rewriting the file atomically); records that the current
    command would not have written are an error, since mixing two commands' data is silent harm."""
    if not os.path.exists(path):
        return set()
    lines, torn = read_lines(path)
    found = {}                                  # job index -> its line, in file order
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = parse_record(line, f"{path}:{n}")
        j = record["job"]
        if not 0 <= j < len(jobs) or any(record.get(key) != value for key, value in jobs[j].items()):
            raise ValueError(f"{path}:{n}: job {j} was written by a different command (other prompts, "
                             "sampling grid, seed, max new tokens or tokenizer); remove the file or "
                             "choose another --out")
        if j in found:
            raise ValueError(f"{path}:{n}: job {j} appears twice; were two runs writing this file "
                             "at once? Remove the file or choose another --out")
        found[j] = line
    complete = {b for b, batch in enumerate(batches) if all(j in found for j in batch)}
    batch_of = {j: b for b, batch in enumerate(batches) for j in batch}
    kept = [line for j, line in found.items() if batch_of[j] in complete]
    if torn or len(kept) < len(lines):
        write_atomically(path, "".join(line + "\n" for line in kept))
        print(f"{path}: dropped {len(lines) + torn - len(kept)} line(s) of an interrupted batch",
              file=sys.stderr)
    return complete


def shard_path(out: str, rank: int, world: int) -> str:
    return out if world == 1 else f"{out}.rank{rank}-of-{world}.jsonl"


def merge_shards(out: str, world: int, n_jobs: int) -> bool:
    """Write `out` from all shards, sorted by job, if together they hold jobs 0..n_jobs-1
    (a rank still writing may have a torn last line: it simply is not complete yet)."""
    found = {}
    for rank in range(world):
        path = shard_path(out, rank, world)
        if not os.path.exists(path):
            return False
        lines, _ = read_lines(path)
        for n, line in enumerate(lines, 1):
            if line.strip():
                found[parse_record(line, f"{path}:{n}")["job"]] = line
    if sorted(found) != list(range(n_jobs)):
        return False
    write_atomically(out, "".join(found[j] + "\n" for j in range(n_jobs)))
    return True


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------

def distill(model: Llama, tok: Tokenizer, jobs: list[dict], out: str, max_new_tokens: int = 160,
            batch_size: int = 32, seed: int = 0, rank: int = 0, world: int = 1, graphs: bool = False,
            compile_sampling: bool = False) -> str:
    """Answer this rank's batches of `jobs` with the target, appending records to its file
    (returned); with world > 1, also merge the shards into `out` once every job is done.
    graphs, compile_sampling: the decoders' options of a decode path (fast_decode.apply_decode_path); they change
    the speed, and not the records (compiled sampling: up to float rounding)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1} (WORLD_SIZE={world})")
    batches = make_batches(jobs, batch_size)
    add_prompt_ids(jobs, batches, tok, model.config.max_seq_len, max_new_tokens, seed)
    path = shard_path(out, rank, world)
    mine = [b for b in range(len(batches)) if b % world == rank]
    done = resume(path, jobs, batches)
    todo = [b for b in mine if b not in done]
    total = sum(len(batches[b]) for b in mine)
    written = total - sum(len(batches[b]) for b in todo)
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    # One decoder per batch size (the last batch of a setting may be smaller), sized for the
    # longest prompt plus its answer, so that every batch reuses its preallocated state.
    n_slots = max((len(job["prompt_ids"]) + job["max_new_tokens"] for job in jobs), default=1)
    decoders = {}
    started, new_tokens = time.perf_counter(), 0
    for i, b in enumerate(todo):
        batch = [jobs[j] for j in batches[b]]
        if len(batch) not in decoders:
            decoders[len(batch)] = Decoder(model, len(batch), n_slots, graphs, compile_sampling)
        # The batch's randomness depends only on (seed, b): resumed and sharded runs repeat it.
        generator = torch.Generator(model.device).manual_seed(mix_seed(seed, b))
        responses = decoders[len(batch)].generate(
            [job["prompt_ids"] for job in batch], batch[0]["max_new_tokens"], batch[0]["temperature"], None,
            batch[0]["top_p"], tok.stop_ids, generator, tok.pad_id)
        records = [{**job, "response_ids": ids, "response": tok.decode(ids), "finished": ids[-1] in tok.stop_ids}
                   for job, ids in zip(batch, responses)]
        append_durably(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        written += len(records)
        new_tokens += sum(map(len, responses))
        elapsed = time.perf_counter() - started
        print(f"{tag}{written}/{total} records, {new_tokens / elapsed:.1f} new tokens/s, "
              f"ETA {format_seconds(elapsed / (i + 1) * (len(todo) - i - 1))}", file=sys.stderr, flush=True)
    if not todo:
        print(f"{tag}{path}: all {total} records already there", file=sys.stderr)
    if world > 1:
        # Even a rank that owns no batch leaves a (then empty) shard: merge_shards waits for all.
        append_durably(path, "")
        if merge_shards(out, world, len(jobs)):
            print(f"{tag}merged {world} shards into {out} ({len(jobs)} records)", file=sys.stderr)
    return path


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def parse_systems(text: str) -> list[bool]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in SYSTEM_CHOICES for name in names):
        raise ValueError(f"--systems takes a comma-separated list of 'with' and 'without', got {text!r}")
    return [SYSTEM_CHOICES[name] for name in names]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Phase 2: the target answers the seed prompts "
                                     "under a grid of sampling settings (JSONL, resumable, torchrun-able).")
    parser.add_argument("--target", required=True, help="target checkpoint (a directory or a .gguf)")
    parser.add_argument("--tokenizer", default=None, help="the target's tokenizer.model (default: a .gguf target's own)")
    parser.add_argument("--prompts", required=True, help='JSONL of {"prompt": ..., "system": optional}')
    parser.add_argument("--out", required=True, help="output JSONL (resumed if it exists)")
    parser.add_argument("--temperatures", default="0,0.3,0.7,1.0")
    parser.add_argument("--top-ps", default="0.95,1.0")
    parser.add_argument("--systems", default="with,without", help="'with', 'without' or both")
    parser.add_argument("--settings-per-prompt", type=int, default=None,
                        help="answer each prompt under only K settings, rotating through the grid")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    parser.add_argument("--decode-path", default="eager", choices=fast_decode.DECODE_PATHS,
                        help="how decode steps run on a GPU (fast_decode.py); the records do not depend on it")
    args = parser.parse_args(argv)

    # Everything cheap is checked before the (possibly large) target is loaded.
    grid = sampling_grid(parse_list(args.temperatures, float), parse_list(args.top_ps, float),
                         parse_systems(args.systems))
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError("--batch-size and --max-new-tokens must be >= 1")
    rank, world = rank_and_world()
    check_output(args.out)
    jobs = make_jobs(load_jsonl_prompts(args.prompts), grid, args.settings_per_prompt)
    tokenizer_path = args.tokenizer or (args.target if args.target.endswith(".gguf") else None)
    if tokenizer_path is None:
        raise ValueError("give --tokenizer (only a .gguf target carries its own tokenizer)")
    tok = load_tokenizer(tokenizer_path)
    device = args.device
    if device == "cuda" and world > 1:          # one GPU per rank
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    model = load_model(args.target, device, DTYPES.get(args.dtype))
    check_vocab(tok, model.config.vocab_size, args.target)
    options = fast_decode.apply_decode_path([model], args.decode_path)
    print(f"{len(grid)} settings x prompts -> {len(jobs)} jobs; rank {rank} of {world}", file=sys.stderr)
    distill(model, tok, jobs, args.out, args.max_new_tokens, args.batch_size, args.seed, rank, world, **options)


if __name__ == "__main__":
    run_cli(main)
