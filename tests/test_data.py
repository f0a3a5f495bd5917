"""Tests for data.py: the synthetic world (determinism, held-out disjointness, derivable
answers, the style gap between corpus and chat answers) and the file loaders."""
import json
import os
import random
import re
import subprocess
import sys

import pytest

import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = dict(corpus_docs=300, instruct_examples=300, seed_prompts=150, eval_prompts_per_task=20)
# strings that mark the chat style; the plain corpus must never contain any of them
CHAT_MARKERS = ["Sure!", "Of course", "Here is", "Here's", "Here are", "summary", "highlights",
                "I hope", "In short", "Let me know", "- ", "\n"]


@pytest.fixture(scope="module")
def world():
    return data.make_world(data.WorldConfig(seed=0, **SMALL))


def words_of(kind_list, text):
    """Entities of one kind that occur in text as whole words / phrases."""
    return {w for w in kind_list if re.search(rf"\b{re.escape(w)}\b", text)}


def passage_of(prompt):
    """The passage is the longest blank-line-separated block of a summary/highlights prompt."""
    return max(prompt.split("\n\n"), key=len)


def all_records(world):
    return world["instructions"] + [
        {**r, "response": r["reference"]} for recs in world["eval_prompts"].values() for r in recs]


# ------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_world_and_other_seed_differs():
    cfg = data.preset("tiny", seed=3)
    assert data.make_world(cfg) == data.make_world(data.preset("tiny", seed=3))
    other = data.make_world(data.preset("tiny", seed=4))
    world = data.make_world(cfg)
    for key in ("corpus", "instructions", "seed_prompts", "eval_prompts"):
        assert world[key] != other[key], key


def test_deterministic_across_processes():
    # string seeds must not depend on PYTHONHASHSEED: compare with a fresh interpreter
    code = "import data, json; print(json.dumps(data.make_world(data.preset('tiny', seed=1))))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == data.make_world(data.preset("tiny", seed=1))


def test_parts_use_independent_streams():
    small = data.make_world(data.WorldConfig(seed=0, corpus_docs=20, instruct_examples=10))
    large = data.make_world(data.WorldConfig(seed=0, corpus_docs=20, instruct_examples=50))
    assert small["corpus"] == large["corpus"]
    assert small["seed_prompts"] == large["seed_prompts"]
    assert large["instructions"][:10] == small["instructions"]


def test_counts_follow_config(world):
    assert len(world["corpus"]) == SMALL["corpus_docs"]
    assert len(world["instructions"]) == SMALL["instruct_examples"]
    assert len(world["seed_prompts"]) == SMALL["seed_prompts"]
    assert sorted(world["eval_prompts"]) == sorted(data.TASKS)
    for task, recs in world["eval_prompts"].items():
        assert len(recs) == SMALL["eval_prompts_per_task"]
        assert {r["task"] for r in recs} == {task}
    assert {r["task"] for r in world["instructions"]} == set(data.TASKS)
    assert all("response" not in r for r in world["seed_prompts"])


# ------------------------------------------------------------------------ disjointness
def test_eval_prompts_disjoint_from_seed_and_instruction_prompts(world):
    eval_prompts = [r["prompt"] for recs in world["eval_prompts"].values() for r in recs]
    assert len(set(eval_prompts)) == len(eval_prompts)
    train = {r["prompt"] for r in world["seed_prompts"] + world["instructions"]}
    assert not train & set(eval_prompts)


def test_eval_passages_absent_from_all_training_text(world):
    train_text = "\n".join(world["corpus"] + [r["prompt"] + r["response"] for r in world["instructions"]]
                           + [r["prompt"] for r in world["seed_prompts"]])
    for task in ("summary", "highlights"):
        for r in world["eval_prompts"][task]:
            assert passage_of(r["prompt"]) not in train_text


def test_eval_filter_rejects_collisions(monkeypatch):
    # shrink the vocabulary so story requests collide often: the filter must still hold
    monkeypatch.setattr(data, "NAMES", {"Mira": ("she", "her"), "Tomas": ("he", "his"),
                                        "Lena": ("she", "her")})
    monkeypatch.setattr(data, "OBJECTS", ["key", "map"])
    monkeypatch.setattr(data, "PLACES", ["the barn", "the park"])
    w = data.make_world(data.WorldConfig(corpus_docs=5, instruct_examples=60, seed_prompts=60,
                                         eval_prompts_per_task=8))
    train = {r["prompt"] for r in w["instructions"] + w["seed_prompts"] if r["task"] == "story"}
    held_out = [r["prompt"] for r in w["eval_prompts"]["story"]]
    assert len(train) > 10 and not train & set(held_out) and len(set(held_out)) == 8


def test_too_many_eval_prompts_raises(monkeypatch):
    monkeypatch.setattr(data, "NAMES", {"Mira": ("she", "her"), "Tomas": ("he", "his")})
    monkeypatch.setattr(data, "OBJECTS", ["key"])
    monkeypatch.setattr(data, "PLACES", ["the barn"])
    # only 2 names x 4 phrasings = 8 distinct story requests exist
    with pytest.raises(ValueError, match="eval_prompts_per_task"):
        data.make_world(data.WorldConfig(corpus_docs=1, instruct_examples=0, seed_prompts=0,
                                         eval_prompts_per_task=9))


# ---------------------------------------------------------------- answers are derivable
def test_summary_and_highlights_mention_only_passage_entities(world):
    kinds = [list(data.NAMES), data.OBJECTS, data.PLACES, data.LANDMARKS, data.ADJECTIVES]
    checked = 0
    for r in all_records(world):
        if r["task"] == "story":
            continue
        passage = passage_of(r["prompt"])
        for kind in kinds:
            assert words_of(kind, r["response"]) <= words_of(kind, passage), r
        checked += 1
    assert checked > 100


def test_summary_names_hero_object_and_place(world):
    for r in all_records(world):
        if r["task"] != "summary":
            continue
        passage, body = passage_of(r["prompt"]), r["response"].split("\n\n")[-1]
        hero = re.match(r"(?:One morning, )?([A-Z][a-z]+)", passage).group(1)  # intro names the hero
        (place,) = words_of(data.PLACES, passage.split(".")[0])  # the intro's place
        (obj,) = words_of(data.OBJECTS, passage)  # a story has one key object
        assert hero in body and place in body and f"a {obj}" in body, (passage, body)
        assert body.count(".") == 1  # one sentence


def test_highlights_keep_find_and_ending_in_story_order():
    rng = random.Random(0)
    for n in range(3, 10):
        _, facts = data.story(rng, n)
        events = facts["events"]
        for _ in range(5):
            picked = data._highlights(rng, events)
            assert len(picked) in (3, 4)
            assert events[1] in picked and picked[-1] == events[-1]  # the find and the ending
            positions = [events.index(p) for p in picked]
            assert positions == sorted(positions)


def test_highlights_answers_are_bullets_restating_the_passage(world):
    for r in all_records(world):
        if r["task"] != "highlights":
            continue
        bullets = [line[2:] for line in r["response"].splitlines() if line.startswith("- ")]
        assert len(bullets) in (3, 4)
        assert any(" found a " in b for b in bullets[:2])  # the find (after the intro, if any)
        last_sentence = passage_of(r["prompt"]).split(". ")[-1]  # the ending
        assert ("gave" in bullets[-1]) == ("gave" in last_sentence)
        assert ("home" in bullets[-1]) == ("home" in last_sentence)


def test_story_answers_use_requested_entities(world):
    for r in all_records(world):
        if r["task"] != "story":
            continue
        for kind in (list(data.NAMES), data.OBJECTS, data.PLACES):
            assert words_of(kind, r["prompt"]) <= words_of(kind, r["response"]), r


def test_story_refers_back_to_its_cast():
    rng = random.Random(0)
    cast = data.sample_cast(rng)
    for n in range(3, 10):
        text, facts = data.story(rng, n, cast)
        assert text.count(".") == n  # one sentence per event
        assert text.startswith(cast["H"]) or text.startswith("One morning, " + cast["H"])
        assert f"a {cast['adj']} {cast['obj']}" in text  # introduced once, with "a"
        assert facts["events"][1] == f"{cast['H']} found a {cast['adj']} {cast['obj']}."
    with pytest.raises(ValueError, match="n_sentences"):
        data.story(rng, 2)


# ----------------------------------------------------------------------- the style gap
def test_chat_markers_absent_from_corpus_and_present_in_answers(world):
    for doc in world["corpus"]:
        assert not any(m in doc for m in CHAT_MARKERS), doc
    for r in all_records(world):
        first_line = r["response"].split("\n")[0]
        assert first_line.endswith(":") and any(m in first_line for m in CHAT_MARKERS[:5]), r


def test_corpus_has_entropy(world):
    # many distinct sentences, but a small vocabulary a tiny model can learn
    sentences = {s for doc in world["corpus"] for s in doc.split(". ")}
    vocab = set(re.findall(r"[A-Za-z]+", " ".join(world["corpus"])))
    assert len(sentences) > 1000 and 100 < len(vocab) < 400


# ------------------------------------------------------------------------- files, loaders
def test_write_world_round_trips_through_loaders(world, tmp_path):
    data.write_world(world, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["corpus.txt", "instructions.jsonl", "seed_prompts.jsonl"]
        + [f"eval_{t}.jsonl" for t in data.TASKS])  # and no leftover temp files
    assert data.load_corpus(str(tmp_path / "corpus.txt")) == world["corpus"]
    assert data.load_jsonl_examples(str(tmp_path / "instructions.jsonl")) == world["instructions"]
    assert data.load_jsonl_prompts(str(tmp_path / "seed_prompts.jsonl")) == world["seed_prompts"]
    for task in data.TASKS:
        loaded = data.load_jsonl_prompts(str(tmp_path / f"eval_{task}.jsonl"))
        assert loaded == world["eval_prompts"][task]


def test_load_corpus_splits_on_blank_lines_and_rejects_empty_or_missing(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first doc\nline two\n\n  \nsecond doc\n\n\n")
    assert data.load_corpus(str(path)) == ["first doc\nline two", "second doc"]
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.load_corpus(str(path))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.load_corpus(str(tmp_path / "nope.txt"))


def test_load_jsonl_prompts_defaults_system_and_skips_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi"}\n\n{"prompt": "yo", "system": "be nice", "task": "t"}\n')
    assert data.load_jsonl_prompts(str(path)) == [
        {"system": None, "prompt": "hi"}, {"system": "be nice", "prompt": "yo", "task": "t"}]


@pytest.mark.parametrize("lines, line_no, problem", [
    (['{"prompt": "a"}', "", '{"prompt": "b",'], 3, "invalid JSON"),   # blank line 2 counts
    (['{"prompt": "a"}', '{"system": "s"}'], 2, '"prompt" must be a non-empty string'),
    (['{"prompt": "   "}'], 1, '"prompt" must be a non-empty string'),
    (['{"prompt": 5}'], 1, '"prompt" must be a non-empty string'),
    (['{"prompt": "a", "system": 3}'], 1, '"system" has the wrong type'),
    (['{"prompt": "a", "promt": "typo"}'], 1, 'unknown key "promt"'),
    (['["prompt", "a"]'], 1, "JSON object"),
])
def test_load_jsonl_prompts_errors_name_file_and_line(tmp_path, lines, line_no, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        data.load_jsonl_prompts(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}:{line_no}: ") and problem in message
    assert 'expected {"prompt": ..., "system": optional}' in message


def test_load_jsonl_empty_or_missing_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.load_jsonl_prompts(str(path))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        data.load_jsonl_prompts(str(tmp_path / "missing.jsonl"))


def test_load_jsonl_examples_requires_response(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=rf'{re.escape(str(path))}:2: "response" must be'):
        data.load_jsonl_examples(str(path))


# ------------------------------------------------------------------------ config and CLI
def test_bad_config_raises():
    with pytest.raises(ValueError, match="corpus_docs"):
        data.WorldConfig(corpus_docs=-1)
    with pytest.raises(ValueError, match="system_prob"):
        data.WorldConfig(system_prob=1.5)
    with pytest.raises(ValueError, match="tiny"):
        data.preset("huge")


def test_cli_writes_world(tmp_path):
    out = tmp_path / "world"
    result = subprocess.run([sys.executable, "data.py", "--preset", "tiny", "--seed", "2",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "40 corpus documents" in result.stdout
    assert data.load_corpus(str(out / "corpus.txt")) == data.make_world(data.preset("tiny", seed=2))["corpus"]
