"""Every command line turns bad input into ONE sentence on stderr and exit code 2, never a
traceback: missing or corrupt checkpoints and tokenizers, unknown presets and losses, vocabulary
mismatches, meaningless sampling settings, empty or malformed prompt files, prompts longer than
the context, output paths that cannot be written. Flags are checked before anything is loaded.

A torch import costs seconds, so only train.py and speculative.py run as real subprocesses
(together; distill_data.py's own tests run it as one too). Every script's `__main__` block runs
in-process through runpy, and the full table of bad inputs calls `run_cli(main, argv)`
in-process: any exception that run_cli does not turn into a sentence fails the test just as a
traceback would fail the subprocess check.
"""

import json
import os
import random
import runpy
import shutil
import subprocess
import sys

import pytest
import torch

import data
import distill_data
import evaluate
import speculative
import tokenizer
import train
from checkpoints import save_model
from model import Llama, get_config
from common import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAINS = {"train": train.main, "distill_data": distill_data.main, "speculative": speculative.main,
         "evaluate": evaluate.main, "data": data.main, "tokenizer": tokenizer.main}
LONG = "Write a very long story about " + ", ".join(data.NAMES) + "."     # > 16 tokens


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """Good and bad artifacts: two tokenizers (320 and 350 tokens), a target, a draft, a draft
    of the other vocabulary, a model with a 16-token context, a truncated checkpoint, a corrupt
    tokenizer, good / empty / malformed prompt files, and a regular file to put paths under."""
    root = tmp_path_factory.mktemp("cli")
    world = data.make_world(data.preset("tiny"))
    data.write_world(world, str(root / "world"))
    texts = world["corpus"] + [r["prompt"] + "\n" + r["response"] for r in world["instructions"]]
    files = {"tok": "tok.model", "tok350": "tok350.model", "bad_tok": "bad_tok.model", "prompts": "prompts.jsonl",
             "empty": "empty.jsonl", "malformed": "malformed.jsonl", "file": "a_file"}
    paths = {"root": str(root)} | {name: str(root / name) for name in ("world", "target", "draft", "draft350", "short",
                                                                       "corrupt")}
    paths |= {name: str(root / file) for name, file in files.items()}
    tok = tokenizer.train_sentencepiece(texts, paths["tok"], vocab_size=320)
    tokenizer.train_sentencepiece(texts, paths["tok350"], vocab_size=350)
    torch.manual_seed(0)
    for name, vocab, context in (("target", 320, 128), ("draft", 320, 128), ("draft350", 350, 128), ("short", 320, 16)):
        save_model(Llama(get_config("test", vocab_size=vocab, max_seq_len=context)), paths[name])
    shutil.copytree(paths["target"], paths["corrupt"])
    weights = (root / "corrupt" / "model.safetensors").read_bytes()
    (root / "corrupt" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (root / files["bad_tok"]).write_bytes(random.Random(0).randbytes(500))
    prompts = [{"prompt": "Tell me about Mira."}, {"prompt": "Where is the lantern?", "system": None}]
    (root / files["prompts"]).write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (root / files["empty"]).write_text("")
    (root / files["malformed"]).write_text(json.dumps(prompts[0]) + "\n{\"prompt\": oops}\n")
    (root / files["file"]).write_text("a regular file, not a directory\n")
    assert tok.vocab_size == 320
    return paths


def base_args(cli: str, paths: dict, out: str) -> dict:
    """A valid command for each CLI (flag -> value; True for a switch)."""
    common = {"--tokenizer": paths["tok"], "--device": "cpu"}
    return {
        "train": {"--mode": "pretrain", "--preset": "test", "--data": f"{paths['world']}/corpus.txt",
                  "--out": out, "--max-len": "64", "--max-steps": "2", "--batch-size": "2", **common},
        "distill_data": {"--target": paths["target"], "--prompts": paths["prompts"], "--out": f"{out}.jsonl",
                         "--temperatures": "0", "--top-ps": "1", "--systems": "without",
                         "--max-new-tokens": "4", **common},
        "speculative": {"--target": paths["target"], "--draft": paths["draft"], "--prompt": "Hi",
                        "--max-new-tokens": "4", **common},
        "evaluate": {"--target": paths["target"], "--drafts": f"a={paths['draft']}",
                     "--prompts": f"story={paths['prompts']}", "--gammas": "1,2", "--temperatures": "0",
                     "--n-prompts": "2", "--max-new-tokens": "4", "--out": f"{out}.json", **common},
        "data": {"--preset": "tiny", "--out": out},
        "tokenizer": {"--data": f"{paths['world']}/corpus.txt", "--vocab-size": "320", "--out": f"{out}.model"},
    }[cli]


def command(cli: str, paths: dict, out: str, changes: dict) -> list[str]:
    """The valid command with `changes` applied ({flag: value}; None removes a flag); "{name}"
    in a value stands for that artifact's path."""
    merged = {**base_args(cli, paths, out), **changes}
    argv = []
    for flag, value in merged.items():
        if value is True:
            argv.append(flag)
        elif value is not None:
            argv += [flag, value.format(**paths)]
    return argv


def assert_one_sentence(returncode: int, stderr: str, expected: str) -> None:
    """Exit code 2, no traceback, and the error is one line, the last (progress lines may precede it)."""
    assert "Traceback" not in stderr, stderr
    assert returncode == 2, stderr
    lines = stderr.splitlines()
    assert lines and lines[-1].startswith("error: ") and stderr.count("error:") == 1, stderr
    assert expected in lines[-1], stderr


# ---------------------------------------------------------------------------- the entry points

ENTRY_POINTS = [  # one bad input per script
    ("train", {"--preset": "nope"}, "unknown model preset 'nope'"),
    ("speculative", {"--gamma": "0"}, "gamma (draft tokens per block) must be >= 1"),
    ("distill_data", {"--prompts": "{malformed}"}, "malformed.jsonl:2: invalid JSON"),
    ("evaluate", {"--drafts": "a={draft350}"}, "draft vocabulary (350) != target vocabulary (320)"),
    ("data", {"--out": "{file}/world"}, "cannot write the world to"),
    ("tokenizer", {"--data": "{root}/missing.txt"}, "corpus file not found"),
]


def test_scripts_run_as_subprocesses_answer_with_one_sentence(paths, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cases = ENTRY_POINTS[:2]
    processes = [subprocess.Popen([sys.executable, os.path.join(ROOT, f"{cli}.py"),
                                   *command(cli, paths, str(tmp_path / cli), changes)],
                                  cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for cli, changes, _ in cases]                  # concurrently
    for process, (_, _, expected) in zip(processes, cases):
        _, stderr = process.communicate(timeout=120)
        assert_one_sentence(process.returncode, stderr, expected)


@pytest.mark.parametrize("cli, changes, expected", ENTRY_POINTS, ids=[c[0] for c in ENTRY_POINTS])
def test_every_script_main_block_answers_with_one_sentence(paths, tmp_path, capsys, monkeypatch,
                                                           cli, changes, expected):
    script = os.path.join(ROOT, f"{cli}.py")
    monkeypatch.setattr(sys, "argv", [script, *command(cli, paths, str(tmp_path / cli), changes)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")           # the script's own `if __name__ == ...` block
    assert_one_sentence(exit_info.value.code, capsys.readouterr().err, expected)


# ---------------------------------------------------------------------------- the table, in-process

CASES = [
    # missing or corrupt checkpoint
    ("speculative", {"--target": "{root}/missing"}, "checkpoint directory"),
    ("speculative", {"--draft": "{corrupt}"}, "cannot read the weights"),
    ("evaluate", {"--drafts": "a={root}/missing"}, "does not exist"),
    ("distill_data", {"--target": "{corrupt}"}, "cannot read the weights"),
    ("train", {"--preset": None, "--init": "{corrupt}"}, "cannot read the weights"),
    ("train", {"--preset": None, "--init": "{root}/missing"}, "does not exist"),
    # missing or corrupt tokenizer
    ("speculative", {"--tokenizer": "{root}/missing.model"}, "tokenizer file"),
    ("train", {"--tokenizer": "{bad_tok}"}, "is neither a SentencePiece model"),
    ("distill_data", {"--tokenizer": "{bad_tok}"}, "is neither a SentencePiece model"),
    # unknown preset or loss; flags that make no sense
    ("train", {"--preset": "nope"}, "unknown model preset 'nope'"),
    ("train", {"--mode": "distill", "--teacher": "{target}", "--loss": "nope"}, "unknown loss 'nope'"),
    ("train", {"--mode": "distill"}, "--mode distill needs --teacher"),
    ("train", {"--ckpt-interval": "0"}, "--ckpt-interval must be >= 1"),
    ("train", {"--lr": "nan"}, "--lr must be a positive number"),
    ("train", {"--max-len": "1000"}, "--max-len 1000 exceeds the context of the model (64); lower --max-len"),
    ("train", {"--preset": None}, "give exactly one of --preset"),
    # tokenizer vocabulary != model vocabulary; draft vocabulary != target vocabulary
    ("speculative", {"--tokenizer": "{tok350}"}, "has 350 tokens but the model"),
    ("evaluate", {"--tokenizer": "{tok350}"}, "has 350 tokens but the model"),
    ("distill_data", {"--tokenizer": "{tok350}"}, "has 350 tokens but the model"),
    ("train", {"--preset": None, "--init": "{draft350}"}, "expects 350"),
    ("train", {"--mode": "distill", "--preset": None, "--init": "{draft}", "--teacher": "{draft350}"}, "expects 350"),
    ("speculative", {"--draft": "{draft350}"}, "draft vocabulary (350) != target vocabulary (320)"),
    # gamma < 1, temperature < 0, top-p outside (0, 1], top-k < 1
    ("speculative", {"--gamma": "0", "--target": "{root}/missing"}, "gamma (draft tokens per block) must be >= 1"),
    ("evaluate", {"--gammas": "0,2"}, "--gammas must list draft lengths >= 1"),
    ("speculative", {"--temperature": "-0.5"}, "temperature must be >= 0"),
    ("evaluate", {"--temperatures": "0,-1"}, "temperature must be >= 0"),
    ("distill_data", {"--temperatures": "-1"}, "temperature must be >= 0"),
    ("speculative", {"--top-p": "0"}, "top_p must be in (0, 1]"),
    ("speculative", {"--top-p": "1.5"}, "top_p must be in (0, 1]"),
    ("distill_data", {"--top-ps": "1.5"}, "top_p must be in (0, 1]"),
    ("speculative", {"--top-k": "0"}, "top_k must be >= 1"),
    ("speculative", {"--decode-path": "graphs"}, "needs the models on a CUDA GPU"),
    ("evaluate", {"--decode-path": "compile+graphs"}, "needs the models on a CUDA GPU"),
    ("evaluate", {"--draft-vocab": "64"}, "--draft-vocab N and --draft-vocab-data distill.jsonl go together"),
    ("evaluate", {"--draft-vocab": "0", "--draft-vocab-data": "{prompts}"}, "--draft-vocab must be >= 1"),
    ("evaluate", {"--draft-vocab": "64", "--draft-vocab-data": "{root}/missing.jsonl"}, "missing.jsonl not found"),
    ("train", {"--init-layers": "2"}, "--init-layers cuts the checkpoint given by --init"),
    ("train", {"--preset": None, "--init": "{draft}", "--init-layers": "9"}, "cannot keep 9 blocks"),
    ("speculative", {"--tokenizer": None}, "give --tokenizer"),
    # an empty or malformed prompts file, with the line number
    ("evaluate", {"--prompts": "story={malformed}"}, "malformed.jsonl:2: invalid JSON"),
    ("evaluate", {"--prompts": "story={empty}"}, "JSONL file is empty"),
    ("distill_data", {"--prompts": "{empty}"}, "JSONL file is empty"),
    ("train", {"--data": "{malformed}"}, 'malformed.jsonl:1: "response" must be a non-empty string'),
    # a prompt longer than the context
    ("speculative", {"--target": "{short}", "--draft": "{short}", "--prompt": LONG}, "the model's context is 16"),
    ("evaluate", {"--target": "{short}"}, "prompt 1 of"),
    ("evaluate", {"--target": "{short}", "--speedup": True}, "the model's context is 16"),
    ("distill_data", {"--target": "{short}"}, "leaving no room for an answer"),
    ("train", {"--eval-target": "{short}", "--eval-prompts": "{prompts}", "--eval-max-new-tokens": "8"},
     "prompt 1 of"),
    # an output path that cannot be written (checked before any model is loaded)
    ("train", {"--out": "{file}/run", "--preset": None, "--init": "{corrupt}"}, "cannot write the run directory"),
    ("distill_data", {"--out": "{file}/distill.jsonl"}, "cannot create the output directory"),
    ("evaluate", {"--out": "{file}/results.json"}, "cannot create the output directory"),
    ("tokenizer", {"--out": "{file}/tok.model"}, "cannot write"),
    ("data", {"--out": "{file}"}, "cannot write the world to"),
]


@pytest.mark.parametrize("cli, changes, expected", CASES, ids=[f"{c[0]}-{c[2][:30]}" for c in CASES])
def test_bad_input_is_one_sentence(paths, tmp_path, capsys, cli, changes, expected):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(MAINS[cli], command(cli, paths, str(tmp_path / "out"), changes))
    assert_one_sentence(exit_info.value.code, capsys.readouterr().err, expected)


def test_evaluate_refuses_to_mix_rows_of_other_settings(paths, tmp_path, capsys):
    out = str(tmp_path / "results")
    argv = command("evaluate", paths, out, {"--gammas": "1"})
    evaluate.main(argv)
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [(r["draft"], r["gamma"]) for r in rows] == [("a", 1)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, command("evaluate", paths, out, {"--gammas": "1", "--max-new-tokens": "3"}))
    assert_one_sentence(exit_info.value.code, capsys.readouterr().err, "max_new_tokens: 4 there, 3 now")
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, argv)
    assert_one_sentence(exit_info.value.code, capsys.readouterr().err, "is not a results file of evaluate.py")


def test_speculative_bench_times_plain_decoding_of_the_same_prompt_and_settings(paths, capsys, monkeypatch):
    # --bench: the speed-up it prints divides the speculative run's tokens/s by plain decoding's
    # of the same prompt, sampling settings, seed and decode path (recorded here), after a warm-up.
    timed, decoded = {}, []
    timed_plain_run, generate = speculative.timed_plain_run, speculative.SpeculativeDecoder.generate

    def recording_plain(plain, prompt, max_new_tokens, temperature, top_k, top_p, stop_ids, generator):
        timed.update(prompt=prompt, max_new_tokens=max_new_tokens, settings=(temperature, top_k, top_p),
                     seed=generator.initial_seed(), steps=plain.steps)
        n_new, seconds = timed_plain_run(plain, prompt, max_new_tokens, temperature, top_k, top_p, stop_ids, generator)
        timed["speed"] = n_new / seconds
        return n_new, seconds

    def recording_generate(decoder, prompt, max_new_tokens, *args, **kwargs):
        decoded.append((list(prompt), max_new_tokens))
        return generate(decoder, prompt, max_new_tokens, *args, **kwargs)
    monkeypatch.setattr(speculative, "timed_plain_run", recording_plain)
    monkeypatch.setattr(speculative.SpeculativeDecoder, "generate", recording_generate)
    speculative.main(command("speculative", paths, "", {"--bench": True, "--temperature": "0.7", "--top-p": "0.9",
                                                         "--seed": "3", "--max-new-tokens": "6"}))
    out = capsys.readouterr().out
    (warm_prompt, warm_tokens), (prompt, n_new) = decoded       # the untimed warm-up, then the timed run
    assert warm_prompt == prompt and warm_tokens <= n_new == 6
    assert timed["prompt"] == prompt and timed["max_new_tokens"] == 6
    assert timed["settings"] == (0.7, None, 0.9) and timed["seed"] == 3 and not timed["steps"].graphs
    speculative_speed = float(out.split(" tokens/s")[0].rsplit("(", 1)[1])
    plain_line = out.strip().splitlines()[-1]
    assert f"{timed['speed']:.1f} tokens/s" in plain_line
    printed = float(plain_line.split("speed-up ")[1].split("x")[0])
    assert printed == pytest.approx(speculative_speed / timed["speed"], abs=0.01 + 0.05 / timed["speed"])


def test_evaluate_reuses_one_decoder_per_model_and_measures_as_fresh_ones_do(paths, tmp_path, monkeypatch):
    # One plain decoder for every baseline and one speculative decoder per draft (so a GPU
    # records each kind of step once, not once per row); their rows equal fresh decoders' rows.
    # Sharp models that half agree (so accepted counts depend on every cached token) and two
    # tasks of different prompt lengths (so a decoder sized for one task only would fail).
    from checkpoints import load_model
    from data import load_jsonl_prompts
    from test_speculative import perturbed_copy, random_model
    from tokenizer import chat_prompt, load_tokenizer
    target = random_model(0, vocab_size=320, max_seq_len=128)
    for name, model in (("target", target), ("a", perturbed_copy(target, 0.3)), ("b", perturbed_copy(target, 0.6, seed=2))):
        save_model(model, str(tmp_path / name))
    long_prompts = tmp_path / "long.jsonl"
    long_prompts.write_text("".join(json.dumps({"prompt": f"Tell me a long story about Mira and the lantern, part {i}, "
                                                          "with the river, the hills and the old mill."}) + "\n"
                                    for i in range(2)))
    made = {"plain": 0, "speculative": 0}
    for module in (evaluate, speculative):
        for name, cls in (("plain", speculative.Decoder), ("speculative", speculative.SpeculativeDecoder)):
            monkeypatch.setattr(module, cls.__name__, lambda *a, _cls=cls, _name=name, **k:
                                made.__setitem__(_name, made[_name] + 1) or _cls(*a, **k))
    evaluate.main(command("evaluate", paths, str(tmp_path / "results"), {
        "--target": str(tmp_path / "target"), "--drafts": f"a={tmp_path / 'a'},b={tmp_path / 'b'}",
        "--prompts": f"short={paths['prompts']},long={long_prompts}", "--temperatures": "0,1", "--speedup": True}))
    assert made == {"plain": 1, "speculative": 2}
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert len(rows) == 2 * 2 * 2 * 2                                  # drafts x tasks x T x gamma
    assert any(0 < row["acceptance_rate"] < 1 for row in rows)          # the rows tell decoders apart
    tok = load_tokenizer(paths["tok"])
    task_prompts = {task: [chat_prompt(tok, r["prompt"], r.get("system")) for r in load_jsonl_prompts(file)[:2]]
                    for task, file in (("short", paths["prompts"]), ("long", str(long_prompts)))}
    assert len(set(map(len, task_prompts["long"] + task_prompts["short"]))) > 1
    for row in rows:
        [fresh] = evaluate.evaluate_pair(load_model(str(tmp_path / "target")), load_model(str(tmp_path / row["draft"])),
                                         task_prompts[row["task"]], [row["gamma"]], row["temperature"], 4,
                                         stop_ids=tok.stop_ids, seed=0)
        assert (row["block_efficiency"], row["acceptance_rate"]) == (fresh["block_efficiency"], fresh["acceptance_rate"])
