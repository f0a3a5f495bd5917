"""
Tokenizers and chat templates: text <-> token ids, and a conversation -> the exact ids a chat
model was fine-tuned on.

A language model never sees text, only integer ids from a fixed vocabulary. The draft must share
the target's tokenizer, because speculative decoding compares the two models' distributions over
the SAME ids: a draft token x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)), which is
meaningless if "x_i" means different strings to the two models.

Three tokenizer sources, one interface (`encode`, `decode`, `bos_id`, `eos_id`, `pad_id`,
`stop_ids`, `vocab_size`, `chat_format`, `path`):

- SentencePiece (Llama 2's `tokenizer.model`, a protobuf): BPE pieces where "▁" marks a space,
  with byte fallback. Llama 2's ids: unk=0, bos=<s>=1, eos=</s>=2. `train_sentencepiece` trains
  a small one offline, with the same conventions, for the synthetic world's models.
- tiktoken (Llama 3's `tokenizer.model`, lines of `<base64 token bytes> <rank>`): byte-level BPE
  after a regex pre-split, plus 256 special tokens appended after the ranks.
- a GGUF file's vocabulary (`tokenizer.ggml.model == "gpt2"`, e.g. SmolLM2): the same byte-level
  BPE, stored as GPT-2-alphabet strings, merges, token types and the NAME of the pre-split regex
  (`tokenizer.ggml.pre`); `gguf_bpe_tokenizer` rebuilds it as a tiktoken Encoding.

`eos_id` is the token that ENDS AN ASSISTANT RESPONSE in the tokenizer's chat format, because
that is where generation must stop: `</s>` (Llama 2), `<|eot_id|>` (Llama 3), `<|im_end|>`
(ChatML); `stop_ids` holds every id that ends generation. `encode(text, eos=True)` appends eos_id.

Chat models only behave like chat models when prompted with their template token for token, and
the distillation data of the paper is the target's answers to templated prompts, so the draft
must be trained on the same layout. `chat_prompt` renders a prompt; `chat_example` renders
prompt + response and returns where the response starts. A GGUF's template is a Jinja program:
it is RECOGNISED (ChatML, Llama 3) and reproduced here, never executed.
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

from common import gguf_value, open_gguf, replace_atomically, run_cli
from data import load_corpus, load_jsonl_examples

# Pre-tokenization regexes: BPE merges never cross the pieces they cut. Each is written in the
# syntax of tiktoken's regex engine (\p{L}: any letter, \p{N}: any number).
# Llama 3 (Meta's llama3 reference, llama/tokenizer.py; llama.cpp's "llama-bpe"): contractions,
# words with one optional leading non-letter, numbers in groups of at most 3 digits,
# punctuation runs, newlines, and whitespace.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GPT-2 (OpenAI's encoder.py; Hugging Face's ByteLevel pre-tokenizer; llama.cpp's "gpt2").
GPT2_SPLIT_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# SmolLM (llama.cpp's "smollm", the same as SmolLM2's tokenizer.json: Digits(individual_digits)
# then ByteLevel): first every digit becomes a piece of its own, then GPT-2's regex splits the
# text between digits. As ONE regex: digits match `\p{N}` alone, and GPT-2's `\s+(?!\S)` (a
# whitespace run not followed by a non-space) must also end before a digit, because in the
# two-step split a digit ends the text that the second regex sees. So "x  1" gives "x", "  ",
# "1" (GPT-2's regex alone: "x", " ", " 1"). Note: transformers' GGUF converter builds plain
# GPT-2 splitting for every "gpt2" vocabulary and so differs on a whitespace run before a digit.
SMOLLM_SPLIT_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"
GGUF_PRE_TOKENIZERS = {"smollm": SMOLLM_SPLIT_PATTERN, "gpt2": GPT2_SPLIT_PATTERN, "default": GPT2_SPLIT_PATTERN,
                       "llama-bpe": LLAMA3_SPLIT_PATTERN, "llama3": LLAMA3_SPLIT_PATTERN}
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
GGUF_CONTROL = 3   # tokenizer.ggml.token_type of a control token (<|im_start|>, <|endoftext|>, ...)


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

    def gguf_fields(self) -> dict:
        raise ValueError(f"{self.path}: export_gguf writes the vocabulary of a tokenizer read from a GGUF file "
                         "(byte-level BPE); a SentencePiece tokenizer is not supported there: use export_hf")


class TiktokenTokenizer:
    """Byte-level BPE through a tiktoken Encoding (`model`): a Llama 3 ranks file or a GGUF
    vocabulary. tiktoken returns its RANKS; `rank_to_id` maps them to the vocabulary's ids (the
    identity for Llama 3; for a GGUF, ranks follow the merge order, see gguf_bpe_tokenizer).
    `special_ids` maps each special token's text to its id."""

    def __init__(self, path: str, encoding: tiktoken.Encoding, special_ids: dict[str, int],
                 bos_id: int, eos_id: int, pad_id: int, stop_ids: set[int], chat_format: str | None,
                 rank_to_id: list[int] | None = None, default_system: str | None = None,
                 gguf_fields: dict | None = None):
        self.path, self.model, self.special_ids = path, encoding, special_ids
        self.bos_id, self.eos_id, self.pad_id, self.stop_ids = bos_id, eos_id, pad_id, stop_ids
        self.chat_format, self.default_system, self._gguf_fields = chat_format, default_system, gguf_fields
        self.rank_to_id = rank_to_id or list(range(encoding.n_vocab))
        self.id_to_rank = {i: rank for rank, i in enumerate(self.rank_to_id) if i >= 0}
        self.vocab_size: int = len(gguf_fields["tokenizer.ggml.tokens"][0]) if gguf_fields else encoding.n_vocab
        self.special = set(special_ids.values())

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        # encode_ordinary treats "<|eot_id|>" typed by a user as plain text: special tokens
        # enter a sequence only through the chat template functions, never through user text.
        ranks = [r for chunk in _split_for_tiktoken(text) for r in self.model.encode_ordinary(chunk)]
        ids = [self.rank_to_id[r] for r in ranks if self.rank_to_id[r] >= 0]   # -1: a byte not in the vocabulary
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> str:
        ranks = [self.id_to_rank[int(i)] for i in ids if int(i) not in self.special and int(i) in self.id_to_rank]
        return self.model.decode(ranks)

    def gguf_fields(self) -> dict:
        """The GGUF metadata of this vocabulary, {key: (value, GGUF types)} (for export_gguf)."""
        if self._gguf_fields is None:
            raise ValueError(f"{self.path}: export_gguf writes the vocabulary of a tokenizer read from a GGUF "
                             "file; a Llama 3 tiktoken file is not supported there: use export_hf")
        return self._gguf_fields


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


def llama3_tokenizer(path: str, ranks: dict[bytes, int]) -> TiktokenTokenizer:
    special_ids = {name: len(ranks) + i for i, name in enumerate(LLAMA3_SPECIAL_TOKENS)}
    encoding = tiktoken.Encoding(name=os.path.basename(path), pat_str=LLAMA3_SPLIT_PATTERN,
                                 mergeable_ranks=ranks, special_tokens=special_ids)
    eot = special_ids["<|eot_id|>"]
    # Llama 3 has no pad token; padding is always masked, so eot serves.
    return TiktokenTokenizer(path, encoding, special_ids, bos_id=special_ids["<|begin_of_text|>"], eos_id=eot,
                             pad_id=eot, stop_ids={eot, special_ids["<|end_of_text|>"]}, chat_format="llama3")


def gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for bytes, inverted: character -> byte. Byte-level BPE files
    write token bytes as text; bytes that are printable Latin-1 characters stand for themselves,
    the other 68 (controls, space, ...) are shifted to chr(256 + n): space is 'Ġ', newline 'Ċ'."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, shifted = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            alphabet[chr(256 + shifted)] = b
            shifted += 1
    return alphabet


def gguf_bpe_tokenizer(path: str, reader) -> TiktokenTokenizer:
    """A GGUF's byte-level BPE vocabulary (tokenizer.ggml.model == "gpt2") as a tiktoken Encoding.

    tiktoken merges, inside each pre-token piece, the adjacent pair whose concatenation has the
    lowest rank; Hugging Face's BPE merges the pair that comes first in its merge list. They agree
    when rank = merge order, so: the single bytes get ranks 0..255, the token made by merge k
    gets rank 256 + k, control tokens (token_type 3) are special tokens after those, and
    `rank_to_id` maps ranks back to the file's ids. A byte the vocabulary lacks (SmolLM2 has no
    token for 21 rare bytes, e.g. 0x04) is dropped from the ids, as Hugging Face's BPE drops it.
    The one case where the two rules could differ: a token that is ALSO the concatenation of two
    other tokens whose pair is not a merge (tiktoken would form it, Hugging Face would not). A
    BPE trainer's merge list makes that rare; for SmolLM2's vocabulary the ids equal Hugging
    Face's on 4.2M characters of text, code and random concatenations of its own tokens
    (README, "SmolLM2 and GGUF"; tests/test_gguf.py checks a small vocabulary against a
    merge-list implementation).
    """
    tokens, types = gguf_value(reader, "tokenizer.ggml.tokens"), gguf_value(reader, "tokenizer.ggml.token_type")
    merges = gguf_value(reader, "tokenizer.ggml.merges")
    if not tokens or types is None or len(types) != len(tokens) or merges is None:
        raise ValueError(f"{path}: the GGUF's tokenizer is incomplete (tokens, token types and merges are needed)")
    pre = gguf_value(reader, "tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ValueError(f"{path}: pre-tokenizer {pre!r} is not supported; this project knows "
                         f"{sorted(GGUF_PRE_TOKENIZERS)}")
    alphabet, token_id = gpt2_byte_alphabet(), {token: i for i, token in enumerate(tokens)}
    char_of = {byte: char for char, byte in alphabet.items()}
    to_bytes = lambda token: bytes(alphabet[c] for c in token)     # noqa: E731
    ranks = {bytes([b]): b for b in range(256)}
    rank_to_id = [token_id.get(char_of[byte], -1) for byte in range(256)]
    for merge in merges:
        merged = merge.replace(" ", "", 1)                         # "Ġ t" -> "Ġt"
        if merged in token_id and to_bytes(merged) not in ranks:
            ranks[to_bytes(merged)] = len(ranks)
            rank_to_id.append(token_id[merged])
    special_ids = {token: i for i, (token, kind) in enumerate(zip(tokens, types)) if kind == GGUF_CONTROL}
    special_ranks = {token: len(ranks) + n for n, token in enumerate(special_ids)}
    rank_to_id += list(special_ids.values())
    encoding = tiktoken.Encoding(name=os.path.basename(path), pat_str=GGUF_PRE_TOKENIZERS[pre],
                                 mergeable_ranks=ranks, special_tokens=special_ranks)
    fields = {key: (field.contents(), field.types) for key, field in reader.fields.items()
              if key.startswith("tokenizer.")}
    return _with_chat_format(path, encoding, special_ids, rank_to_id, token_id, reader, fields)


def _with_chat_format(path, encoding, special_ids, rank_to_id, token_id, reader, fields) -> TiktokenTokenizer:
    """Recognise the chat template of a GGUF (ChatML or Llama 3; never run as code) and pick
    the ids that start a document, end an answer and pad."""
    template = gguf_value(reader, "tokenizer.chat_template", "") or ""
    metadata = {name: gguf_value(reader, f"tokenizer.ggml.{name}_token_id")
                for name in ("bos", "eos", "padding", "unknown")}
    chat_format, default_system = None, None
    if "<|im_start|>" in template and "<|im_start|>" in token_id and "<|im_end|>" in token_id:
        chat_format, eos = "chatml", token_id["<|im_end|>"]
        # The system message the template inserts when the conversation has none (SmolLM2's).
        found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template, re.S)
        default_system = found.group(1) if found else None
    elif "<|start_header_id|>" in template and "<|eot_id|>" in token_id:
        chat_format, eos = "llama3", token_id["<|eot_id|>"]
    else:
        eos = metadata["eos"] if metadata["eos"] is not None else token_id.get("<|endoftext|>", 0)
    stop_ids = {eos} | {i for i in (metadata["eos"], token_id.get("<|endoftext|>"), token_id.get("<|end_of_text|>"))
                        if i is not None}
    # A document starts with the model's BOS if it adds one, else with GPT-2's document separator.
    add_bos = gguf_value(reader, "tokenizer.ggml.add_bos_token", False)
    bos = metadata["bos"] if add_bos or "<|endoftext|>" not in token_id else token_id["<|endoftext|>"]
    pad = metadata["padding"] if metadata["padding"] is not None else eos
    return TiktokenTokenizer(path, encoding, special_ids, bos_id=bos, eos_id=eos, pad_id=pad, stop_ids=stop_ids,
                             chat_format=chat_format, rank_to_id=rank_to_id, default_system=default_system,
                             gguf_fields=fields)


def load_tokenizer(path: str) -> Tokenizer:
    """Load a Llama 2 (SentencePiece) or Llama 3 (tiktoken) tokenizer.model, or the vocabulary
    of a .gguf file, detecting which."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file {path} does not exist; pass the path of a Llama "
                                "tokenizer.model, a .gguf, or one written by train_sentencepiece")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF" or path.lower().endswith(".gguf"):    # a damaged .gguf: open_gguf says so
        reader = open_gguf(path)
        kind = gguf_value(reader, "tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"{path}: its vocabulary is {kind!r}; this project reads byte-level BPE GGUF "
                             "vocabularies ('gpt2': SmolLM2, Llama 3, Qwen...) only: for a SentencePiece "
                             "('llama') model pass its tokenizer.model with --tokenizer")
        return gguf_bpe_tokenizer(path, reader)
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"tokenizer file {path} is empty")
    # A tiktoken file is text whose first line is "<base64> <rank>"; a SentencePiece model is a
    # binary protobuf, which never looks like that.
    if re.fullmatch(rb"[A-Za-z0-9+/]+=* \d+\r?", data.split(b"\n", 1)[0]):
        return llama3_tokenizer(path, _read_tiktoken_ranks(path, data))
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
# ChatML (SmolLM2, Qwen; the GGUF's own template), special tokens inserted as ids, contents as
# written (not stripped), and the template's default system message when none is given:
#   <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n
#   <|im_start|>assistant\n{response}<|im_end|>\n
# For Llama 2 / 3 a system prompt of None leaves the system part out.


def _llama2_instruction(user: str, system: str | None) -> str:
    # As in Meta's code: the system block and the user text are stripped as ONE string.
    content = user if system is None else f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
    return f"[INST] {content.strip()} [/INST]"


def _llama3_header(tok: TiktokenTokenizer, role: str) -> list[int]:
    start, end = tok.special_ids["<|start_header_id|>"], tok.special_ids["<|end_header_id|>"]
    return [start, *tok.encode(role), end, *tok.encode("\n\n")]


def _with_specials(tok: TiktokenTokenizer, parts: list[str]) -> list[int]:
    """Ids of a rendered template given as alternating [special token, text, special, text, ...]
    parts: exactly how Hugging Face tokenizes the template's string, where special tokens cut
    the text into pieces that are encoded one by one."""
    return [i for n, part in enumerate(parts)
            for i in ([tok.special_ids[part]] if n % 2 == 0 else tok.encode(part))]


def _chatml_parts(tok: TiktokenTokenizer, user: str, system: str | None) -> list[str]:
    system = tok.default_system if system is None else system
    parts = [] if system is None else ["<|im_start|>", f"system\n{system}", "<|im_end|>", "\n"]
    return parts + ["<|im_start|>", f"user\n{user}", "<|im_end|>", "\n", "<|im_start|>"]


def chat_prompt(tok: Tokenizer, user: str, system: str | None = None) -> list[int]:
    """Prompt ids for one user turn, ending where the model starts its answer (the response
    starts at index len(ids))."""
    if tok.chat_format == "llama2":
        return tok.encode(_llama2_instruction(user, system), bos=True)
    if tok.chat_format == "chatml":
        return _with_specials(tok, _chatml_parts(tok, user, system) + ["assistant\n"])
    if tok.chat_format == "llama3":
        ids = [tok.bos_id]
        messages = [("user", user)] if system is None else [("system", system), ("user", user)]
        for role, content in messages:
            ids += _llama3_header(tok, role) + tok.encode(content.strip(), eos=True)  # + <|eot_id|>
        return ids + _llama3_header(tok, "assistant")
    raise ValueError(f"{tok.path}: its chat template is not one this project recognises "
                     "(Llama 2, Llama 3, ChatML); prompt without --chat")


def chat_example(tok: Tokenizer, user: str, response: str,
                 system: str | None = None) -> tuple[list[int], int]:
    """A training example: (ids, response_start) with ids[response_start:] the response tokens
    including the closing eos_id (and, for ChatML, the newline the template puts after it). The
    distillation loss goes on those positions only."""
    prompt = chat_prompt(tok, user, system)
    if tok.chat_format == "llama2":
        # Meta tokenizes a finished turn as ONE string, "[INST] ... [/INST] {response} " + </s>.
        turn = f"{_llama2_instruction(user, system)} {response.strip()} "
        ids = tok.encode(turn, bos=True, eos=True)
        # SentencePiece never merges across a space, so that string's ids start with the prompt's.
        assert ids[:len(prompt)] == prompt, "Llama 2 prompt ids are not a prefix of the turn's ids"
        return ids, len(prompt)
    if tok.chat_format == "chatml":
        # "assistant\n{response}" is ONE piece of text between two special tokens, so it is
        # encoded as one: almost always the prompt's ids then come first, but a response that
        # starts with whitespace can merge with the newline; the response then starts at the
        # first id that is not the prompt's.
        ids = _with_specials(tok, _chatml_parts(tok, user, system) + [f"assistant\n{response}", "<|im_end|>", "\n"])
        start = next((i for i, (a, b) in enumerate(zip(ids, prompt)) if a != b), len(prompt))
        return ids, start
    return prompt + tok.encode(response.strip(), eos=True), len(prompt)  # llama3: eos_id is <|eot_id|>


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
    run_cli(main)
