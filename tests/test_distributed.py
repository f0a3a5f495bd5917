"""Tests for the torchrun paths of train.py and distill_data.py: real `torchrun
--nproc_per_node=2` launches on CPU, where train.py picks the gloo backend.

Data parallelism must not change the maths, only who computes what:
  * train.py: the global batch of step s is the same examples whatever the world size; each rank
    takes its slice, weights each micro-batch loss by its share of the step's masked tokens, and
    DDP averages the gradients. So 2 ranks x 2 micro-batches of 2 sequences must give the losses
    and the weights of 1 process x 2 micro-batches of 4, up to float rounding order. And since
    the world size is no part of a run's state, a run killed in one process must resume under
    torchrun as if nothing had happened (and rank 0's checkpoint must satisfy one process).
  * distill_data.py: rank r answers the batches b with b % 2 == r; the merged file must be
    byte-for-byte the single-process file, and each shard must resume on its own.

The single-process references run in this process (train.main / distill_data.main: the code
that `python train.py` runs, without paying the torch import again); each torchrun launch costs
several seconds, so the file makes three: pretrain, distillation data, distill.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import data
import distill_data
import train
from answers import load_distill_records
from checkpoints import save_model
from model import Llama, ModelConfig
from tokenizer import train_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_RTOL = 1e-5        # the same sums in another order: float32 rounding, nothing more
WEIGHT_ATOL = 1e-5
# A global batch of 8 sequences. Adam moves every weight by about --lr per step, so lr 3e-3 is
# 300x the weight tolerance: a wrong gradient cannot hide below it.
TRAIN_FLAGS = ["--batch-size", "8", "--lr", "3e-3", "--warmup", "0", "--log-interval", "1",
               "--eval-interval", "1000", "--ckpt-interval", "1", "--seed", "0", "--device", "cpu"]
SINGLE = ["--micro-batch-size", "4"]      # 1 process:  4 sequences x 2 accumulation steps
TWO_RANKS = ["--micro-batch-size", "2"]   # 2 ranks:    2 sequences x 2 accumulation steps each
DISTILL_DATA_FLAGS = ["--temperatures", "0,1", "--top-ps", "1.0", "--systems", "with,without",
                      "--settings-per-prompt", "1", "--max-new-tokens", "8", "--batch-size", "4",
                      "--seed", "0", "--device", "cpu"]   # 20 prompts -> 20 jobs -> 6 batches


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny world on disk, a SentencePiece tokenizer trained on it, and two tiny random
    models saved as checkpoints: the draft (trained here) and the target (teacher)."""
    root = tmp_path_factory.mktemp("distributed")
    world = data.make_world(data.preset("tiny"))
    data.write_world(world, str(root / "world"))
    texts = (world["corpus"] + [r["prompt"] + "\n" + r["response"] for r in world["instructions"]]
             + [r["prompt"] for r in world["seed_prompts"]])
    tok = train_sentencepiece(texts, str(root / "tokenizer.model"), vocab_size=400)
    torch.manual_seed(0)
    # max_seq_len 384: the longest instruction example is ~350 tokens with this small vocabulary.
    draft = ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        ffn_dim=64, max_seq_len=384)
    save_model(Llama(draft), root / "draft")
    target = Llama(ModelConfig(**{**vars(draft), "dim": 48, "ffn_dim": 96}))
    with torch.no_grad():
        target.output.weight *= 20               # sharper than a random init: a KL of order 1
        target.output.weight[tok.eos_id] *= 3    # some answers end early: examples of unequal length
    save_model(target, root / "target")
    return {"root": root, "tokenizer": str(root / "tokenizer.model"),
            "draft": str(root / "draft"), "target": str(root / "target"),
            "text": f"{root}/world/corpus.txt,{root}/world/instructions.jsonl",
            "prompts": str(root / "world" / "seed_prompts.jsonl")}


def torchrun(script: str, args: list[str]) -> str:
    """`torchrun --standalone --nproc_per_node=2 script args` on CPU -> its stdout; fail with its output."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.join(ROOT, script), *args]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def train_in_process(args: list[str]) -> None:
    """train.py's main in this process, as `python train.py args` would run it."""
    assert "WORLD_SIZE" not in os.environ, "the single-process reference must not see torchrun's variables"
    train.main(args)


def read_log(out) -> tuple[dict[int, float], dict[int, float]]:
    """log.jsonl -> ({step: training loss}, {step: held-out loss})."""
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    return ({r["step"]: r["loss"] for r in records if "loss" in r},
            {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r})


def read_weights(out) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(out, "model", "model.safetensors"))


def snapshot(out) -> dict:
    """Everything a finished run left behind, read now (later resumes append to the files)."""
    losses, eval_losses = read_log(out)
    return {"losses": losses, "eval_losses": eval_losses, "weights": read_weights(out)}


def assert_same_run(got: dict, want: dict, steps: list[int]) -> None:
    for step in steps:
        assert got["losses"][step] == pytest.approx(want["losses"][step], rel=LOSS_RTOL), f"loss at step {step}"
    assert got["eval_losses"] == pytest.approx(want["eval_losses"], rel=LOSS_RTOL)
    assert got["weights"].keys() == want["weights"].keys()
    for name, tensor in want["weights"].items():
        torch.testing.assert_close(got["weights"][name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)


# ------------------------------------------------------------------------------------ train.py

class Crash(Exception):
    """Stands for the process dying (power cut, pre-emption, SIGKILL)."""


def crash_at_step(stop: int):
    """A train.learning_rate that dies when step `stop` begins: the checkpoint of step `stop`
    (--ckpt-interval 1) is on disk, nothing after it is."""
    real = train.learning_rate

    def learning_rate(step, *args):
        if step == stop:
            raise Crash(f"killed as step {stop + 1} began")
        return real(step, *args)
    return learning_rate


@pytest.fixture(scope="module")
def pretrain(files):
    """One process trains 4 steps uninterrupted. The same command is killed after step 2 and
    then resumed under torchrun with 2 ranks, which train steps 3 and 4."""
    common = ["--mode", "pretrain", "--data", files["text"], "--tokenizer", files["tokenizer"],
              "--init", files["draft"], "--max-steps", "4", *TRAIN_FLAGS]
    uninterrupted, resumed = files["root"] / "pretrain-single", files["root"] / "pretrain-resumed"
    train_in_process([*common, *SINGLE, "--out", str(uninterrupted)])
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Crash):
        patch.setattr(train, "learning_rate", crash_at_step(2))
        train_in_process([*common, *SINGLE, "--out", str(resumed)])
    output = torchrun("train.py", [*common, *TWO_RANKS, "--out", str(resumed)])
    return {"common": common, "single": snapshot(uninterrupted), "resumed": snapshot(resumed),
            "resumed_out": resumed, "output": output}


def test_two_ranks_resume_a_one_process_run_and_train_like_it(pretrain, files):
    assert f"resuming from {pretrain['resumed_out']}/ckpt.pt at step 2" in pretrain["output"]
    assert "2 rank(s) x 2 x 2 accumulation = 8 sequences per step" in pretrain["output"]
    initial = load_file(os.path.join(files["draft"], "model.safetensors"))
    moved = max((pretrain["single"]["weights"][name] - w).abs().max().item() for name, w in initial.items())
    assert moved > 100 * WEIGHT_ATOL         # the weight comparison below is not vacuous
    # Steps 3 and 4 ran on 2 ranks; step 4's held-out loss and the weights come from rank 0.
    assert_same_run(pretrain["resumed"], pretrain["single"], steps=[1, 2, 3, 4])


def test_a_two_rank_checkpoint_is_accepted_by_one_process(pretrain, capsys):
    """The world size is not a setting of the run: the checkpoint rank 0 wrote at step 4 belongs
    to the same run for a single process (which then has nothing left to do)."""
    out = str(pretrain["resumed_out"])
    train_in_process([*pretrain["common"], *SINGLE, "--out", out])
    assert f"{out} already finished 4 steps; nothing to do" in capsys.readouterr().out
    assert_same_run(snapshot(out), pretrain["single"], steps=[1, 2, 3, 4])


# ----------------------------------------------------------------------------- distill_data.py

@pytest.fixture(scope="module")
def distilled(files):
    """distill_data.py on the 20 seed prompts: once in this process, once under torchrun."""
    common = ["--target", files["target"], "--tokenizer", files["tokenizer"],
              "--prompts", files["prompts"], *DISTILL_DATA_FLAGS]
    single, merged = files["root"] / "distill-single.jsonl", files["root"] / "distill-ddp.jsonl"
    distill_data.main([*common, "--out", str(single)])
    torchrun("distill_data.py", [*common, "--out", str(merged)])
    shards = [files["root"] / f"distill-ddp.jsonl.rank{rank}-of-2.jsonl" for rank in range(2)]
    return {"common": common, "single": single, "merged": merged, "shards": shards}


def test_two_rank_shards_merge_into_the_single_process_file(distilled):
    single = distilled["single"].read_bytes()
    assert distilled["merged"].read_bytes() == single
    jobs = [[r["job"] for r in load_distill_records(str(shard))] for shard in distilled["shards"]]
    # Jobs 0-9 are greedy, 10-19 sampled: batches [0-3] [4-7] [8-9] [10-13] [14-17] [18-19].
    assert jobs[0] == [0, 1, 2, 3, 8, 9, 14, 15, 16, 17]     # batches 0, 2, 4
    assert jobs[1] == [4, 5, 6, 7, 10, 11, 12, 13, 18, 19]   # batches 1, 3, 5
    union = sorted(load_distill_records([str(s) for s in distilled["shards"]]), key=lambda r: r["job"])
    assert union == load_distill_records(str(distilled["single"]))


def test_each_shard_resumes_on_its_own(distilled, monkeypatch, capsys):
    shard0, shard1 = distilled["shards"]
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in distilled["shards"]}
    monkeypatch.setenv("WORLD_SIZE", "2")
    # A rank whose shard is complete does nothing but merge again.
    monkeypatch.setenv("RANK", "0")
    distill_data.main([*distilled["common"], "--out", str(distilled["merged"])])
    assert "all 10 records already there" in capsys.readouterr().err
    assert (shard0.read_bytes(), shard0.stat().st_mtime_ns) == before[shard0]
    # A rank killed mid-write (torn last line) redoes only its last batch (jobs 18-19), identically.
    shard1.write_bytes(before[shard1][0][:-30])
    distilled["merged"].unlink()
    monkeypatch.setenv("RANK", "1")
    distill_data.main([*distilled["common"], "--out", str(distilled["merged"])])
    err = capsys.readouterr().err
    assert "dropped 2 line(s) of an interrupted batch" in err
    assert err.count(" records, ") == 1 and "10/10 records" in err     # one batch generated
    assert shard1.read_bytes() == before[shard1][0]
    assert distilled["merged"].read_bytes() == distilled["single"].read_bytes()


def test_a_rank_without_a_batch_still_lets_the_shards_merge(distilled, tmp_path, monkeypatch):
    """More ranks than batches: with --batch-size 16 the 20 jobs make 2 batches (greedy, sampled)
    for 3 ranks. Rank 2 answers nothing, yet the shards must merge into the single-process file."""
    command = [*distilled["common"], "--batch-size", "16"]      # the last --batch-size wins
    single, merged = tmp_path / "single.jsonl", tmp_path / "merged.jsonl"
    distill_data.main([*command, "--out", str(single)])
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        distill_data.main([*command, "--out", str(merged)])
    assert merged.read_bytes() == single.read_bytes()


# ------------------------------------------------------------------- train.py --mode distill

def test_two_ranks_distill_like_one_process(files, distilled):
    """Phase 3 on the distillation data: the frozen teacher runs inside each rank's objective."""
    common = ["--mode", "distill", "--loss", "kld", "--teacher", files["target"],
              "--data", str(distilled["single"]), "--tokenizer", files["tokenizer"],
              "--init", files["draft"], "--max-steps", "2", *TRAIN_FLAGS]
    single, ddp = files["root"] / "distill-train-single", files["root"] / "distill-train-ddp"
    train_in_process([*common, *SINGLE, "--out", str(single)])
    torchrun("train.py", [*common, *TWO_RANKS, "--out", str(ddp)])
    assert_same_run(snapshot(ddp), snapshot(single), steps=[1, 2])
