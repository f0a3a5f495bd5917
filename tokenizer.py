"""
Tokenizers and chat templates: text <-> token ids, and a conversation -> the exact ids a chat
model was fine-tuned on.

A language model never sees text, only integer ids from a fixed vocabulary. The draft model of
the paper must share the target's tokenizer (Llama 2's 32000 SentencePiece tokens), because
speculative decoding compares the two models' distributions over the SAME ids: a draft token
x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)), which is meaningless if "x_i"
means different strings to the two models.

Two tokenizer file formats, one interface (`encode`, `decode`, `bos_id`, `eos_id`, `pad_id`,
`vocab_size`, `chat_format`, `stop_ids`, `path`):

- SentencePiece (Llama 2's `tokenizer.model`, a protobuf): byte-pair-encoding pieces where "▁"
  marks a space, with byte fallback (<0x00>..<0xFF>) so any text can be encoded. Llama 2's ids:
  unk=0, bos=<s>=1, eos=</s>=2. `train_sentencepiece` trains a small one offline, with the same
  conventions, for the tiny models of this tutorial.
- tiktoken (Llama 3's `tokenizer.model`, a text file of `<base64 token bytes> <rank>` lines):
  byte-level BPE after a regex pre-split, plus 256 special tokens appended after the ranks.

`eos_id` is the token that ENDS AN ASSISTANT RESPONSE in the tokenizer's chat format, because
that is where generation must stop: `</s>` for Llama 2, `<|eot_id|>` (end of turn) for Llama 3.
Llama 3 also has `<|end_of_text|>`; `stop_ids` holds every id that ends generation.
`encode(text, eos=True)` appends this same `eos_id` (Meta's Llama 3 code appends end_of_text).

Chat models are fine-tuned on prompts wrapped in a template, and they only behave like chat
models when prompted with that template token for token. The distillation data of the paper is
the target's answers to templated prompts, so the draft must be trained on the same layout.
`chat_prompt` renders a prompt; `chat_example` renders prompt + response and returns where the
response starts, so the training code can put the loss on the response tokens only.
"""

import argparse
import base64
import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
import tiktoken

from data import load_corpus, load_jsonl_examples, replace_atomically

# Llama 3's pre-tokenization regex (Meta's llama3 reference, llama/tokenizer.py): contractions,
# words with one optional leading non-letter, numbers in groups of at most 3 digits,
# punctuation runs, newlines, and whitespace. BPE merges never cross these pieces.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3's 256 special tokens, in id order: token i gets id len(ranks) + i, so with the real
# 128000-rank file begin_of_text=128000, start_header_id=128006, eot_id=128009, vocab=128256.
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",  # end of turn: closes every message, including the assistant's answer
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]

# The markers of Llama 2's chat template. They are plain text to the real Llama 2 tokenizer
# (several tokens each); our small trained tokenizers make them single pieces so a template
# costs few positions of a short context. Nothing below relies on either choice.
LLAMA2_CHAT_MARKERS = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]


class SentencePieceTokenizer:
    """A SentencePiece model (Llama 2 format). `model` is the sentencepiece processor."""

    chat_format = "llama2"

    def __init__(self, path: str, model: spm.SentencePieceProcessor):
        self.path, self.model = path, model
        self.vocab_size: int = model.get_piece_size()
        self.bos_id: int = model.bos_id()
        self.eos_id: int = model.eos_id()  # </s> ends a Llama 2 answer
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(f"{path}: the SentencePiece model has no bos/eos token; a Llama 2 "
                             "tokenizer has unk=0, bos=1, eos=2 (train_sentencepiece makes one)")
        # Padded positions are always masked out of the loss and attention, so the pad id only
        # needs to be a valid id: the model's own pad if it has one (ours: 3), else eos.
        self.pad_id: int = model.pad_id() if model.pad_id() >= 0 else self.eos_id
        self.stop_ids: set[int] = {self.eos_id}

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.model.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> str:
        # sentencepiece already drops control tokens (bos, eos, pad) when decoding.
        return self.model.decode([int(i) for i in ids])


class TiktokenTokenizer:
    """A tiktoken BPE ranks file (Llama 3 format). `model` is the tiktoken Encoding."""

    chat_format = "llama3"

    def __init__(self, path: str, ranks: dict[bytes, int]):
        self.path = path
        self.special_ids = {name: len(ranks) + i for i, name in enumerate(LLAMA3_SPECIAL_TOKENS)}
        self.model = tiktoken.Encoding(name=os.path.basename(path), pat_str=LLAMA3_SPLIT_PATTERN,
                                       mergeable_ranks=ranks, special_tokens=self.special_ids)
        self.vocab_size: int = self.model.n_vocab  # len(ranks) + 256
        self.bos_id: int = self.special_ids["<|begin_of_text|>"]
        self.eos_id: int = self.special_ids["<|eot_id|>"]  # ends a Llama 3 answer
        self.stop_ids: set[int] = {self.eos_id, self.special_ids["<|end_of_text|>"]}
        self.pad_id: int = self.eos_id  # Llama 3 has no pad token; padding is always masked

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        # encode_ordinary treats "<|eot_id|>" typed by a user as plain text: special tokens
        # enter a sequence only through the chat template functions, never through user text.
        ids = [i for chunk in _split_for_tiktoken(text) for i in self.model.encode_ordinary(chunk)]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> str:
        first_special = self.special_ids["<|begin_of_text|>"]
        return self.model.decode([int(i) for i in ids if i < first_special])


Tokenizer = SentencePieceTokenizer | TiktokenTokenizer


def _split_for_tiktoken(text: str, max_chars: int = 400_000,
                        max_run: int = 25_000) -> Iterator[str]:
    """Cut text the way Meta's reference does before calling tiktoken, whose regex engine can
    fail on huge inputs (openai/tiktoken issue 195): windows of at most `max_chars` characters,
    each cut so that no piece holds a run of over `max_run` whitespace or non-whitespace
    characters. Ordinary text is a single piece, so its tokens are unchanged."""
    for w in range(0, len(text), max_chars):
        window, start = text[w:w + max_chars], 0
        for run in re.finditer(r"\s+|\S+", window):
            for cut in range(run.start() + max_run, run.end(), max_run):
                yield window[start:cut]
                start = cut
        yield window[start:]


def _read_tiktoken_ranks(path: str, data: bytes) -> dict[bytes, int]:
    """Parse `<base64 token bytes> <rank>` lines. (tiktoken.load.load_tiktoken_bpe parses the same
    format, but caches files by their PATH in a temp dir, so a file rewritten at the same path
    would silently load the old ranks.)"""
    ranks = {}
    for line_no, line in enumerate(data.splitlines(), start=1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:  # also catches binascii.Error (bad base64)
            raise ValueError(f"{path}, line {line_no}: expected '<base64 token bytes> <rank>' "
                             f"like a Llama 3 tokenizer.model, got {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: the ranks must be 0..{len(ranks) - 1}, each once, one per "
                         "distinct token (special tokens get the ids after the last rank)")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: no rank for the single byte(s) {missing[:8]}; a byte-level BPE "
                         "file needs all 256 so that any text can be encoded")
    return ranks


def load_tokenizer(path: str) -> Tokenizer:
    """Load a Llama 2 (SentencePiece) or Llama 3 (tiktoken) tokenizer.model, detecting which."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file {path} does not exist; pass the path of a Llama "
                                "tokenizer.model or one written by train_sentencepiece")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"tokenizer file {path} is empty")
    # A tiktoken file is text whose first line is "<base64> <rank>"; a SentencePiece model is a
    # binary protobuf, which never looks like that.
    if re.fullmatch(rb"[A-Za-z0-9+/]+=* \d+\r?", data.split(b"\n", 1)[0]):
        return TiktokenTokenizer(path, _read_tiktoken_ranks(path, data))
    model = spm.SentencePieceProcessor()
    try:
        model.LoadFromSerializedProto(data)
    except RuntimeError as e:
        raise ValueError(f"tokenizer file {path} is neither a SentencePiece model (Llama 2) "
                         f"nor a tiktoken ranks file of '<base64> <rank>' lines (Llama 3): {e}"
                         ) from None
    return SentencePieceTokenizer(path, model)


def train_sentencepiece(texts: Iterable[str], out_path: str,
                        vocab_size: int) -> SentencePieceTokenizer:
    """Train a Llama-2-style BPE SentencePiece model on `texts` and write it to `out_path`.

    Ids: unk=0, bos=1, eos=2 as in Llama 2, plus pad=3 (Llama 2 has none; a dedicated pad makes
    padding easy to spot and can never be confused with a real eos). Byte fallback, identity
    normalization and kept whitespace make decode(encode(s)) == s for any string s. The chat
    markers are single pieces (see LLAMA2_CHAT_MARKERS). Training runs on one thread, so the
    same texts give the same file byte for byte. The file is written atomically (temp + rename),
    so an interrupted run never leaves a half-written tokenizer behind.
    """
    # SentencePiece trains on sentences: one line each, empty lines carry nothing.
    lines = (line for text in texts for line in text.splitlines() if line.strip())
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines, model_writer=proto, model_type="bpe", vocab_size=vocab_size,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, user_defined_symbols=LLAMA2_CHAT_MARKERS,
            # Llama 2's settings: bytes for rare characters, digits split one by one, text kept
            # exactly as written (no unicode normalization, no collapsing of spaces).
            byte_fallback=True, character_coverage=0.99995, split_digits=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, allow_whitespace_only_pieces=True,
            max_sentence_length=1 << 16, num_threads=1, minloglevel=2)
    except RuntimeError as e:
        raise ValueError(f"could not train a SentencePiece tokenizer for {out_path} "
                         f"with vocab_size={vocab_size}: {e}") from None
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    replace_atomically(out_path, lambda tmp: Path(tmp).write_bytes(proto.getvalue()))
    return load_tokenizer(out_path)


def check_vocab(tok: Tokenizer, model_vocab_size: int, where: str) -> None:
    """Fail early when a model and a tokenizer do not belong together: ids past the embedding
    table would crash, and a same-sized but different vocabulary would silently produce junk."""
    if tok.vocab_size != model_vocab_size:
        raise ValueError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the model "
                         f"{where} expects {model_vocab_size}; "
                         "use the tokenizer the model was trained with")


# ----------------------------------------------------------------------------- chat templates
# Llama 2 (Meta's llama/generation.py, chat_completion), as text:
#   <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {response} </s>
# Llama 3 (Meta's llama3 ChatFormat), special tokens inserted as ids:
#   <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>
#   <|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>
#   <|start_header_id|>assistant<|end_header_id|>\n\n{response}<|eot_id|>
# A system prompt of None leaves the system part out.


def _llama2_instruction(user: str, system: str | None) -> str:
    # As in Meta's code: the system block and the user text are stripped as ONE string.
    content = user if system is None else f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
    return f"[INST] {content.strip()} [/INST]"


def _llama3_header(tok: TiktokenTokenizer, role: str) -> list[int]:
    start, end = tok.special_ids["<|start_header_id|>"], tok.special_ids["<|end_header_id|>"]
    return [start, *tok.encode(role), end, *tok.encode("\n\n")]


def chat_prompt(tok: Tokenizer, user: str, system: str | None = None) -> list[int]:
    """Prompt ids for one user turn, ending where the model starts its answer (the response
    starts at index len(ids))."""
    if tok.chat_format == "llama2":
        return tok.encode(_llama2_instruction(user, system), bos=True)
    ids = [tok.bos_id]
    messages = [("user", user)] if system is None else [("system", system), ("user", user)]
    for role, content in messages:
        ids += _llama3_header(tok, role) + tok.encode(content.strip(), eos=True)  # + <|eot_id|>
    return ids + _llama3_header(tok, "assistant")


def chat_example(tok: Tokenizer, user: str, response: str,
                 system: str | None = None) -> tuple[list[int], int]:
    """A training example: (ids, response_start) with ids[response_start:] exactly the response
    tokens including the closing eos_id. The distillation loss goes on those positions only."""
    prompt = chat_prompt(tok, user, system)
    if tok.chat_format == "llama2":
        # Meta tokenizes a finished turn as ONE string, "[INST] ... [/INST] {response} " + </s>.
        turn = f"{_llama2_instruction(user, system)} {response.strip()} "
        ids = tok.encode(turn, bos=True, eos=True)
        # SentencePiece never merges across a space, so that string's ids start with the prompt's.
        assert ids[:len(prompt)] == prompt, "Llama 2 prompt ids are not a prefix of the turn's ids"
    else:
        ids = prompt + tok.encode(response.strip(), eos=True)  # eos_id is <|eot_id|>
    return ids, len(prompt)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a SentencePiece BPE tokenizer on text files.")
    parser.add_argument("--data", required=True,
                        help="comma-separated .txt corpora and/or .jsonl examples (prompt + response)")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--out", required=True, help="where to write tokenizer.model")
    args = parser.parse_args(argv)
    texts = []
    for path in args.data.split(","):
        if path.endswith(".jsonl"):
            texts += [f"{r['prompt']}\n{r['response']}" for r in load_jsonl_examples(path)]
        else:
            texts += load_corpus(path)
    try:
        tok = train_sentencepiece(texts, args.out, args.vocab_size)
    except OSError as e:
        raise ValueError(f"cannot write {args.out} ({e.strerror}); choose another --out") from None
    print(f"wrote {args.out}: {tok.vocab_size} tokens")


if __name__ == "__main__":
    from speculative import run_cli   # the one error convention of every command line (imports torch)
    run_cli(main)
