"""
answers.py: the target's answers as distill_data.py writes them, read back; and the draft's
shortlist of the vocabulary, counted from them.

distill_data.py writes one JSON record per line ({"job", "prompt_ids", "response_ids", ...}) and
reads its own file back to resume; train.py's distillation, the shortlist head of a CPU draft
(fast_decode.ShortlistHead) and tools/ship_draft.py read finished files. Reading lives here, apart
from the writer, so that the decoders (speculative.py, evaluate.py) build a shortlist without
importing the code that generates data with them.

    counts = load_answer_counts("runs/smollm2/distill.jsonl")     # or drafts/smollm2/answer_counts.json
    shortlist, coverage = answer_vocabulary(counts, 8192)
"""

import json
import os


def read_lines(path: str) -> tuple[list[str], bool]:
    """The complete lines of a file, and whether it ends in a torn line (no final newline)."""
    with open(path, "rb") as f:
        chunks = f.read().split(b"\n")
    torn = chunks.pop() != b""                  # split leaves b"" after a final newline
    try:
        return [chunk.decode("utf-8") for chunk in chunks], torn
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; is it a distill_data.py output?") from None


def parse_record(line: str, where: str) -> dict:
    """One JSONL line -> a record; bad lines raise ValueError naming `where` (path:line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg}); expected one distill_data.py record per line") from None
    if not isinstance(record, dict) or type(record.get("job")) is not int:
        raise ValueError(f'{where}: expected a JSON object with an integer "job", as distill_data.py writes')
    for key in ("prompt_ids", "response_ids"):
        ids = record.get(key)
        if not isinstance(ids, list) or not ids or any(type(i) is not int for i in ids):
            raise ValueError(f'{where}: "{key}" must be a non-empty list of integer token ids')
    return record


def load_distill_records(paths: str | list[str]) -> list[dict]:
    """Read a finished distillation file (or a list of files, e.g. shards), validating each line."""
    records = []
    for path in [paths] if isinstance(paths, str) else paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"distillation data {path} not found; write it with distill_data.py")
        lines, torn = read_lines(path)
        if torn:
            raise ValueError(f"{path}:{len(lines) + 1}: the last line is cut off (an interrupted run); "
                             "run the same distill_data.py command again to finish the file")
        records += [parse_record(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not records:
        raise ValueError(f"no records in {paths}; did distill_data.py run to the end?")
    return records


def answer_counts(records: list[dict]) -> dict[int, int]:
    """How often the target wrote each token in these answers (the prompts are not counted)."""
    counts: dict[int, int] = {}
    for record in records:
        for token in record["response_ids"]:
            counts[token] = counts.get(token, 0) + 1
    return counts


def load_answer_counts(path: str) -> dict[int, int]:
    """answer_counts of distillation data (a .jsonl), or the counts a shipped draft carries beside
    it (a .json, {"counts": [[token, count], ...]}, written by tools/ship_draft.py), so that a
    shortlist can be built without the data."""
    if not path.endswith(".json"):
        return answer_counts(load_distill_records(path))
    try:
        with open(path, encoding="utf-8") as f:
            return {int(token): int(count) for token, count in json.load(f)["counts"]}
    except FileNotFoundError:
        raise FileNotFoundError(f"answer counts {path} do not exist; give distill.jsonl or a draft's answer_counts.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise ValueError(f"{path} is not a file of answer counts ({{\"counts\": [[token, count], ...]}}); "
                         "give distill.jsonl or a draft's answer_counts.json") from None


def answer_vocabulary(counts: dict[int, int], size: int) -> tuple[list[int], float]:
    """The `size` tokens the target wrote most often (counts: answer_counts; ties: the lower id),
    and the share of all answer tokens they cover: a draft's shortlist (fast_decode.ShortlistHead).
    Its acceptance rate can lose at most the target's probability outside the shortlist, of
    which the coverage's complement is the average over the data."""
    if size < 1:
        raise ValueError(f"a shortlist needs at least 1 token, got {size}")
    ranked = sorted(counts, key=lambda token: (-counts[token], token))[:size]
    total = sum(counts.values())
    return ranked, (sum(counts[t] for t in ranked) / total if total else 0.0)
