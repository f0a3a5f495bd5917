"""Tests for tokenizer.py: both backends on tokenizer files written here (no downloads), the
official chat formats, and the errors for bad tokenizer files."""

import base64
import os
import random

import pytest
import regex  # installed with tiktoken; understands \p{L}, like tiktoken's own regex engine
import sentencepiece as spm

from tokenizer import (LLAMA3_SPLIT_PATTERN, _split_for_tiktoken, chat_example, chat_prompt,
                       check_vocab, load_tokenizer, train_sentencepiece)

ROUND_TRIP_TEXTS = [
    "",
    "the cat sat on the mat.",
    "  leading spaces, trailing spaces   ",
    "double  space\tand a tab\nand\n\nnewlines\r\n",
    "digits 1234567890 and 3.14159",
    "unseen: café, naïve, Ελληνικά, 漢字, emoji 🙂🚀",
    "[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] answer ",
    "<|eot_id|> <|begin_of_text|> are plain text here",
    "\x00 control \x7f bytes",
]


def synthetic_corpus(n_sentences: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ("the a cat dog model draft target token sat ran on under big small quickly "
             "decoding speculative chat answer question what why how is are").split()
    corpus = []
    for _ in range(n_sentences):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        end = rng.choice([".", "?", "!", f" {rng.randint(0, 999)}."])
        corpus.append(sentence.capitalize() + end)
    return corpus


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    return train_sentencepiece(synthetic_corpus(), str(path), vocab_size=400)


# A tiny Llama-3-style ranks file: all 256 single bytes, then merges in rank order (a merge's
# two halves always have lower ranks, as in real BPE).
MERGES = [b"he", b"ll", b"hell", b"hello", b" w", b"or", b"ld", b"orld", b" world", b"o ",
          b"12", b"123", b"1234", b"45"]


def write_ranks(path, tokens) -> str:
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tt_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tt") / "tokenizer.model"
    return load_tokenizer(write_ranks(path, [bytes([b]) for b in range(256)] + MERGES))


# ----------------------------------------------------------------------------- SentencePiece

def test_sentencepiece_ids_follow_llama2(sp_tok):
    assert type(sp_tok).__name__ == "SentencePieceTokenizer"
    assert (sp_tok.chat_format, sp_tok.vocab_size) == ("llama2", 400)
    assert (sp_tok.model.unk_id(), sp_tok.bos_id, sp_tok.eos_id, sp_tok.pad_id) == (0, 1, 2, 3)
    assert sp_tok.stop_ids == {2}
    ids = sp_tok.encode("the cat", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1] and 2 not in ids[1:-1]
    # The chat markers are single pieces of the trained vocabulary.
    for marker in ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]:
        assert sp_tok.model.piece_to_id(marker) in sp_tok.encode(f"x {marker} y")


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_sentencepiece_round_trip(sp_tok, text):
    ids = sp_tok.encode(text, bos=True, eos=True)
    assert all(0 <= i < sp_tok.vocab_size for i in ids)
    assert 0 not in ids  # byte fallback: unseen characters become bytes, never <unk>
    assert sp_tok.decode(ids) == text  # bos/eos/pad are skipped
    assert sp_tok.decode([sp_tok.pad_id] + ids) == text


def test_sentencepiece_learned_merges(sp_tok):
    # Frequent corpus words become single pieces; otherwise encode would be bytes only.
    assert sp_tok.model.id_to_piece(sp_tok.encode("speculative")) == ["▁speculative"]


def test_sentencepiece_training_is_deterministic_and_atomic(tmp_path):
    a, b = tmp_path / "a" / "tok.model", tmp_path / "b" / "tok.model"
    train_sentencepiece(synthetic_corpus(), str(a), vocab_size=350)
    train_sentencepiece(iter(synthetic_corpus()), str(b), vocab_size=350)
    assert a.read_bytes() == b.read_bytes()
    assert os.listdir(a.parent) == ["tok.model"]  # no temp file left behind
    c = tmp_path / "c.model"
    train_sentencepiece(synthetic_corpus(seed=1), str(c), vocab_size=350)
    assert c.read_bytes() != a.read_bytes()  # the bytes do depend on the corpus


def test_sentencepiece_training_vocab_too_large_names_file(tmp_path):
    out = tmp_path / "big.model"
    with pytest.raises(ValueError, match=r"big\.model.*vocab_size=5000.*Vocabulary size too high"):
        train_sentencepiece(["a tiny corpus", "with few words"], str(out), vocab_size=5000)
    assert not out.exists()


# ----------------------------------------------------------------------------- tiktoken

def test_tiktoken_special_token_ids(tt_tok):
    n = 256 + len(MERGES)
    assert type(tt_tok).__name__ == "TiktokenTokenizer" and tt_tok.chat_format == "llama3"
    assert tt_tok.vocab_size == n + 256
    assert tt_tok.bos_id == n and tt_tok.special_ids["<|end_of_text|>"] == n + 1
    assert tt_tok.special_ids["<|reserved_special_token_3|>"] == n + 5
    assert tt_tok.special_ids["<|start_header_id|>"] == n + 6
    assert tt_tok.special_ids["<|end_header_id|>"] == n + 7
    assert tt_tok.special_ids["<|reserved_special_token_4|>"] == n + 8
    assert tt_tok.eos_id == tt_tok.special_ids["<|eot_id|>"] == n + 9
    assert tt_tok.special_ids["<|reserved_special_token_5|>"] == n + 10
    assert tt_tok.special_ids["<|reserved_special_token_250|>"] == n + 255
    assert tt_tok.stop_ids == {n + 9, n + 1}
    assert tt_tok.encode("hi", bos=True, eos=True) == [n, ord("h"), ord("i"), n + 9]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_tiktoken_round_trip(tt_tok, text):
    ids = tt_tok.encode(text, bos=True, eos=True)
    assert tt_tok.decode(ids) == text  # bos/eot are skipped
    # Special-token strings typed in text stay text: only bos/eos are special ids.
    assert all(i < tt_tok.bos_id for i in ids[1:-1])


def test_tiktoken_uses_merges_and_llama3_split(tt_tok):
    pieces = lambda text: [tt_tok.decode([i]) for i in tt_tok.encode(text)]
    # "o " is a merge, but the pre-split puts the space with the next word, so it never forms.
    assert pieces("hello world") == ["hello", " world"]
    # Digits are pre-split in groups of at most 3: "1234" is a merge but cannot form here.
    assert pieces("12345") == ["123", "45"]
    assert len(tt_tok.encode("<|eot_id|>")) == len("<|eot_id|>")  # bytes, not one special id


def test_llama3_split_pattern_matches_meta():
    # Pre-tokens of Meta's Llama 3 regex: case-insensitive contractions, digit groups of 3,
    # a space glued to the following word, newlines apart, a lone space before a word.
    text = "I'm 12345 apples, they'll\n\n  SAY'S ok"
    assert regex.findall(LLAMA3_SPLIT_PATTERN, text) == [
        "I", "'m", " ", "123", "45", " apples", ",", " they", "'ll", "\n\n", " ", " SAY", "'S",
        " ok"]


def test_split_for_tiktoken_cuts_long_runs_and_windows():
    assert list(_split_for_tiktoken("aaaaa  bb", max_chars=100, max_run=2)) == ["aa", "aa", "a  bb"]
    assert list(_split_for_tiktoken("ab cd", max_chars=3, max_run=10)) == ["ab ", "cd"]
    assert list(_split_for_tiktoken("normal text", max_chars=100, max_run=50)) == ["normal text"]


# ----------------------------------------------------------------------------- chat templates

def test_llama2_chat_matches_official_format(sp_tok):
    system, user, response = " Be brief. ", "  What is a draft model?\n", " A small model. "
    ids, start = chat_example(sp_tok, user, response, system)
    # The official template: <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
    assert ids[0] == sp_tok.bos_id and ids[-1] == sp_tok.eos_id
    # As in Meta's code, the system block and the user text are stripped as ONE string, so the
    # system prompt keeps its spaces and so do the user's leading spaces.
    turn = ("[INST] <<SYS>>\n Be brief. \n<</SYS>>\n\n  What is a draft model? [/INST] "
            "A small model. ")
    assert sp_tok.decode(ids) == turn
    # Meta's chat_completion tokenizes the whole turn as one string.
    assert ids == sp_tok.encode(turn, bos=True, eos=True)
    assert ids[:start] == chat_prompt(sp_tok, user, system)
    assert sp_tok.decode(ids[:start]).endswith("[/INST]")
    assert ids[start:] == sp_tok.encode("A small model. ") + [sp_tok.eos_id]


def test_llama2_chat_without_system(sp_tok):
    ids, start = chat_example(sp_tok, " hi ", "hello")
    assert sp_tok.decode(ids) == "[INST] hi [/INST] hello "
    assert sp_tok.decode(chat_prompt(sp_tok, " hi ")) == "[INST] hi [/INST]"
    assert sp_tok.decode(ids[start:]) == "hello "


def test_llama3_chat_token_layout(tt_tok):
    sid, enc = tt_tok.special_ids, tt_tok.encode
    B, SH, EH, EOT = (sid[t] for t in ["<|begin_of_text|>", "<|start_header_id|>",
                                       "<|end_header_id|>", "<|eot_id|>"])
    ids, start = chat_example(tt_tok, " hello world\n", "\nhello! ", system=" Be brief.")
    expected_prompt = ([B, SH, *enc("system"), EH, *enc("\n\n"), *enc("Be brief."), EOT,
                        SH, *enc("user"), EH, *enc("\n\n"), *enc("hello world"), EOT,
                        SH, *enc("assistant"), EH, *enc("\n\n")])
    assert ids[:start] == expected_prompt == chat_prompt(tt_tok, " hello world\n", " Be brief.")
    assert ids[start:] == enc("hello!") + [EOT]
    # Rendered with the special tokens as text, it is the official Llama 3 string.
    assert tt_tok.model.decode(ids) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhello world<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nhello!<|eot_id|>")


def test_llama3_chat_without_system_and_user_specials_stay_text(tt_tok):
    ids = chat_prompt(tt_tok, "<|eot_id|>")
    assert tt_tok.model.decode(ids) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|eot_id|><|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids.count(tt_tok.eos_id) == 1  # only the template's own end of turn


# ----------------------------------------------------------------------------- bad inputs

def test_missing_file(tmp_path):
    path = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match=r"nope\.model does not exist"):
        load_tokenizer(str(path))


@pytest.mark.parametrize("content, problem", [
    (b"", "is empty"),
    (b"\x0a\x05junk\xff\xfe not a model", "neither a SentencePiece model"),
    (b"plain text, not a tokenizer\n", "neither a SentencePiece model"),
])
def test_unparseable_file(tmp_path, content, problem):
    path = tmp_path / "bad.model"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.model.*" + problem):
        load_tokenizer(str(path))


@pytest.mark.parametrize("content", [b"", b"corrupt", b"\x0a\x05junk\xff\xfe not a model"])
def test_a_damaged_gguf_is_named_as_one(tmp_path, content):
    # The target's .gguf is also the default tokenizer: the message must be about the GGUF file.
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"model\.gguf is not a GGUF file"):
        load_tokenizer(str(path))


def test_bad_tiktoken_files(tmp_path):
    all_bytes = [bytes([b]) for b in range(256)]
    bad_line = tmp_path / "line.model"
    bad_line.write_text("YQ== 0\nYg== 1\nnot-base64! 2\n")
    with pytest.raises(ValueError, match=r"line\.model, line 3: expected '<base64 token bytes>"):
        load_tokenizer(str(bad_line))
    with pytest.raises(ValueError, match=r"gap\.model: the ranks must be 0\.\.257, each once"):
        path = write_ranks(tmp_path / "gap.model", all_bytes + [b"ab"])
        open(path, "a").write(base64.b64encode(b"cd").decode() + " 300\n")
        load_tokenizer(path)
    with pytest.raises(ValueError, match=r"bytes\.model: no rank for the single byte\(s\) \[255\]"):
        load_tokenizer(write_ranks(tmp_path / "bytes.model", all_bytes[:255] + [b"ab"]))


def test_sentencepiece_without_bos_eos(tmp_path):
    path = tmp_path / "nobos.model"
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(synthetic_corpus(50)), model_writer=f,
                                       vocab_size=60, bos_id=-1, eos_id=-1, minloglevel=2)
    with pytest.raises(ValueError, match=r"nobos\.model: the SentencePiece model has no bos/eos"):
        load_tokenizer(str(path))


def test_check_vocab(sp_tok):
    check_vocab(sp_tok, 400, "draft.pt")  # matching sizes pass
    with pytest.raises(ValueError) as err:
        check_vocab(sp_tok, 32000, "draft.pt")
    assert str(err.value) == (f"tokenizer {sp_tok.path} has 400 tokens but the model draft.pt "
                              "expects 32000; use the tokenizer the model was trained with")
