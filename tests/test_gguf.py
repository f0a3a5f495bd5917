"""GGUF: llama-architecture files read into our Llama (float and quantized tensors), their
byte-level BPE vocabulary and ChatML template, export_gguf round trips, and every bad input.

Every file here is written by the tests with the `gguf` package's own writer. The last tests use
the real SmolLM2-135M-Instruct GGUF when it is present (`python fetch_model.py` puts it in
models/; they are skipped otherwise) and compare with a fixture recorded once with Hugging Face
transformers (tests/fixtures/smollm2_reference.json, written by tools/record_reference.py).
"""

import json
import math
from dataclasses import replace
import os
import sys

import gguf
import numpy as np
import pytest
import regex
import torch
from gguf import GGMLQuantizationType as Q

from checkpoints import GGUF_NAMES, _inverse, _rename, _stored_state, export_gguf, load_model
from model import Llama, ModelConfig
from speculative import Decoder, check_pair
from tokenizer import GPT2_SPLIT_PATTERN, chat_example, chat_prompt, gpt2_byte_alphabet, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2 = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "smollm2_reference.json")

# ----------------------------------------------------------------------------- a tiny vocabulary

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHARS = {byte: char for char, byte in gpt2_byte_alphabet().items()}
MISSING_BYTES = [0x04, 0xF5]                 # like SmolLM2, the vocabulary lacks a few rare bytes
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "Ġ Ġ", "ĠĠ ĠĠ", "e r", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
          "a n", "Ġa n", "Ġan d", "Ċ Ċ", "' s", "Ã ©", "r e", "Ġ s", "s t", "Ġs t", "or y", "ĠĠ Ġ", "Ċ ĠĠ"]
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): specials first, then the bytes, then the merged tokens in
    REVERSE merge order, so ids do not follow the merge order (ranks must come from the merges)."""
    merged = []
    for merge in MERGES:
        token = merge.replace(" ", "", 1)
        if token not in merged:
            merged.append(token)
    tokens = SPECIALS + [CHARS[b] for b in range(256) if b not in MISSING_BYTES] + merged[::-1]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, MERGES


def add_vocabulary(writer: gguf.GGUFWriter, pre: str = "smollm", template: str = CHATML) -> int:
    tokens, types, merges = vocabulary()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(template)
    return len(tokens)


VOCAB = len(vocabulary()[0])
# K-quants store rows in blocks of 256: ffn_dim 256 gives w2 (the down projection) such rows.
CONFIG = ModelConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256,
                     max_seq_len=128, rope_theta=100000.0, tie_embeddings=True)


def random_model(config: ModelConfig = CONFIG, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.5 if param.dim() == 2 else 0.1).add_(1.0 if param.dim() == 1 else 0.0)
    return model


def write_gguf(path, model: Llama, tensor_type=lambda name: Q.F32, arch: str = "llama", skip=(), reshape=(),
               vocabulary_fields: bool = True) -> dict:
    """A llama.cpp-style GGUF of `model` with each matrix stored as tensor_type(gguf name);
    returns the float32 weights a reader must find (dequantized, as stored)."""
    writer = gguf.GGUFWriter(str(path), arch)
    config = model.config
    for key, value in (("block_count", config.n_layers), ("context_length", config.max_seq_len),
                       ("embedding_length", config.dim), ("feed_forward_length", config.ffn_dim),
                       ("attention.head_count", config.n_heads), ("attention.head_count_kv", config.n_kv_heads)):
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.rope.freq_base", config.rope_theta)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.norm_eps)
    if vocabulary_fields:
        add_vocabulary(writer)
    stored = {}
    for name, tensor in _stored_state(model).items():
        gguf_name = _rename(name, _inverse(GGUF_NAMES))
        if gguf_name in skip:
            continue
        array = tensor.detach().float().numpy()
        if gguf_name in reshape:
            array = array[:-1]
        kind = tensor_type(gguf_name) if array.ndim == 2 else Q.F32
        if kind == Q.F32:
            writer.add_tensor(gguf_name, array)
            stored[name] = array
            continue
        if kind in (Q.Q4_K, Q.Q6_K, Q.Q8_1):        # gguf-py can read but not write these: random blocks
            block, size = gguf.GGML_QUANT_SIZES[kind]
            rng = np.random.default_rng(0)
            # bytes below 0x3c keep every float16 scale in a block finite and small
            raw = rng.integers(0, 0x3C, size=(array.shape[0], array.shape[1] // block * size), dtype=np.uint8)
        else:
            raw = gguf.quants.quantize(array, kind)
        writer.add_tensor(gguf_name, raw, raw_dtype=kind)
        if kind != Q.Q8_1:
            stored[name] = gguf.quants.dequantize(raw, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def model_with(weights: dict, config: ModelConfig = CONFIG) -> Llama:
    model = Llama(config).eval()
    state = {name: torch.from_numpy(np.array(array)) for name, array in weights.items()}
    if config.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state)
    return model


TOKENS = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))

# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("kind", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q6_K])
def test_every_tensor_type_loads_to_the_dequantized_weights(tmp_path, kind):
    path = tmp_path / "model.gguf"
    block = gguf.GGML_QUANT_SIZES[kind][0]
    stored = write_gguf(path, random_model(), lambda name: kind if CONFIG.dim % block == 0 or name.endswith("ffn_down.weight") else Q.F32)
    if kind in (Q.Q4_K, Q.Q6_K):
        assert sum(name.endswith("w2.weight") for name in stored) == CONFIG.n_layers   # the K-quant tensors
    loaded = load_model(path)
    # GGUF stores eps as float32 (llama.cpp computes in float32): 1e-5 comes back as 9.9999997e-06
    assert loaded.config == replace(CONFIG, norm_eps=float(np.float32(CONFIG.norm_eps)))
    assert loaded.output.weight is loaded.tok_embeddings.weight                # no output.weight: tied
    expected = model_with(stored, loaded.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(TOKENS), expected(TOKENS), atol=0, rtol=0)


def test_q_and_k_rows_are_already_in_our_rope_layout(tmp_path):
    """llama.cpp's converter undoes Hugging Face's q/k permutation; so a GGUF written from our
    (Meta-layout) weights without any permutation must give our model's logits exactly. (Against
    transformers' own GGUF loader on the real file: test_smollm2_logits_match_transformers.)"""
    model = random_model()
    write_gguf(tmp_path / "m.gguf", model)
    loaded = load_model(tmp_path / "m.gguf")
    model.config.norm_eps = loaded.config.norm_eps
    for norm in [model.norm] + [m for layer in model.layers for m in (layer.attention_norm, layer.ffn_norm)]:
        norm.eps = loaded.config.norm_eps
    with torch.no_grad():
        torch.testing.assert_close(loaded(TOKENS), model(TOKENS), atol=0, rtol=0)


def test_loading_into_another_dtype_and_context(tmp_path):
    write_gguf(tmp_path / "m.gguf", random_model())
    model = load_model(tmp_path / "m.gguf", dtype=torch.bfloat16, max_seq_len=32)
    assert model.tok_embeddings.weight.dtype == torch.bfloat16 and model.config.max_seq_len == 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_export_gguf_round_trip(tmp_path, dtype):
    tok = tokenizer_file(tmp_path)
    model = random_model()
    export_gguf(model, tok, tmp_path / "draft.gguf", dtype)
    loaded = load_model(tmp_path / "draft.gguf")
    rounded = model_with({name: t.to(dtype).float().numpy() if t.dim() == 2 else t.numpy()
                          for name, t in _stored_state(model).items()}, loaded.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(TOKENS), rounded(TOKENS), atol=0, rtol=0)
    again = load_tokenizer(str(tmp_path / "draft.gguf"))         # the vocabulary travels with it
    text = "the world and a story  1234 café"
    assert again.encode(text) == tok.encode(text) and again.chat_format == "chatml"
    assert chat_prompt(again, "hi") == chat_prompt(tok, "hi")


def test_export_gguf_keeps_rope_scaling_and_refuses_what_it_cannot_write(tmp_path):
    tok = tokenizer_file(tmp_path)
    llama31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    for scaling in (llama31, {"rope_type": "linear", "factor": 2.0}):
        config = replace(CONFIG, rope_scaling=scaling)
        model = random_model(config)
        export_gguf(model, tok, tmp_path / "scaled.gguf")
        loaded = load_model(tmp_path / "scaled.gguf")
        with torch.no_grad():
            torch.testing.assert_close(loaded(TOKENS), model(TOKENS), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        export_gguf(random_model(), tok, tmp_path / "x.gguf", torch.int8)
    with pytest.raises(ValueError, match="export the draft with its target's tokenizer"):
        export_gguf(random_model(replace(CONFIG, vocab_size=VOCAB + 1)), tok, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# ----------------------------------------------------------------------------- the tokenizer

def tokenizer_file(tmp_path, pre: str = "smollm", template: str = CHATML):
    path = tmp_path / f"vocab-{pre}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    add_vocabulary(writer, pre, template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return load_tokenizer(str(path))


def reference_encode(text: str) -> list[int]:
    """Hugging Face's byte-level BPE written out: SmolLM2's two-step pre-tokenizer (each digit
    alone, then GPT-2's regex on the text between digits), bytes -> GPT-2 characters (a byte the
    vocabulary lacks is dropped), then the merges applied best-ranked pair first."""
    tokens, _, merges = vocabulary()
    token_id, rank = {t: i for i, t in enumerate(tokens)}, {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    pieces = [p for segment in regex.split(r"(\p{N})", text) if segment
              for p in ([segment] if regex.fullmatch(r"\p{N}", segment) else regex.findall(GPT2_SPLIT_PATTERN, segment))]
    ids = []
    for piece in pieces:
        parts = [CHARS[b] for b in piece.encode() if CHARS[b] in token_id]
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: rank.get((parts[i], parts[i + 1]), math.inf))
            if (parts[best], parts[best + 1]) not in rank:
                break
            parts[best: best + 2] = [parts[best] + parts[best + 1]]
        ids += [token_id[p] for p in parts]
    return ids


TEXTS = ["the world and a story", "  the  world   ", "x  12 and 3.14", "a\tb\n\nc\r\n", "IT'S the story's end",
         "café naïve", "日本語 and Ελληνικά", "emoji 🙂 here", "a\x04b", "    return 1", "<|im_start|> typed",
         "", " ", "1,000,000", "\n\n\n", "ĠĠ", "thethe the  the"]


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_matches_the_merge_list_reference(tmp_path, text):
    tok = tokenizer_file(tmp_path)
    assert tok.encode(text) == reference_encode(text)
    kept = text.replace("\x04", "")                                # a missing byte is dropped
    assert tok.decode(tok.encode(text)) == kept


def test_ids_come_from_the_vocabulary_not_the_merge_order(tmp_path):
    tok = tokenizer_file(tmp_path)
    tokens = vocabulary()[0]
    assert [tokens[i] for i in tok.encode(" the world")] == ["Ġthe", "Ġworld"]
    assert [tokens[i] for i in tok.encode("x  1")] == ["x", "ĠĠ", "1"]      # smollm: the run stops at the digit
    gpt2 = tokenizer_file(tmp_path, pre="gpt2")
    assert [tokens[i] for i in gpt2.encode("x  1")] == ["x", "Ġ", "Ġ", "1"]   # GPT-2's regex: " 1" is one piece


def test_special_tokens_metadata_and_chatml(tmp_path):
    tok = tokenizer_file(tmp_path)
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.stop_ids) == (VOCAB, 2, 2, {0, 2})
    assert tok.bos_id == 0                     # no BOS is added: a document starts after <|endoftext|>
    assert tok.chat_format == "chatml" and tok.default_system == "You are a tiny test model."
    assert all(i >= len(SPECIALS) for i in tok.encode("<|im_start|><|endoftext|>"))   # typed specials stay text
    enc = tok.encode
    ids = chat_prompt(tok, "Hi there")
    assert ids == [1, *enc("system\nYou are a tiny test model."), 2, *enc("\n"), 1, *enc("user\nHi there"), 2,
                   *enc("\n"), 1, *enc("assistant\n")]
    assert chat_prompt(tok, "Hi", system="Be brief.")[:3] == [1, *enc("system\nBe brief.")][:3]
    example, start = chat_example(tok, "Hi", "A story.", "Be brief.")
    assert example[:start] == chat_prompt(tok, "Hi", "Be brief.")
    assert example[start:] == enc("A story.") + [2] + enc("\n")
    # A response that starts with whitespace merges with the template's newline: the response then
    # starts at the first id that is not the prompt's.
    example, start = chat_example(tok, "Hi", "   indented")
    prompt = chat_prompt(tok, "Hi")
    assert example == prompt[: -len(enc("assistant\n"))] + enc("assistant\n   indented") + [2] + enc("\n")
    assert example[:start] == prompt[:start] and start < len(prompt)      # "\n " is one piece here


def test_unknown_chat_template_is_refused_only_when_chat_is_asked(tmp_path):
    tok = tokenizer_file(tmp_path, template="{{ messages }}")
    assert tok.chat_format is None and tok.encode("the") == reference_encode("the")
    with pytest.raises(ValueError, match="chat template is not one this project recognises"):
        chat_prompt(tok, "hi")


# ----------------------------------------------------------------------------- bad input

def test_bad_files_and_tensors_are_one_clear_sentence(tmp_path):
    good = tmp_path / "good.gguf"
    write_gguf(good, random_model())
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        load_model(not_gguf)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_model(truncated)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")
    write_gguf(tmp_path / "qwen.gguf", random_model(), arch="qwen2")
    with pytest.raises(ValueError, match="architecture 'qwen2' is not supported"):
        load_model(tmp_path / "qwen.gguf")
    write_gguf(tmp_path / "q81.gguf", random_model(), lambda name: Q.Q8_1)
    with pytest.raises(ValueError, match="stored as Q8_1, which the installed gguf package cannot dequantize"):
        load_model(tmp_path / "q81.gguf")
    write_gguf(tmp_path / "missing.gguf", random_model(), skip=("blk.1.ffn_up.weight",))
    with pytest.raises(ValueError, match="lacks 1 tensor"):
        load_model(tmp_path / "missing.gguf")
    write_gguf(tmp_path / "shape.gguf", random_model(), reshape=("blk.0.attn_q.weight",))
    with pytest.raises(ValueError, match="'blk.0.attn_q.weight' has shape"):
        load_model(tmp_path / "shape.gguf")


def test_bad_vocabularies_are_one_clear_sentence(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="pre-tokenizer 'qwen9' is not supported"):
        tokenizer_file(tmp_path, pre="qwen9")
    path = tmp_path / "spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="its vocabulary is 'llama'.*pass its tokenizer.model"):
        load_tokenizer(str(path))
    # a draft of another vocabulary than the GGUF target's
    write_gguf(tmp_path / "target.gguf", random_model())
    other = random_model(replace(CONFIG, vocab_size=VOCAB - 1))
    with pytest.raises(ValueError, match="draft vocabulary .* the draft must use the target's tokenizer"):
        check_pair(load_model(tmp_path / "target.gguf"), other)
    monkeypatch.setitem(sys.modules, "gguf", None)                # the package is not installed
    with pytest.raises(ValueError, match="needs the `gguf` package"):
        load_model(tmp_path / "target.gguf")


# ----------------------------------------------------------------------------- the real SmolLM2 file

needs_smollm2 = pytest.mark.skipif(not os.path.exists(SMOLLM2), reason="python fetch_model.py puts SmolLM2 in models/")


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURE, encoding="utf-8") as f:
        return json.load(f)


@needs_smollm2
def test_smollm2_tokenizer_and_chat_template_match_transformers(reference):
    tok = load_tokenizer(SMOLLM2)
    assert tok.vocab_size == 49152 and tok.chat_format == "chatml"
    for case in reference["tokenizer_cases"]:
        # recorded with split_special_tokens=True: typed special tokens stay text, as in our encode
        assert tok.encode(case["text"]) == case["ids"], case["name"]
        assert tok.decode(tok.encode(case["text"])) == case["decoded"], case["name"]
    for case in reference["chat"]["cases"]:
        messages = case["messages"]
        if [m["role"] for m in messages].count("user") > 1:
            continue                                              # one user turn is all chat_prompt renders
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        user = next(m["content"] for m in messages if m["role"] == "user")
        if messages[-1]["role"] == "assistant":
            ids, _ = chat_example(tok, user, messages[-1]["content"], system)
        else:
            ids = chat_prompt(tok, user, system)
        assert ids == case["ids"], case["name"]


@needs_smollm2
def test_smollm2_digits_after_whitespace_follow_its_own_pre_tokenizer(reference):
    """transformers' GGUF converter builds plain GPT-2 splitting; SmolLM2's own tokenizer and
    llama.cpp split digits first. They differ only on a whitespace run before a digit."""
    tok = load_tokenizer(SMOLLM2)
    cases = reference["smollm2_pre_tokenizer_cases"]
    for case in cases:
        assert tok.encode(case["text"]) == case["ids_digits_then_bytelevel"], case["text"]
    assert sum(c["ids_digits_then_bytelevel"] != c["ids_transformers_gguf"] for c in cases) >= 3


@needs_smollm2
def test_smollm2_greedy_tokens_match_transformers(reference):
    model = load_model(SMOLLM2)
    greedy = reference["model"]["greedy_generate"]
    prompt, n_new = greedy["input_ids"], len(greedy["new_ids"])
    tokens = torch.tensor(Decoder(model, 1, len(prompt) + n_new).generate([prompt], n_new, temperature=0.0)[0])
    assert tokens.tolist() == greedy["new_ids"]


@needs_smollm2
def test_smollm2_logits_match_transformers(reference):
    model = load_model(SMOLLM2)
    prompt, top = reference["model"]["greedy_generate"]["input_ids"], reference["model"]["last_logits_top5"]
    with torch.no_grad():
        last = model(torch.tensor([prompt]))[0, -1]
    assert last.topk(5).indices.tolist() == top["ids"]
    torch.testing.assert_close(last[top["ids"]], torch.tensor(top["values"]), atol=0, rtol=1e-4)
