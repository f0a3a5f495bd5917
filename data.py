"""
A tiny synthetic "world" of text that stands in for every data set in the paper.

The paper trains on things no laptop can hold: a 600B-token English corpus, Llama 2
Chat's own fine-tuning data, OIG / OpenAssistant seed prompts, and three evaluation sets
(Dolly, XSum, CNN/DailyMail). To run the whole recipe on a CPU in minutes, without a
download, this file *generates* a small language with the same four roles:

  (1) corpus        plain story prose from a stochastic grammar   ~ the 600B pretraining tokens
  (2) instructions  chat requests + chat-styled answers           ~ Llama 2 Chat's fine-tuning
                    (used ONLY to make the stand-in target chat-like)
  (3) seed_prompts  requests without answers; the TARGET answers  ~ OIG / OpenAssistant seeds
                    them later (distill_data.py)
  (4) eval_prompts  held-out requests for three tasks:
                    "story"      write a story about X, Y and Z   ~ Databricks Dolly 15k
                    "summary"    one sentence about a passage     ~ XSum
                    "highlights" 3-4 "- " bullets of a passage    ~ CNN/DailyMail

Two properties make the world a faithful miniature of the paper's setting:

* The language is learnable but not trivial. A story is a small state (hero, friend,
  place, object, landmark) and a plot; every sentence picks one of several templates, and
  later sentences refer back to earlier ones ("Mira found a red lantern ... Later, she gave
  the lantern to Tomas"), so a model must copy from context (attention matters), and the
  random choices leave real entropy (sampling temperature matters).
* The chat answers carry a style the corpus never shows: openings ("Sure! Here is ..."),
  closings ("I hope you enjoyed the story!"), bullet lists, "In short, ...". A draft
  pretrained on the corpus alone therefore predicts the target's answers badly: the
  misalignment that distillation is meant to fix.

Everything is deterministic from one seed; each part draws from its own named RNG stream,
and held-out evaluation prompts are filtered against everything a model trains on.
"""
import argparse
import json
import os
import random
import re
from dataclasses import dataclass, fields

from common import run_cli, write_atomically

# ----------------------------------------------------------------------------- vocabulary
# Nouns and adjectives never start with a vowel, so "a" is always the right article, and
# no entity word occurs inside another phrase (no "stone" object beside a "stone wall").
NAMES = {  # name -> (subject pronoun, possessive)
    "Mira": ("she", "her"), "Tomas": ("he", "his"), "Lena": ("she", "her"),
    "Bruno": ("he", "his"), "Nora": ("she", "her"), "Felix": ("he", "his"),
    "Sara": ("she", "her"), "Jonas": ("he", "his"), "Rosa": ("she", "her"),
    "Pavel": ("he", "his"), "Greta": ("she", "her"), "Hugo": ("he", "his"),
    "Dina": ("she", "her"), "Karl": ("he", "his"), "Vera": ("she", "her"),
    "Marco": ("he", "his"), "Lucia": ("she", "her"), "Nils": ("he", "his"),
    "Tara": ("she", "her"), "Ben": ("he", "his"), "Wanda": ("she", "her"),
    "Rufus": ("he", "his"), "Celia": ("she", "her"), "Dario": ("he", "his"),
}
PLACES = ["the old mill", "the harbor", "the forest", "the market", "the village",
          "the castle", "the garden", "the park", "the cellar", "the library", "the barn",
          "the station", "the bakery", "the school", "the kitchen"]  # all read well after "in"
LANDMARKS = ["the gate", "the bridge", "the well", "the big tree", "the high wall",
             "the window", "the fence", "the stairs", "the path", "the tower"]
OBJECTS = ["lantern", "key", "map", "book", "coin", "ring", "box", "cup", "lamp", "bell",
           "kite", "hat", "shell", "stone", "rope", "basket", "letter", "clock", "feather",
           "mirror", "flute", "boot", "candle", "pear", "scarf"]
ADJECTIVES = ["small", "red", "shiny", "heavy", "broken", "wooden", "golden", "tiny",
              "strange", "blue", "dusty", "green", "bright", "silver", "plain"]
EMOTIONS = ["happy", "tired", "scared", "glad", "proud", "sad", "calm", "curious"]
ADVERBS = ["slowly", "quickly", "quietly", "carefully"]

# ------------------------------------------------------------------------ story grammar
# Each event kind has several surface templates (entropy) and one canonical "fact"
# (names instead of pronouns) that highlights restate. Keys: H hero name, h hero as name
# or pronoun, his possessive, F friend, obj/adj the object, place, L landmark, emo, adv.
TEMPLATES = {
    "intro": ["{H} lived near {place}.", "One morning, {H} went to {place}.",
              "{H} walked to {place} on a cold day.", "{H} was in {place} again."],
    "find": ["There, {h} found a {adj} {obj}.", "{h} found a {adj} {obj} in {place}.",
             "Near {L}, {h} saw a {adj} {obj}.", "In {place}, {h} picked up a {adj} {obj}."],
    "meet": ["{h} met {F} near {L}.", "At {L}, {h} saw {F}.",
             "{F} was waiting by {L}.", "Then {h} met {his} friend {F}."],
    "look": ["{h} looked at the {obj} {adv}.", "The {obj} was {adj} and very old.",
             "{h} held the {obj} up to the light."],
    "feel": ["{h} felt {emo}.", "{H} was {emo} all day.", "That made {H} feel {emo}."],
    "weather": ["It began to rain.", "The sun was warm.", "A cold wind blew.",
                "The sky was grey."],
    "lose": ["{h} dropped the {obj} near {L}, but soon found it again.",
             "The {obj} fell by {L}, and {h} picked it up {adv}."],
    "ask": ["{F} asked about the {obj}.", "{F} wanted to see the {obj}."],
    "walk": ["{h} walked {adv} to {L}.", "After a while, {h} went to {L}."],
    "give": ["In the end, {h} gave the {obj} to {F}.", "Later, {h} gave it to {F}.",
             "{H} gave the {obj} to {F}, who smiled."],
    "keep": ["{h} took the {obj} home.", "That evening, {H} carried the {obj} home."],
    "return": ["{h} put the {obj} back in {place}.", "Later, {h} left the {obj} in {place}."],
}
FACTS = {"intro": "{H} went to {place}.", "find": "{H} found a {adj} {obj}.",
         "meet": "{H} met {F}.", "look": "{H} looked at the {obj}.", "feel": "{H} felt {emo}.",
         "weather": None, "lose": "{H} dropped the {obj} but found it again.",
         "ask": "{F} asked about the {obj}.", "walk": "{H} walked to {L}.",
         "give": "{H} gave the {obj} to {F}.", "keep": "{H} took the {obj} home.",
         "return": "{H} put the {obj} back in {place}."}
MIDDLE = ["meet", "look", "feel", "weather", "lose", "ask", "walk"]
ONCE = {"meet", "lose"}  # events that happen at most once per story
ENDINGS = {"give": "gave it to {F}", "keep": "took it home", "return": "put it back"}

# ------------------------------------------------------ chat requests and chat-style answers
# None of these strings (or bullets, or the words "summary"/"highlights") ever occur in
# the corpus: this is the style gap between a pretrained draft and a chat target.
SYSTEM_PROMPTS = ["You are a helpful, respectful and honest assistant.",
                  "You are a friendly storyteller. Keep answers short.",
                  "You are a careful assistant. Answer clearly and briefly."]
REQUESTS = {
    "story": ["Write a short story about {H} and a {obj} in {place}.",
              "Tell me a story about {H}, who finds a {obj} in {place}.",
              "Can you write a short story where {H} finds a {obj} in {place}?",
              "Please write a little story set in {place} about {H} and a {obj}."],
    "summary": ["Summarize the following passage in one sentence.\n\n{passage}",
                "Write a one-sentence summary of this story:\n\n{passage}",
                "{passage}\n\nSummarize the passage above in one sentence.",
                "In one sentence, what happens in this passage?\n\n{passage}"],
    "highlights": ["Write the key highlights of this passage as a short list.\n\n{passage}",
                   "List the main points of the following story.\n\n{passage}",
                   "{passage}\n\nWhat are the highlights of the passage above?"],
}
OPENINGS = {
    "story": ["Sure! Here is a short story about {H} and a {obj}:",
              "Of course! Here's a little story set in {place}:",
              "Here is a short story for you:", "Sure! Here's a story about {H}:"],
    "summary": ["Of course. Here's a one-sentence summary:",
                "Sure! Here is a one-sentence summary of the passage:",
                "Here is the summary in one sentence:", "Sure! In short:"],
    "highlights": ["Here are the main highlights:",
                   "Sure! Here are the main points of the passage:",
                   "Of course. Here are the highlights:"],
}
CLOSINGS = {
    "story": ["I hope you enjoyed the story!", "I hope you liked it!",
              "Let me know if you would like another story!", ""],
    "summary": [""],
    "highlights": ["In short, {H} found a {obj} and {ending}.",
                   "I hope these highlights help!", ""],
}
SUMMARIES = ["{H} found a {obj} in {place} and {ending}.",
             "In {place}, {H} found a {obj} and {ending}.",
             "The passage tells how {H} found a {obj} in {place} and {ending}."]
TASKS = ("story", "summary", "highlights")
SENTENCES = {"story": (4, 8), "summary": (4, 6), "highlights": (6, 9)}  # passage lengths


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def sample_cast(rng: random.Random) -> dict:
    """The fixed state of one story: who, where, what."""
    hero, friend = rng.sample(sorted(NAMES), 2)
    return {"H": hero, "F": friend, "place": rng.choice(PLACES), "obj": rng.choice(OBJECTS),
            "adj": rng.choice(ADJECTIVES), "L": rng.choice(LANDMARKS)}


def story(rng: random.Random, n_sentences: int, cast: dict | None = None) -> tuple[str, dict]:
    """One passage of plain prose and its facts.

    Plot: intro, find, (n_sentences - 3) middle events, one ending. Returns
    (text, facts) with facts = cast + {"ending": kind, "events": [canonical fact, ...]}.
    """
    if n_sentences < 3:
        raise ValueError(f"story needs n_sentences >= 3 (intro, find, ending), got {n_sentences}")
    cast = dict(cast) if cast else sample_cast(rng)
    pronoun, possessive = NAMES[cast["H"]]
    middle = []
    for _ in range(n_sentences - 3):  # no event twice in a row; the friend asks only once met
        kind = rng.choice([k for k in MIDDLE if k not in middle[-1:]
                           and not (k in ONCE and k in middle)
                           and (k != "ask" or "meet" in middle)])
        middle.append(kind)
    ending = rng.choice(sorted(ENDINGS))
    sentences, events = [], []
    for i, kind in enumerate(["intro", "find", *middle, ending]):
        # after the intro, refer to the hero by pronoun half the time: a back-reference
        hero_ref = cast["H"] if i == 0 or rng.random() < 0.5 else pronoun
        slots = {**cast, "h": hero_ref, "his": possessive,
                 "emo": rng.choice(EMOTIONS), "adv": rng.choice(ADVERBS)}
        sentences.append(_cap(rng.choice(TEMPLATES[kind]).format(**slots)))
        if FACTS[kind]:
            events.append(FACTS[kind].format(**slots))
    return " ".join(sentences), {**cast, "ending": ending, "events": events}


def _highlights(rng: random.Random, events: list[str]) -> list[str]:
    """3-4 canonical facts in story order: always the find and the ending."""
    k = rng.choice((3, 4))
    middle = list(range(2, len(events) - 1))
    pool = middle if len(middle) >= k - 2 else middle + [0]  # fall back to the intro
    picked = sorted([1, len(events) - 1] + rng.sample(pool, min(k - 2, len(pool))))
    return [events[i] for i in picked]


def make_example(rng: random.Random, task: str, system_prob: float = 0.5) -> tuple[dict, str | None]:
    """One chat record {task, system, prompt, response} and its passage (None for "story")."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    system = rng.choice(SYSTEM_PROMPTS) if rng.random() < system_prob else None
    if task == "story":  # Dolly analogue: the answer must use the requested entities
        cast = sample_cast(rng)
        passage = None
        body, facts = story(rng, rng.randint(*SENTENCES[task]), cast)
        prompt = rng.choice(REQUESTS[task]).format(**cast)
    else:  # XSum / CNN-DM analogues: the answer is derived from the passage's facts
        passage, facts = story(rng, rng.randint(*SENTENCES[task]))
        prompt = rng.choice(REQUESTS[task]).format(passage=passage)
    slots = {**facts, "ending": ENDINGS[facts["ending"]].format(**facts)}
    if task == "summary":
        body = rng.choice(SUMMARIES).format(**slots)
    elif task == "highlights":
        body = "\n".join("- " + fact for fact in _highlights(rng, facts["events"]))
    parts = [rng.choice(OPENINGS[task]).format(**slots), body,
             rng.choice(CLOSINGS[task]).format(**slots)]
    response = "\n\n".join(p for p in parts if p)
    return {"task": task, "system": system, "prompt": prompt, "response": response}, passage


# ------------------------------------------------------------------------------ the world
@dataclass
class WorldConfig:
    seed: int = 0
    corpus_docs: int = 3000            # ~0.63M characters of plain prose
    instruct_examples: int = 3000      # chat data that makes the stand-in target chat-like
    seed_prompts: int = 600            # distillation seeds, answered later by the target
    eval_prompts_per_task: int = 40    # held out, per task
    system_prob: float = 0.5           # share of records that carry a system prompt

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "system_prob" and (not isinstance(value, int) or value < 0):
                raise ValueError(f"WorldConfig.{f.name} must be an int >= 0, got {value!r}")
        if not 0.0 <= self.system_prob <= 1.0:
            raise ValueError(f"WorldConfig.system_prob must be in [0, 1], got {self.system_prob}")


WORLD_PRESETS = {
    "tiny": dict(corpus_docs=40, instruct_examples=30, seed_prompts=20, eval_prompts_per_task=5),
    "cpu": dict(),  # the defaults above
    "gpu": dict(corpus_docs=30000, instruct_examples=30000, seed_prompts=6000,
                eval_prompts_per_task=200),
}


def preset(name: str, **overrides) -> WorldConfig:
    if name not in WORLD_PRESETS:
        raise ValueError(f"unknown world preset {name!r}; choose one of {sorted(WORLD_PRESETS)}")
    return WorldConfig(**{**WORLD_PRESETS[name], **overrides})


def make_world(cfg: WorldConfig) -> dict:
    """corpus, instructions, seed_prompts and eval_prompts, all from cfg.seed.

    Every part has its own RNG stream (a string seed hashes the same in every process),
    so growing one part never changes another. Eval prompts are drawn last and rejected
    if their prompt equals any training prompt or their passage occurs anywhere in the
    text a model trains on (corpus, instruction prompts and answers, seed prompts).
    """
    def stream(name: str) -> random.Random:
        return random.Random(f"world/{cfg.seed}/{name}")

    rng = stream("corpus")
    corpus = [story(rng, rng.randint(*SENTENCES["story"]))[0] for _ in range(cfg.corpus_docs)]
    rng = stream("instructions")
    instructions = [make_example(rng, rng.choice(TASKS), cfg.system_prob)[0]
                    for _ in range(cfg.instruct_examples)]
    rng = stream("seed_prompts")
    seed_prompts = []
    for _ in range(cfg.seed_prompts):
        record, _ = make_example(rng, rng.choice(TASKS), cfg.system_prob)
        del record["response"]  # the target writes it at distillation time
        seed_prompts.append(record)

    train_prompts = {r["prompt"] for r in instructions + seed_prompts}
    train_text = "\n".join(corpus + [r["prompt"] + "\n" + r["response"] for r in instructions]
                           + [r["prompt"] for r in seed_prompts])
    eval_prompts = {}
    for task in TASKS:
        rng, held_out = stream(f"eval/{task}"), []
        for _ in range(100 * cfg.eval_prompts_per_task + 100):
            if len(held_out) == cfg.eval_prompts_per_task:
                break
            record, passage = make_example(rng, task, cfg.system_prob)
            if record["prompt"] in train_prompts or (passage and passage in train_text):
                continue
            train_prompts.add(record["prompt"])  # also keeps eval prompts distinct
            record["reference"] = record.pop("response")  # the world's own answer, for reading
            held_out.append(record)
        if len(held_out) < cfg.eval_prompts_per_task:
            raise ValueError(f"could not draw {cfg.eval_prompts_per_task} distinct held-out "
                             f"'{task}' prompts; lower eval_prompts_per_task")
        eval_prompts[task] = held_out
    return {"corpus": corpus, "instructions": instructions, "seed_prompts": seed_prompts,
            "eval_prompts": eval_prompts}


# -------------------------------------------------------------------------- files on disk
def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_world(world: dict, out_dir: str) -> None:
    """corpus.txt (documents split by a blank line), instructions.jsonl,
    seed_prompts.jsonl and eval_<task>.jsonl."""
    os.makedirs(out_dir, exist_ok=True)
    write_atomically(os.path.join(out_dir, "corpus.txt"), "\n\n".join(world["corpus"]) + "\n")
    write_atomically(os.path.join(out_dir, "instructions.jsonl"), _jsonl(world["instructions"]))
    write_atomically(os.path.join(out_dir, "seed_prompts.jsonl"), _jsonl(world["seed_prompts"]))
    for task, records in world["eval_prompts"].items():
        write_atomically(os.path.join(out_dir, f"eval_{task}.jsonl"), _jsonl(records))


def _read_text(path: str, what: str, expected: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}; check the path "
                                f"(or write a world with: python data.py --out DIR)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"{what} file is empty: {path}; it should hold {expected}")
    return text


def load_corpus(path: str) -> list[str]:
    """A plain-text corpus (yours or corpus.txt): documents separated by blank lines."""
    text = _read_text(path, "corpus", "documents separated by blank lines")
    return [doc.strip() for doc in re.split(r"\n\s*\n", text) if doc.strip()]


OPTIONAL_KEYS = {"system": (str, type(None)), "task": (str,), "response": (str,),
                 "reference": (str,)}


def _parse_record(line: str, required: tuple[str, ...]) -> dict:
    """One JSONL line -> record; raises ValueError(problem) on anything malformed."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"a line must be a JSON object, got {type(record).__name__}")
    for key in required:
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ValueError(f'"{key}" must be a non-empty string, got {record.get(key)!r}')
    for key, value in record.items():
        if key in required:
            continue
        if key not in OPTIONAL_KEYS:
            raise ValueError(f'unknown key "{key}" (allowed: prompt, {", ".join(OPTIONAL_KEYS)})')
        if not isinstance(value, OPTIONAL_KEYS[key]):
            raise ValueError(f'"{key}" has the wrong type {type(value).__name__}')
    return {"system": None, **record}


def _load_jsonl(path: str, required: tuple[str, ...], expected: str) -> list[dict]:
    """Shared by both JSONL loaders: blank lines skipped, errors name path:line."""
    records = []
    for line_no, line in enumerate(_read_text(path, "JSONL", f"one {expected} per line").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(_parse_record(line, required))
        except ValueError as e:
            raise ValueError(f"{path}:{line_no}: {e}; expected {expected}") from None
    return records


def load_jsonl_prompts(path: str) -> list[dict]:
    """Prompts, one per line: {"prompt": str, "system": str|null, "task": str} (last two optional)."""
    return _load_jsonl(path, ("prompt",), '{"prompt": ..., "system": optional}')


def load_jsonl_examples(path: str) -> list[dict]:
    """Instruction examples, one per line: like prompts, plus a non-empty "response"."""
    return _load_jsonl(path, ("prompt", "response"),
                       '{"prompt": ..., "response": ..., "system": optional}')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic world and write it.")
    parser.add_argument("--preset", default="cpu", choices=sorted(WORLD_PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/cpu/world")
    args = parser.parse_args(argv)
    world = make_world(preset(args.preset, seed=args.seed))
    try:
        write_world(world, args.out)
    except OSError as e:
        raise ValueError(f"cannot write the world to {args.out} ({e.strerror}); choose another --out") from None
    print(f"wrote {args.out}: {len(world['corpus'])} corpus documents "
          f"({sum(map(len, world['corpus'])):,} characters), "
          f"{len(world['instructions'])} instructions, {len(world['seed_prompts'])} seed prompts, "
          + ", ".join(f"{len(v)} eval {k}" for k, v in world["eval_prompts"].items()))


if __name__ == "__main__":
    run_cli(main)
