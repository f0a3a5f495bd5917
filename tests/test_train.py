"""Tests for train.py: the pure data functions (windows, masks, batches, schedule), and the run
directory's promises: a run killed with SIGKILL resumes to the very weights, optimizer state and
log of an uninterrupted run; --seed makes a run reproducible; a diverging run stops with the
step and leaves the last good checkpoint untouched; a checkpoint of another run is refused with
the differences named; loading never unpickles code."""

import errno
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import data
import fast_decode
import train
from checkpoints import load_model, save_model
from losses import get_loss
from model import Llama, get_config
from common import run_cli
from tokenizer import chat_example, chat_prompt, train_sentencepiece
from train import (batch_indices, collate, learning_rate, load_examples, split_examples, trim_log)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny world's corpus and instructions, a trained tokenizer, short distillation records
    and a tiny random teacher for them."""
    root = tmp_path_factory.mktemp("train")
    world = data.make_world(data.preset("tiny"))
    data.write_world(world, str(root / "world"))
    texts = world["corpus"] + [r["prompt"] + "\n" + r["response"] for r in world["instructions"]]
    tok = train_sentencepiece(texts, str(root / "tokenizer.model"), vocab_size=320)
    rng = random.Random(0)
    records = []
    for job in range(40):
        cast = data.sample_cast(rng)
        prompt_ids = chat_prompt(tok, f"Where is {cast['H']}?")
        response_ids = tok.encode(f"{cast['H']} is in {cast['place']}.", eos=True)
        records.append({"job": job, "prompt_ids": prompt_ids, "response_ids": response_ids})
    (root / "distill.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    torch.manual_seed(1)
    save_model(Llama(get_config("test", vocab_size=tok.vocab_size)), root / "teacher")
    return {"root": root, "tok": tok, "world": world, "records": records}


def pretrain_args(setup, out, **flags) -> list[str]:
    values = {"--mode": "pretrain", "--preset": "test", "--data": str(setup["root"] / "world" / "corpus.txt"),
              "--tokenizer": str(setup["root"] / "tokenizer.model"), "--out": str(out), "--max-len": "64",
              "--max-steps": "24", "--batch-size": "8", "--micro-batch-size": "4", "--lr": "3e-3",
              "--warmup": "4", "--log-interval": "1", "--eval-interval": "8", "--ckpt-interval": "3",
              "--device": "cpu", **{f"--{k.replace('_', '-')}": str(v) for k, v in flags.items()}}
    return [item for flag, value in values.items() for item in (flag, value)]


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(out, "model", "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


def training_log(out) -> list[dict]:
    """log.jsonl without the wall-clock fields (throughput and ETA differ between any two runs)."""
    with open(os.path.join(out, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in ("tok/s", "eta")} for line in f]


def checkpoint(out) -> dict:
    return torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)


def assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for key, value in a["state"][i].items():
            assert torch.equal(value, b["state"][i][key]), (i, key)


@pytest.fixture(scope="module")
def reference(setup):
    """One uninterrupted pretraining run."""
    out = setup["root"] / "reference"
    train.main(pretrain_args(setup, out))
    return out


# ---------------------------------------------------------------------------- data functions

def test_collate_shifts_pads_and_masks_exactly_the_trained_targets():
    examples = [([1, 10, 11, 12, 13, 2], 3), ([1, 20, 2], 1)]
    inputs, targets, mask = collate(examples, pad_id=3)
    assert inputs.tolist() == [[1, 10, 11, 12, 13], [1, 20, 3, 3, 3]]
    assert targets.tolist() == [[10, 11, 12, 13, 2], [20, 2, 3, 3, 3]]
    # Row 0 trains ids[3:] = 12, 13, 2 (the "response"); row 1 everything after bos, no padding.
    assert mask.tolist() == [[False, False, True, True, True], [True, True, False, False, False]]
    assert targets[0][mask[0]].tolist() == examples[0][0][3:]


def test_collate_rounds_the_length_up_to_a_multiple_but_not_past_the_limit():
    """On a GPU train.py pads batches to a multiple of PAD_MULTIPLE: more padding, the same
    trained targets; never longer than the models' context, never shorter than the batch."""
    examples = [([1, 10, 11, 12, 13, 2], 3), ([1, 20, 2], 1)]
    exact = collate(examples, pad_id=3)
    for multiple, limit, length in ((4, None, 8), (8, 6, 6), (4, 3, 5), (5, None, 5)):
        inputs, targets, mask = collate(examples, 3, multiple, limit)
        assert inputs.shape == targets.shape == mask.shape == (2, length)
        for padded, unpadded in zip((inputs, targets, mask), exact):
            assert torch.equal(padded[:, :5], unpadded)
        assert (inputs[:, 5:] == 3).all() and not mask[:, 5:].any()


def test_batch_indices_are_pure_and_cover_each_epoch_once():
    lengths, batch = [5] * 10, 4                                       # 2 batches per epoch, 2 sit out
    stream = [batch_indices(lengths, batch, seed=7, step=step) for step in range(6)]   # 3 epochs
    for epoch in range(3):
        seen = stream[2 * epoch] + stream[2 * epoch + 1]
        assert len(set(seen)) == 8 and set(seen) <= set(range(10))     # no example twice in an epoch
    assert stream[0:2] != stream[2:4]                                   # each epoch reshuffled
    assert batch_indices(lengths, batch, 7, 3) == stream[3]            # a pure function of (seed, step)
    assert [batch_indices(lengths, batch, 8, s) for s in range(2)] != stream[0:2]
    # Over many epochs every example is drawn equally often (the left-over ones rotate).
    counts = [0] * 10
    for step in range(2000):
        for i in batch_indices(lengths, batch, 7, step):
            counts[i] += 1
    assert max(counts) - min(counts) < 0.1 * (2000 * batch / 10)


def test_batch_indices_group_similar_lengths():
    """Batches come from windows sorted by length, so they pad far less than random batches would."""
    rng = random.Random(0)
    lengths, batch = [rng.randint(10, 300) for _ in range(640)], 8
    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    bucketed = [batch_indices(lengths, batch, 0, step) for step in range(80)]   # one epoch
    assert sorted(i for b in bucketed for i in b) == list(range(640))
    shuffled = list(range(640))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i: i + batch] for i in range(0, 640, batch)]
    assert padding(bucketed) < 0.25 * padding(random_batches)
    # ... while the order of the lengths over the epoch stays shuffled, not sorted.
    firsts = [lengths[b[0]] for b in bucketed]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    lr, warmup, max_steps = 1e-3, 10, 110
    assert learning_rate(0, max_steps, lr, warmup) == pytest.approx(lr / warmup)
    assert learning_rate(warmup - 1, max_steps, lr, warmup) == pytest.approx(lr)
    assert learning_rate(warmup, max_steps, lr, warmup) == pytest.approx(lr)
    assert learning_rate(60, max_steps, lr, warmup) == pytest.approx(lr * (0.1 + 0.9 * 0.5))   # half way
    assert learning_rate(max_steps, max_steps, lr, warmup) == pytest.approx(0.1 * lr)
    decay = [learning_rate(s, max_steps, lr, warmup) for s in range(warmup, max_steps + 1)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_corpus_windows_cover_each_document_once(setup):
    tok, max_len = setup["tok"], 64
    examples = load_examples([str(setup["root"] / "world" / "corpus.txt")], tok, max_len)
    first_doc = tok.encode(setup["world"]["corpus"][0], bos=True, eos=True)
    windows = []
    for ids, loss_start in examples:
        assert loss_start == 1 and 2 <= len(ids) <= max_len
        windows.append(ids)
        if ids[-1] == tok.eos_id:
            break
    # Consecutive windows share one token (the last input of one is the first of the next),
    # so every token after bos is a target exactly once.
    assert windows[0] + [t for w in windows[1:] for t in w[1:]] == first_doc
    assert len(windows) > 1


def test_chat_and_distill_examples_train_exactly_the_response(setup):
    tok, root = setup["tok"], setup["root"]
    chat = load_examples([str(root / "world" / "instructions.jsonl")], tok, 1024)
    for record, (ids, response_start) in zip(setup["world"]["instructions"], chat):
        assert (ids, response_start) == chat_example(tok, record["prompt"], record["response"], record["system"])
    distill = load_examples([str(root / "distill.jsonl")], tok, 64)
    assert distill == [(r["prompt_ids"] + r["response_ids"], len(r["prompt_ids"])) for r in setup["records"]]
    for examples in (chat[:4], distill[:4]):
        _, targets, mask = collate(examples, tok.pad_id)
        for row, (ids, response_start) in enumerate(examples):
            assert targets[row][mask[row]].tolist() == ids[response_start:]       # the response, eos included
    with pytest.raises(ValueError, match="exceeds --max-len 64"):
        load_examples([str(root / "world" / "instructions.jsonl")], tok, 64)


def test_split_examples_holds_out_every_50th():
    train_part, held_out = split_examples(list(range(120)))
    assert held_out == [0, 50, 100] and sorted(train_part + held_out) == list(range(120))


def test_trim_log_keeps_complete_records_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 2, 3)]
    path.write_text("".join(lines) + '{"step": 4, "lo')          # a line torn by a kill
    trim_log(str(path), 2)
    assert path.read_text() == "".join(lines[:3])
    trim_log(str(path), 0)
    assert path.read_text() == ""


# ---------------------------------------------------------------------------- the run directory

def test_sigkilled_run_resumes_to_the_uninterrupted_weights_optimizer_and_log(setup, reference, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *pretrain_args(setup, out)],
                               cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Kill after reading the line of a step 2 past a checkpoint (every 3 steps): the log then
    # holds steps the checkpoint lacks, which the resumed run must not log twice.
    kill_after = random.Random(0).choice([5, 8, 11])
    for line in process.stdout:
        if line.startswith("step ") and int(line.split()[1]) >= kill_after:
            process.send_signal(signal.SIGKILL)      # anywhere: mid-step, mid-log or mid-checkpoint
            break
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert 3 <= checkpoint(out)["step"] < 24
    train.main(pretrain_args(setup, out))            # the same command again
    assert checkpoint(out)["step"] == 24
    assert_same_weights(weights(out), weights(reference))
    assert_same_optimizer(checkpoint(out)["optimizer"], checkpoint(reference)["optimizer"])
    assert training_log(out) == training_log(reference)         # no step twice, none lost
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl", "model"]


def test_seed_makes_a_run_reproducible(setup, reference, tmp_path):
    train.main(pretrain_args(setup, tmp_path / "same"))
    assert_same_weights(weights(tmp_path / "same"), weights(reference))
    train.main(pretrain_args(setup, tmp_path / "other", seed=1))
    other = weights(tmp_path / "other")
    assert not torch.equal(other["output.weight"], weights(reference)["output.weight"])


def test_distillation_resumes_exactly_with_an_on_policy_loss(setup, tmp_path, monkeypatch):
    """The on-policy loss samples from the draft with a per-step generator: a crash after a
    checkpoint must not change which samples the resumed steps draw."""
    args = pretrain_args(setup, tmp_path / "whole", mode="distill", loss="tvdpp_onpolicy",
                         teacher=setup["root"] / "teacher", data=setup["root"] / "distill.jsonl", max_steps=8)
    train.main(args)
    crashed = [tmp_path / "crashed" if a == str(tmp_path / "whole") else a for a in args]
    schedule = train.learning_rate

    def crash_at_step_5(step, *rest):
        if step == 5:
            raise KeyboardInterrupt                  # after the checkpoint of step 3, mid-run
        return schedule(step, *rest)

    monkeypatch.setattr(train, "learning_rate", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train.main([str(a) for a in crashed])
    monkeypatch.setattr(train, "learning_rate", schedule)
    train.main([str(a) for a in crashed])
    assert_same_weights(weights(tmp_path / "crashed"), weights(tmp_path / "whole"))
    assert training_log(tmp_path / "crashed") == training_log(tmp_path / "whole")


def test_a_bfloat16_init_trains_float32_weights(setup, tmp_path):
    """--init from a bf16 checkpoint (e.g. a draft brought back from a GPU as bf16): the run's
    weights, its optimizer state and its saved model are float32."""
    bf16 = tmp_path / "bf16"
    save_model(load_model(setup["root"] / "teacher").to(torch.bfloat16), bf16)
    assert {t.dtype for t in load_file(bf16 / "model.safetensors").values()} == {torch.bfloat16}
    out = tmp_path / "distilled"
    args = pretrain_args(setup, out, mode="distill", loss="kld", init=bf16, teacher=setup["root"] / "teacher",
                         data=setup["root"] / "distill.jsonl", max_steps=3)
    at = args.index("--preset")
    train.main(args[:at] + args[at + 2:])                         # --init instead of --preset
    assert {t.dtype for t in weights(out).values()} == {torch.float32}
    state = checkpoint(out)["optimizer"]["state"]
    assert {v.dtype for s in state.values() for k, v in s.items() if k != "step"} == {torch.float32}


def test_init_layers_trains_a_draft_cut_from_the_teacher(setup, tmp_path):
    """--init teacher --init-layers 1: the run trains the teacher's embedding, first block, norm
    and head (a learning rate of 1e-12 leaves them where they started), nothing of block 1."""
    out = tmp_path / "cut"
    args = pretrain_args(setup, out, init=setup["root"] / "teacher", init_layers=1, max_steps=2, lr=1e-12,
                         weight_decay=0)
    at = args.index("--preset")
    train.main(args[:at] + args[at + 2:])                         # --init instead of --preset
    teacher = {name: t for name, t in load_file(setup["root"] / "teacher" / "model.safetensors").items()
               if not name.startswith("layers.1.")}
    cut = weights(out)
    assert cut.keys() == teacher.keys()
    assert all(torch.allclose(cut[name], teacher[name], atol=1e-9) for name in cut)
    assert load_model(out / "model").config.n_layers == 1



def test_freeze_embeddings_trains_everything_but_the_shared_embedding(setup, tmp_path):
    """--freeze-embeddings: the cut draft's token embedding (tied to its head) stays the
    teacher's, bit for bit, and has no optimizer state, while its block and norm train."""
    out = tmp_path / "frozen"
    args = pretrain_args(setup, out, init=setup["root"] / "teacher", init_layers=1, max_steps=3, lr=1e-2)
    at = args.index("--preset")
    train.main(args[:at] + args[at + 2:] + ["--freeze-embeddings"])
    teacher = load_file(setup["root"] / "teacher" / "model.safetensors")
    trained = weights(out)
    assert torch.equal(trained["tok_embeddings.weight"], teacher["tok_embeddings.weight"])
    assert not torch.equal(trained["layers.0.attention.wq.weight"], teacher["layers.0.attention.wq.weight"])
    assert not torch.equal(trained["norm.weight"], teacher["norm.weight"])
    state = checkpoint(out)["optimizer"]["state"]
    n_trainable = sum(1 for name in trained if name != "tok_embeddings.weight")
    assert len(state) == n_trainable                              # no Adam moments for the embedding

@pytest.mark.parametrize("loss", [None, "kld", "tvdpp"])
def test_objective_computes_the_logits_of_the_trained_positions_only_and_changes_nothing_else(setup, loss):
    """train.objective has both models compute their logits at the masked positions alone: the
    loss and the draft's gradient are those of full (B, T, V) logits with the mask applied after."""
    examples = load_examples([str(setup["root"] / "distill.jsonl")], setup["tok"], 64)[:6]
    inputs, targets, mask = collate(examples, setup["tok"].pad_id)
    torch.manual_seed(2)
    draft = Llama(get_config("test", vocab_size=setup["tok"].vocab_size))
    teacher = load_model(setup["root"] / "teacher") if loss else None
    loss_fn = get_loss(loss) if loss else None

    def loss_and_grads(objective, positions):
        draft.zero_grad(set_to_none=True)
        value = objective(draft, teacher, loss_fn, inputs, targets, positions, None)
        value.backward()
        return value.detach(), {name: p.grad.clone() for name, p in draft.named_parameters()}

    def every_position(model, teacher, loss_fn, inputs, targets, mask, generator):
        draft_logits = model(inputs)                                    # (B, T, V)
        if teacher is None:
            return torch.nn.functional.cross_entropy(draft_logits[mask], targets[mask])
        return loss_fn(draft_logits, teacher(inputs).detach(), targets, mask, generator=generator)

    keep = train.on_device((inputs, targets, mask), torch.device("cpu"))[2]     # flat indices of mask
    assert torch.equal(keep, torch.arange(mask.numel())[mask.flatten()])
    value, grads = loss_and_grads(train.objective, keep)
    reference, reference_grads = loss_and_grads(every_position, mask)
    assert 0 < mask.sum() < mask.numel()
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], reference_grads[name], atol=1e-6, rtol=1e-5)


def test_compile_compiles_every_block_of_the_draft_and_the_teacher_and_trains_the_same(setup, tmp_path, monkeypatch):
    """--compile: fast_decode.compile_blocks on the draft and on the teacher (here with
    torch.compile's "eager" backend: the same tracing, no kernels generated, so the CPU test stays
    fast), whose traced blocks then run; the run ends with the weights of the run without it."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    compiled = []

    def compile_blocks(model, backend="inductor"):
        compiled.append(model)
        return fast_decode.compile_blocks(model, backend="eager")
    monkeypatch.setattr(train, "compile_blocks", compile_blocks)
    torch._dynamo.reset()
    counters.clear()
    runs = {}
    for flags in ([], ["--compile"]):
        out = tmp_path / f"compile{len(flags)}"
        args = pretrain_args(setup, out, mode="distill", loss="kld", init=setup["root"] / "teacher",
                             teacher=setup["root"] / "teacher", data=setup["root"] / "distill.jsonl", max_steps=3)
        at = args.index("--preset")
        train.main(args[:at] + args[at + 2:] + flags)             # --init instead of --preset
        runs[bool(flags)] = weights(out)
    torch._dynamo.reset()
    assert [any(p.requires_grad for p in model.parameters()) for model in compiled] == [True, False]
    assert counters["stats"]["unique_graphs"] > 0                 # the traced blocks ran
    for name in runs[False]:
        torch.testing.assert_close(runs[True][name], runs[False][name], atol=1e-5, rtol=1e-4)


def run_error(argv, capsys) -> str:
    """Run train.py's command line in-process; return its one-line error message."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, [str(a) for a in argv])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1
    return stderr


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(setup, tmp_path, capsys):
    # A learning rate that grows by 10 per step (warm-up toward 1e4) makes the gradient
    # non-finite within a few steps, after at least one checkpoint (every 2 steps).
    args = pretrain_args(setup, tmp_path, lr=1e4, warmup=1000, ckpt_interval=2)
    message = run_error(args, capsys)
    bad_step = int(re.search(r"diverged at step (\d+)", message).group(1))
    last_good = (bad_step - 1) // 2 * 2
    assert bad_step > 2 and "lower --lr" in message and f"(step {last_good})" in message
    ckpt = tmp_path / "ckpt.pt"
    before = (ckpt.read_bytes(), ckpt.stat().st_mtime_ns)
    assert run_error(args, capsys) == message        # resumed from last_good, diverged again ...
    assert (ckpt.read_bytes(), ckpt.stat().st_mtime_ns) == before       # ... and left it alone
    state = checkpoint(tmp_path)["model"]
    assert all(torch.isfinite(t).all() for t in state.values())
    assert_same_weights(weights(tmp_path), {k: v for k, v in state.items()})
    assert [r["step"] for r in training_log(tmp_path)] == list(range(1, bad_step))   # each logged once


def test_a_checkpoint_of_another_run_is_refused_with_the_differences_named(setup, reference, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(pretrain_args(setup, out, max_steps=2))
    message = run_error([*pretrain_args(setup, out, max_steps=2, preset="cpu-draft")], capsys)
    assert "another config" in message and "dim: 32 in the checkpoint, 128 now" in message
    assert "vocab_size" not in message                            # only what differs
    message = run_error([*pretrain_args(setup, out, max_steps=2, seed=1, lr=1e-3)], capsys)
    assert "seed: 0 in the checkpoint, 1 now" in message and "lr: 0.003 in the checkpoint, 0.001 now" in message
    assert "batch_size" not in message


def test_a_damaged_or_malicious_checkpoint_is_refused_without_running_code(setup, tmp_path, capsys):
    class Payload:
        def __reduce__(self):            # unpickling this would create a file
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "ckpt.pt").write_bytes(pickle.dumps({"model": Payload()}, protocol=2))
    message = run_error(pretrain_args(setup, tmp_path), capsys)
    assert "ckpt.pt cannot be read" in message and not (tmp_path / "pwned").exists()
    torch.save({"model": {}}, tmp_path / "ckpt.pt")
    assert "lacks ['optimizer'" in run_error(pretrain_args(setup, tmp_path), capsys)


def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_go_on(setup, tmp_path, capsys, monkeypatch):
    real_save = torch.save
    saves = []

    def save_until_the_disk_is_full(obj, f):
        saves.append(obj["step"])
        if len(saves) == 2:                      # the second checkpoint (step 4) does not fit
            with open(f, "wb") as partial:       # the temp file the atomic write is filling
                partial.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    message = run_error(pretrain_args(setup, tmp_path, ckpt_interval=2), capsys)
    assert "cannot save the checkpoint of step 4" in message and "(No space left on device)" in message
    assert "it resumes from step 2" in message
    assert checkpoint(tmp_path)["step"] == 2 and not list(tmp_path.glob("ckpt.pt*.tmp"))
