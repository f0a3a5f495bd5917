"""Tests for distill_data.py: the sampling grid and job plan, a micro run with a tiny random
target, crash recovery (byte-identical to an uninterrupted run, SIGKILL included), sharding, and
the errors for bad input."""

import json
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

import answers
import data
import distill_data
from answers import load_distill_records
from distill_data import DEFAULT_SYSTEM, distill, make_batches, make_jobs, sampling_grid
from checkpoints import load_model, save_model
from model import Llama, get_config
from common import run_cli
from tokenizer import chat_prompt, train_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID_ARGS = ([0.0, 1.0], [0.9, 1.0], [True, False])          # -> 6 settings (T=0 keeps one top-p)
RUN = dict(max_new_tokens=10, batch_size=5, seed=0)          # 72 jobs -> 15 batches


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained SentencePiece tokenizer, 12 short seed prompts (half with their own system
    prompt), a tiny random target saved and loaded back, and a prompts file for the CLI."""
    root = tmp_path_factory.mktemp("distill")
    rng = random.Random(0)
    examples = [data.make_example(rng, rng.choice(data.TASKS))[0] for _ in range(150)]
    texts = [e["prompt"] + "\n" + e["response"] for e in examples] + data.SYSTEM_PROMPTS + [DEFAULT_SYSTEM]
    tok = train_sentencepiece(texts, str(root / "tokenizer.model"), vocab_size=400)
    prompts = []
    for i in range(12):
        record, _ = data.make_example(rng, "story", system_prob=0.0)
        prompts.append({"task": "story", "system": data.SYSTEM_PROMPTS[1] if i % 2 else None,
                        "prompt": record["prompt"]})
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    torch.manual_seed(0)
    target = Llama(get_config("test", vocab_size=tok.vocab_size, max_seq_len=128))
    with torch.no_grad():    # make eos likelier, so that both finished and cut-off answers occur
        target.output.weight[tok.eos_id] *= 3
    save_model(target, root / "target")
    model = load_model(root / "target")
    return {"root": root, "tok": tok, "prompts": prompts, "model": model}


def run(setup, out, seed=0, rank=0, world=1, grid_args=GRID_ARGS) -> None:
    jobs = make_jobs(setup["prompts"], sampling_grid(*grid_args))
    distill(setup["model"], setup["tok"], jobs, str(out), **{**RUN, "seed": seed}, rank=rank, world=world)


@pytest.fixture(scope="module")
def reference(setup):
    """The bytes of one uninterrupted single-process run."""
    out = setup["root"] / "reference.jsonl"
    run(setup, out)
    return out.read_bytes()


# ---------------------------------------------------------------------------- the plan

def test_sampling_grid_keeps_one_greedy_entry_and_checks_values():
    grid = sampling_grid([0, 0.5, 0.5], [0.9, 1.0], [True, False])
    assert grid == [
        {"temperature": 0.0, "top_p": 1.0, "system": True},
        {"temperature": 0.0, "top_p": 1.0, "system": False},
        {"temperature": 0.5, "top_p": 0.9, "system": True},
        {"temperature": 0.5, "top_p": 0.9, "system": False},
        {"temperature": 0.5, "top_p": 1.0, "system": True},
        {"temperature": 0.5, "top_p": 1.0, "system": False},
    ]
    assert len(sampling_grid([0, 0.3, 0.7, 1.0], [0.95, 1.0], [True, False])) == 14   # the default
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sampling_grid([-0.1], [1.0], [True])
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        sampling_grid([0.0], [1.5], [True])          # checked even where T=0 ignores top-p


def test_make_jobs_orders_by_setting_and_resolves_system_prompts():
    prompts = [{"prompt": "a", "system": None, "task": "story"}, {"prompt": "b", "system": "Be brief."}]
    grid = sampling_grid([0.0, 1.0], [1.0], [True, False])
    jobs = make_jobs(prompts, grid)
    assert [j["job"] for j in jobs] == list(range(8))
    assert [(j["temperature"], j["prompt"], j["system"]) for j in jobs] == [
        (0.0, "a", DEFAULT_SYSTEM), (0.0, "b", "Be brief."), (0.0, "a", None), (0.0, "b", None),
        (1.0, "a", DEFAULT_SYSTEM), (1.0, "b", "Be brief."), (1.0, "a", None), (1.0, "b", None)]
    assert jobs[0]["task"] == "story" and jobs[1]["task"] is None


def test_settings_per_prompt_rotates_through_the_grid_evenly():
    prompts = [{"prompt": f"p{i}", "system": None} for i in range(12)]
    grid = sampling_grid(*GRID_ARGS)                                   # 6 settings
    jobs = make_jobs(prompts, grid, settings_per_prompt=2)
    assert len(jobs) == 24
    index = {tuple(s.values()): n for n, s in enumerate(grid)}
    settings_of = {}
    for job in jobs:
        setting = index[(job["temperature"], job["top_p"], job["system"] is not None)]
        settings_of.setdefault(int(job["prompt"][1:]), []).append(setting)
    assert all(sorted(s) == sorted([i % 6, (i + 1) % 6]) for i, s in settings_of.items())
    per_setting = [sum(s == n for ss in settings_of.values() for s in ss) for n in range(6)]
    assert per_setting == [4] * 6
    with pytest.raises(ValueError, match=r"settings per prompt must be in 1\.\.6"):
        make_jobs(prompts, grid, settings_per_prompt=7)


def test_batches_are_consecutive_and_share_temperature_and_top_p():
    jobs = make_jobs([{"prompt": f"p{i}", "system": None} for i in range(7)], sampling_grid(*GRID_ARGS))
    batches = make_batches(jobs, 5)
    assert sum(batches, []) == list(range(len(jobs)))
    # T=0 with/without system (14 jobs) can share batches; each T=1 top-p group has 14 jobs
    assert [len(b) for b in batches] == [5, 5, 4] * 3
    for batch in batches:
        assert len({(jobs[j]["temperature"], jobs[j]["top_p"]) for j in batch}) == 1


# ---------------------------------------------------------------------------- a micro run

def test_micro_run_writes_one_faithful_record_per_job(setup, reference):
    tok, model = setup["tok"], setup["model"]
    records = load_distill_records(str(setup["root"] / "reference.jsonl"))
    grid = sampling_grid(*GRID_ARGS)
    assert [r["job"] for r in records] == list(range(len(setup["prompts"]) * len(grid)))
    for record in records:
        assert record["prompt_ids"] == chat_prompt(tok, record["prompt"], record["system"])
        assert record["response"] == tok.decode(record["response_ids"])
        ids = record["response_ids"]
        assert tok.eos_id not in ids[:-1]                              # generation stops at eos
        assert record["finished"] == (ids[-1] == tok.eos_id)
        assert record["finished"] or len(ids) == RUN["max_new_tokens"]
    assert any(r["finished"] for r in records) and not all(r["finished"] for r in records)
    # Greedy records are the target's own argmax continuation (one uncached full pass).
    for record in [r for r in records if r["temperature"] == 0][:3]:
        ids = torch.tensor(record["prompt_ids"] + record["response_ids"])[None]
        logits = model(ids)[0, len(record["prompt_ids"]) - 1: -1]      # (n_response, V)
        assert logits.argmax(-1).tolist() == record["response_ids"]


def test_seed_changes_sampled_records_but_not_greedy_ones(setup, reference, tmp_path):
    run(setup, tmp_path / "seed1.jsonl", seed=1)
    base = load_distill_records(str(setup["root"] / "reference.jsonl"))
    other = load_distill_records(str(tmp_path / "seed1.jsonl"))
    greedy = [a["response_ids"] == b["response_ids"] for a, b in zip(base, other) if a["temperature"] == 0]
    sampled = [a["response_ids"] == b["response_ids"] for a, b in zip(base, other) if a["temperature"] > 0]
    assert all(greedy) and not any(sampled)


# ---------------------------------------------------------------------------- crash recovery

def count_batches(monkeypatch) -> list:
    """Count the batches generated: every call of Decoder.generate is one batch."""
    calls = []
    original = distill_data.Decoder.generate
    monkeypatch.setattr(distill_data.Decoder, "generate", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_resume_after_a_torn_line_gives_the_uninterrupted_file(setup, reference, tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    lines = reference.splitlines(keepends=True)
    cut = sum(map(len, lines[:22])) + len(lines[22]) // 2             # in the middle of line 23
    out.write_bytes(reference[:cut])
    calls = count_batches(monkeypatch)
    run(setup, out)
    assert out.read_bytes() == reference
    assert len(calls) == 15 - 4                # batches 0-3 (20 lines) were kept, the 5th redone


def test_resume_drops_the_rest_of_an_incomplete_batch(setup, reference, tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(reference.splitlines(keepends=True)[:13]))   # batch 2 has 3 of 5 lines
    calls = count_batches(monkeypatch)
    run(setup, out)
    assert out.read_bytes() == reference
    assert len(calls) == 15 - 2
    calls.clear()
    run(setup, out)                            # a finished file: nothing to do, nothing changes
    assert out.read_bytes() == reference and not calls


def test_resume_refuses_output_of_a_different_command(setup, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(reference.splitlines(keepends=True)[:10]))
    with pytest.raises(ValueError, match=r"out.jsonl:1: job 0 was written by a different command"):
        run(setup, out, seed=1)
    with pytest.raises(ValueError, match="different command.*choose another --out"):
        run(setup, out, grid_args=([0.0, 1.0], [0.9, 1.0], [False, True]))
    assert out.read_bytes() == b"".join(reference.splitlines(keepends=True)[:10])   # left untouched


def test_sharded_runs_merge_into_the_single_process_output(setup, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    run(setup, out, rank=1, world=2)
    assert not out.exists()                    # rank 0 has not answered its batches yet
    shard0 = tmp_path / "out.jsonl.rank0-of-2.jsonl"
    run(setup, out, rank=0, world=2)
    assert out.read_bytes() == reference
    batches = make_batches(make_jobs(setup["prompts"], sampling_grid(*GRID_ARGS)), RUN["batch_size"])
    assert [r["job"] for r in load_distill_records(str(shard0))] == sum(batches[0::2], [])
    # a shard resumes like a whole file
    out.unlink()
    shard0.write_bytes(shard0.read_bytes()[:-7])
    run(setup, out, rank=0, world=2)
    assert out.read_bytes() == reference


# ---------------------------------------------------------------------------- errors

def test_prompt_longer_than_the_context_is_a_clear_error(setup, tmp_path):
    model = Llama(get_config("test", vocab_size=setup["tok"].vocab_size, max_seq_len=64))
    jobs = make_jobs(setup["prompts"], sampling_grid([0.0], [1.0], [True]))
    with pytest.raises(ValueError, match=r"job 0 .* has \d+ prompt tokens, .* context of 64"):
        distill(model, setup["tok"], jobs, str(tmp_path / "out.jsonl"), **RUN)


def test_load_distill_records_names_the_bad_line(tmp_path):
    good = {"job": 0, "prompt_ids": [1, 5], "response_ids": [7, 2]}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "response_ids": []}) + "\n")
    with pytest.raises(ValueError, match=r'd.jsonl:2: "response_ids" must be a non-empty list'):
        load_distill_records(str(path))
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "prompt_ids": [1, "x"]}) + "\n")
    with pytest.raises(ValueError, match=r'd.jsonl:2: "prompt_ids" must be'):
        load_distill_records(str(path))
    path.write_text(json.dumps(good) + "\n" + json.dumps(good)[:9])
    with pytest.raises(ValueError, match=r"d.jsonl:2: the last line is cut off"):
        load_distill_records(str(path))
    path.write_text(json.dumps(good) + "\n")
    other = tmp_path / "e.jsonl"
    other.write_text(json.dumps({**good, "job": 1}) + "\n")
    assert [r["job"] for r in load_distill_records([str(path), str(other)])] == [0, 1]   # shards


# ---------------------------------------------------------------------------- the command line

def cli(*args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    command = [sys.executable, os.path.join(ROOT, "distill_data.py"), *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def cli_args(setup, out):
    root = setup["root"]
    return ["--target", str(root / "target"), "--tokenizer", str(root / "tokenizer.model"),
            "--prompts", str(root / "prompts.jsonl"), "--out", str(out), "--temperatures", "0,1",
            "--top-ps", "0.9,1", "--max-new-tokens", "10", "--batch-size", "5", "--device", "cpu"]


def test_cli_bad_temperature_exits_2_with_one_line_and_no_traceback(setup, tmp_path):
    args = cli_args(setup, tmp_path / "out.jsonl")
    args[args.index("--temperatures") + 1] = "0,-1"
    process = cli(*args)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert stderr.strip().count("\n") == 0 and "temperature must be >= 0" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--top-ps", "0.9,0", "top_p must be in (0, 1]"),
    ("--systems", "with,sometimes", "--systems takes a comma-separated list of 'with' and 'without'"),
    ("--settings-per-prompt", "7", "settings per prompt must be in 1..6"),
    ("--out", "/dev/null/distill.jsonl", "cannot create the output directory /dev/null"),
])
def test_cli_bad_arguments_are_one_line_errors(setup, tmp_path, capsys, flag, value, message):
    args = cli_args(setup, tmp_path / "out.jsonl")
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(distill_data.main, args)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert stderr == f"error: {stderr[7:].strip()}\n" and message in stderr


def test_cli_killed_with_sigkill_resumes_to_the_uninterrupted_file(setup, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    process = cli(*cli_args(setup, out))
    for line in process.stderr:
        if "records" in line:                  # the first batch is on disk: kill mid-run
            process.send_signal(signal.SIGKILL)
            break
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert 0 < len(out.read_bytes().splitlines()) < 72
    distill_data.main(cli_args(setup, out))   # the same command again (in-process: no second torch import)
    assert out.read_bytes() == reference


def test_answer_vocabulary_ranks_the_answer_tokens_by_count_then_id(tmp_path):
    records = [{"prompt_ids": [1, 1, 1], "response_ids": [5, 5, 3, 9]}, {"prompt_ids": [8], "response_ids": [3, 5, 7]}]
    counts = answers.answer_counts(records)
    assert counts == {5: 3, 3: 2, 9: 1, 7: 1}                                     # prompts are not counted
    assert answers.answer_vocabulary(counts, 2) == ([5, 3], 5 / 7)
    assert answers.answer_vocabulary(counts, 3) == ([5, 3, 7], 6 / 7)       # 7 and 9 tie: the lower id
    assert answers.answer_vocabulary(counts, 99) == ([5, 3, 7, 9], 1.0)
    with pytest.raises(ValueError, match="at least 1 token"):
        answers.answer_vocabulary(counts, 0)
    # The counts a shipped draft carries (tools/ship_draft.py) give the same shortlist as the data.
    (tmp_path / "answer_counts.json").write_text(json.dumps({"counts": [[5, 3], [3, 2], [9, 1], [7, 1]]}))
    assert answers.load_answer_counts(str(tmp_path / "answer_counts.json")) == counts
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a file of answer counts"):
        answers.load_answer_counts(str(tmp_path / "bad.json"))
