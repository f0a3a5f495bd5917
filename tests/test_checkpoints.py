"""Tests for checkpoints.py: our format, Hugging Face's and Meta's directories.

The Hugging Face and Meta directories are written here BY HAND, the way those tools write them,
with the q/k row permutation transcribed independently of checkpoints.py (explicit row arithmetic),
so a wrong permutation, renaming or shard split shows up as different logits.
(tools/verify_hf.py checks the same against the real transformers library.)
"""
import copy
import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from checkpoints import (config_from_hf, export_hf, hf_to_meta_name, load_model, meta_ffn_dim, meta_to_hf_name,
                         permute_for_hf, save_model)
from model import Llama, apply_rope, get_config

# Llama 2 style: multi-head attention, separate LM head.
LLAMA2 = get_config("test", n_kv_heads=4)
# Llama 3 style: grouped-query attention (4 query heads share 2 KV heads), rope_theta 5e5, tied.
LLAMA3 = get_config("test", vocab_size=96, rope_theta=500000.0, tie_embeddings=True)
LLAMA31_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}


def random_model(config, seed=0):
    """A Llama with every weight random, norms included (all-ones norms would hide a mix-up)."""
    torch.manual_seed(seed)
    model = Llama(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.2)
    return model


def logits(model, seed=1):
    tokens = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(tokens)


def hf_row_order(n_heads, head_dim):
    """Index list: HF row r of head h is Meta row 2r (first half) or 2(r - head_dim/2) + 1."""
    half = head_dim // 2
    return torch.tensor([h * head_dim + (2 * r if r < half else 2 * (r - half) + 1)
                         for h in range(n_heads) for r in range(head_dim)])


def hf_state_dict(model):
    """The state dict Hugging Face's LlamaForCausalLM would have for this model."""
    c, sd = model.config, model.state_dict()
    hf = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"]}
    if not c.tie_embeddings:
        hf["lm_head.weight"] = sd["output.weight"]
    for i in range(c.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        q_rows, k_rows = hf_row_order(c.n_heads, c.head_dim), hf_row_order(c.n_kv_heads, c.head_dim)
        hf[theirs + "self_attn.q_proj.weight"] = sd[ours + "attention.wq.weight"][q_rows]
        hf[theirs + "self_attn.k_proj.weight"] = sd[ours + "attention.wk.weight"][k_rows]
        hf[theirs + "self_attn.v_proj.weight"] = sd[ours + "attention.wv.weight"]
        hf[theirs + "self_attn.o_proj.weight"] = sd[ours + "attention.wo.weight"]
        hf[theirs + "mlp.gate_proj.weight"] = sd[ours + "feed_forward.w1.weight"]
        hf[theirs + "mlp.up_proj.weight"] = sd[ours + "feed_forward.w3.weight"]
        hf[theirs + "mlp.down_proj.weight"] = sd[ours + "feed_forward.w2.weight"]
        hf[theirs + "input_layernorm.weight"] = sd[ours + "attention_norm.weight"]
        hf[theirs + "post_attention_layernorm.weight"] = sd[ours + "ffn_norm.weight"]
    return {name: tensor.clone() for name, tensor in hf.items()}


def hf_config(config, nested_rope):
    """config.json as transformers 4.x writes it (top-level rope_theta) or 5.x (rope_parameters)."""
    raw = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
           "hidden_size": config.dim, "intermediate_size": config.ffn_dim,
           "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
           "num_key_value_heads": config.n_kv_heads, "max_position_embeddings": config.max_seq_len,
           "rms_norm_eps": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
           "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}
    scaling = {"rope_type": "llama3", **config.rope_scaling} if config.rope_scaling else {}
    if nested_rope:
        raw["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_theta, **scaling}
    else:
        raw.update(rope_theta=config.rope_theta, rope_scaling=scaling or None)
    return raw


def write_hf_dir(directory, model, weights, nested_rope=False):
    """A Hugging Face directory: weights in 'safetensors' | 'bin', one file or two shards + index."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(hf_config(model.config, nested_rope)))
    state = hf_state_dict(model)
    # transformers < 4.38 also saved each layer's RoPE frequencies
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(model.config.head_dim // 2)
    kind, sharded = weights.split("-") if "-" in weights else (weights, None)
    stem, ext = ("model", "safetensors") if kind == "safetensors" else ("pytorch_model", "bin")

    def write(tensors, name):
        if kind == "safetensors":
            save_file(tensors, directory / name, metadata={"format": "pt"})
        else:
            torch.save(tensors, directory / name)

    if not sharded:
        write(state, f"{stem}.{ext}")
        return
    names = sorted(state)
    shards = {f"{stem}-00001-of-00002.{ext}": names[::2], f"{stem}-00002-of-00002.{ext}": names[1::2]}
    for file, shard_names in shards.items():
        write({name: state[name] for name in shard_names}, file)
    weight_map = {name: file for file, shard_names in shards.items() for name in shard_names}
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / f"{stem}.{ext}.index.json").write_text(json.dumps(index))


def meta_shards(model, n_shards, vocab_parallel):
    """Split the state dict the way Meta's model-parallel layers hold it on n_shards ranks."""
    shards = [{} for _ in range(n_shards)]
    for name, tensor in model.state_dict().items():
        if tensor.dim() == 1:
            parts = [tensor] * n_shards                           # norms: every rank has a copy
        elif name == "tok_embeddings.weight":                     # (Vocab)ParallelEmbedding
            parts = tensor.chunk(n_shards, dim=0 if vocab_parallel else 1)
        elif name.endswith(("wo.weight", "w2.weight")):           # RowParallelLinear
            parts = tensor.chunk(n_shards, dim=1)
        else:                                                     # ColumnParallelLinear
            parts = tensor.chunk(n_shards, dim=0)
        for shard, part in zip(shards, parts):
            shard[name] = part.clone()
    for shard in shards:
        shard["rope.freqs"] = torch.ones(model.config.head_dim // 2)   # Llama 2 checkpoints carry it
    return shards


def write_meta_dir(directory, model, params, n_shards, vocab_parallel=False):
    directory.mkdir()
    (directory / "params.json").write_text(json.dumps(params))
    for rank, shard in enumerate(meta_shards(model, n_shards, vocab_parallel)):
        torch.save(shard, directory / f"consolidated.{rank:02d}.pth")


# ---------------------------------------------------------------------------------------------
# Our own format and export_hf
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [LLAMA2, LLAMA3], ids=["llama2", "llama3-tied"])
def test_own_format_round_trip(tmp_path, config):
    model = random_model(config)
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == config and not loaded.training
    assert torch.equal(logits(loaded), logits(model))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(tmp_path / "ckpt" / "model.safetensors", framework="pt") as f:
        assert ("output.weight" in f.keys()) == (not config.tie_embeddings)   # a tied matrix once
    # the tie is restored: one Parameter, so training updates both uses
    assert (loaded.output.weight is loaded.tok_embeddings.weight) == config.tie_embeddings


@pytest.mark.parametrize("config", [LLAMA2, LLAMA3], ids=["llama2", "llama3-tied"])
def test_a_cut_keeps_the_embedding_the_first_blocks_the_norm_and_the_head(tmp_path, config):
    """load_model(n_layers=1): the first block and everything around the blocks, the rest dropped."""
    model = random_model(config)
    save_model(model, tmp_path / "ckpt")
    cut = load_model(tmp_path / "ckpt", n_layers=1)
    assert cut.config == replace(config, n_layers=1) and len(cut.layers) == 1
    del model.layers[1:]                                  # the same model, stopped after block 0
    assert torch.equal(logits(cut), logits(model))
    assert (cut.output.weight is cut.tok_embeddings.weight) == config.tie_embeddings
    for n_layers in (0, 3):
        with pytest.raises(ValueError, match=f"cannot keep {n_layers} blocks of .*: it has 2; choose 1 to 2"):
            load_model(tmp_path / "ckpt", n_layers=n_layers)


def test_own_format_overwrite_and_dtype(tmp_path):
    save_model(random_model(LLAMA3), tmp_path)
    model = random_model(LLAMA2, seed=5)
    save_model(model, tmp_path)                           # replaces the other config's checkpoint
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    assert loaded.config == LLAMA2 and loaded.tok_embeddings.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.layers[1].attention.wk.weight, model.layers[1].attention.wk.weight.bfloat16())



def test_a_draft_sharing_its_targets_embedding_is_saved_without_it(tmp_path):
    """save_model(embedding_from=target): a draft cut from its target, whose embedding (tied head)
    is the target's, stores only its own blocks and norm (here in bfloat16), and load_model with
    base=target puts the target's embedding back: the draft's own logits, in the stored dtype."""
    target = random_model(LLAMA3)
    save_model(target, tmp_path / "target")
    draft = load_model(tmp_path / "target", n_layers=1)
    with torch.no_grad():
        draft.norm.weight.mul_(1.5)                       # trained: its own norm and block
    save_model(draft, tmp_path / "draft", dtype=torch.bfloat16, embedding_from=tmp_path / "target")
    with safe_open(tmp_path / "draft" / "model.safetensors", framework="pt") as f:
        assert not any(name.startswith(("tok_embeddings", "output")) for name in f.keys())
        assert {f.get_tensor(name).dtype for name in f.keys()} == {torch.bfloat16}
    config_json = json.loads((tmp_path / "draft" / "config.json").read_text())
    assert config_json["embedding_from"]["checkpoint"] == "target"
    loaded = load_model(tmp_path / "draft", base=tmp_path / "target")
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16 and loaded.output.weight is loaded.tok_embeddings.weight
    assert torch.equal(loaded.tok_embeddings.weight, target.tok_embeddings.weight.bfloat16())
    assert torch.equal(logits(loaded), logits(copy.deepcopy(draft).to(torch.bfloat16)))
    rounded = copy.deepcopy(draft)                        # float32: the stored blocks' bf16 values, the exact embedding
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if not name.startswith("tok_embeddings"):
                param.copy_(param.bfloat16().float())
    as_float32 = load_model(tmp_path / "draft", "cpu", torch.float32, base=tmp_path / "target")
    assert torch.equal(logits(as_float32), logits(rounded))

    with pytest.raises(ValueError, match="stores a draft without its token embedding: it shares the embedding of target"):
        load_model(tmp_path / "draft")
    save_model(random_model(LLAMA3, seed=3), tmp_path / "other")
    with pytest.raises(ValueError, match="holds another one; give the target that this draft was trained for"):
        load_model(tmp_path / "draft", base=tmp_path / "other")
    with torch.no_grad():
        draft.tok_embeddings.weight.add_(0.01)            # an embedding trained away from the target's
    with pytest.raises(ValueError, match="--freeze-embeddings"):
        save_model(draft, tmp_path / "draft2", embedding_from=tmp_path / "target")


def test_int8_storage_keeps_each_matrix_as_int8_rows_and_their_scales(tmp_path):
    """save_model(dtype=torch.int8): every matrix as int8 rows and a bfloat16 scale per row
    (quantize.int8_rows), norms as they are; load_model gives back scale * q."""
    from quantize import int8_rows
    model = random_model(LLAMA2)
    save_model(model, tmp_path / "int8", dtype=torch.int8)
    with safe_open(tmp_path / "int8" / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("layers.0.attention.wq.weight").dtype == torch.int8
        assert f.get_tensor("layers.0.attention.wq.weight.scale").dtype == torch.bfloat16
        assert f.get_tensor("norm.weight").dtype == torch.float32
    loaded = load_model(tmp_path / "int8")
    for name, param in model.named_parameters():
        if param.dim() == 2:
            rows, scales = int8_rows(param)
            expected = rows.float() * scales.float()[:, None]
            assert torch.equal(loaded.get_parameter(name), expected), name
        else:
            assert torch.equal(loaded.get_parameter(name), param)

@pytest.mark.parametrize("config", [LLAMA2, LLAMA3, get_config("test", rope_scaling=LLAMA31_SCALING)],
                         ids=["llama2", "llama3-tied", "llama3.1-scaled"])
def test_export_hf_matches_hand_written_hf_layout(tmp_path, config):
    model = random_model(config)
    export_hf(model, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "llama" and raw["head_dim"] == config.head_dim
    assert raw["tie_word_embeddings"] == config.tie_embeddings and raw["rope_theta"] == config.rope_theta
    assert config_from_hf(raw) == config
    expected = hf_state_dict(model)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert sorted(f.keys()) == sorted(expected)
        for name in expected:
            assert torch.equal(f.get_tensor(name), expected[name]), name
    assert torch.equal(logits(load_model(tmp_path)), logits(model))


# ---------------------------------------------------------------------------------------------
# Hugging Face directories and the meaning of the permutation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["safetensors", "safetensors-sharded", "bin", "bin-sharded"])
@pytest.mark.parametrize("config", [LLAMA2, LLAMA3], ids=["llama2", "llama3-tied"])
def test_load_hand_written_hf_directory(tmp_path, config, weights):
    model = random_model(config)
    write_hf_dir(tmp_path / "hf", model, weights, nested_rope=config.tie_embeddings)
    loaded = load_model(tmp_path / "hf")
    assert loaded.config == config
    assert torch.equal(logits(loaded), logits(model))


def test_hf_layout_means_rotating_halves():
    """Hugging Face rotates (x_j, x_{j+hd/2}) with rotate_half; on permute_for_hf's rows that
    gives the same attention scores as our rotation of neighbouring pairs."""
    config = get_config("test", rope_theta=500000.0)
    attention = random_model(config).layers[0].attention
    H, Hkv, hd, T = config.n_heads, config.n_kv_heads, config.head_dim, 12
    x = torch.randn(1, T, config.dim, generator=torch.Generator().manual_seed(3))

    def heads(w, n):                                   # (1, T, n*hd) -> (1, n, T, hd)
        return (x @ w.T).view(1, T, n, hd).transpose(1, 2)

    def scores(q, k):                                  # GQA: query head h reads KV head h // (H/Hkv)
        return q @ k.repeat_interleave(H // Hkv, dim=1).transpose(-1, -2)

    angles = torch.arange(T).float()[:, None] * config.rope_theta ** (-torch.arange(0, hd, 2).float() / hd)
    ours = scores(apply_rope(heads(attention.wq.weight, H), angles.cos(), angles.sin()),
                  apply_rope(heads(attention.wk.weight, Hkv), angles.cos(), angles.sin()))

    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def hf_rope(v):                                    # HF: v * cos + rotate_half(v) * sin
        return v * cos + torch.cat([-v[..., hd // 2:], v[..., : hd // 2]], -1) * sin

    q_hf = heads(permute_for_hf(attention.wq.weight, H), H)
    k_hf = heads(permute_for_hf(attention.wk.weight, Hkv), Hkv)
    torch.testing.assert_close(scores(hf_rope(q_hf), hf_rope(k_hf)), ours, rtol=1e-5, atol=1e-5)
    # the layouts really differ: rotate_half on OUR row order gives other scores
    unpermuted = scores(hf_rope(heads(attention.wq.weight, H)), hf_rope(heads(attention.wk.weight, Hkv)))
    assert (unpermuted - ours).abs().max() > 1e-2


def test_name_table():
    assert hf_to_meta_name("model.layers.11.mlp.gate_proj.weight") == "layers.11.feed_forward.w1.weight"
    assert hf_to_meta_name("model.layers.0.post_attention_layernorm.weight") == "layers.0.ffn_norm.weight"
    assert hf_to_meta_name("lm_head.weight") == "output.weight"
    assert hf_to_meta_name("model.layers.0.self_attn.q_proj.bias") is None
    assert meta_to_hf_name("layers.3.attention.wo.weight") == "model.layers.3.self_attn.o_proj.weight"


# ---------------------------------------------------------------------------------------------
# Meta directories
# ---------------------------------------------------------------------------------------------

def test_meta_ffn_dim_rule():
    assert meta_ffn_dim(4096, 256) == 11008                     # Llama 2 7B
    assert meta_ffn_dim(4096, 1024, 1.3) == 14336               # Llama 3 8B
    assert meta_ffn_dim(5120, 256) == 13824                     # Llama 2 13B


LLAMA2_PARAMS = {"dim": 32, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-05,
                 "vocab_size": -1}
LLAMA3_PARAMS = {"dim": 32, "ffn_dim_multiplier": 1.3, "multiple_of": 64, "n_heads": 4, "n_kv_heads": 2,
                 "n_layers": 2, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True,
                 "vocab_size": 96}
# the configs those params describe (Meta's ffn rule: 32 -> 96 and 32, x1.3 -> 128)
META_LLAMA2 = get_config("test", n_kv_heads=4, ffn_dim=96, max_seq_len=4096)
META_LLAMA3 = get_config("test", vocab_size=96, ffn_dim=128, rope_theta=500000.0, max_seq_len=131072,
                         rope_scaling=LLAMA31_SCALING)


@pytest.mark.parametrize("n_shards", [1, 2])
@pytest.mark.parametrize("params,config", [(LLAMA2_PARAMS, META_LLAMA2), (LLAMA3_PARAMS, META_LLAMA3)],
                         ids=["llama2", "llama3.1"])
def test_load_meta_directory(tmp_path, params, config, n_shards):
    model = random_model(config)
    vocab_parallel = "n_kv_heads" in params     # Llama 3 shards the embedding by vocabulary
    write_meta_dir(tmp_path / "meta", model, params, n_shards, vocab_parallel)
    loaded = load_model(tmp_path / "meta")
    assert loaded.config == config
    assert torch.equal(logits(loaded), logits(model))


def test_meta_max_seq_len_override(tmp_path):
    write_meta_dir(tmp_path / "meta", random_model(META_LLAMA2), LLAMA2_PARAMS, 1)
    assert load_model(tmp_path / "meta", max_seq_len=128).config.max_seq_len == 128


# ---------------------------------------------------------------------------------------------
# Bad inputs: one clear error naming the file and the problem
# ---------------------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no checkpoint.*notes\.txt.*config\.json.*params\.json"):
        load_model(tmp_path)


def test_config_missing_key(tmp_path):
    write_hf_dir(tmp_path / "hf", random_model(LLAMA2), "safetensors")
    raw = json.loads((tmp_path / "hf" / "config.json").read_text())
    del raw["hidden_size"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"config\.json.*missing key.*hidden_size"):
        load_model(tmp_path / "hf")


@pytest.mark.parametrize("change,message", [
    ({"attention_bias": True}, "attention_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "yarn"),
    ({"head_dim": 16}, "head_dim"),
])
def test_unsupported_hf_config(change, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf({**hf_config(LLAMA2, nested_rope=False), **change})


def test_truncated_safetensors(tmp_path):
    export_hf(random_model(LLAMA2), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors.*corrupt, truncated"):
        load_model(tmp_path)


def test_garbage_pth(tmp_path):
    write_meta_dir(tmp_path / "meta", random_model(META_LLAMA2), LLAMA2_PARAMS, 1)
    (tmp_path / "meta" / "consolidated.00.pth").write_bytes(b"not a checkpoint" * 50)
    with pytest.raises(ValueError, match=r"consolidated\.00\.pth.*corrupt"):
        load_model(tmp_path / "meta")


class _RunsCode:
    """Unpickling this object creates a file: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickled_code_is_never_run(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config(LLAMA2, nested_rope=False)))
    marker = tmp_path / "code-ran"
    torch.save({"model.norm.weight": _RunsCode(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin"):
        load_model(tmp_path / "hf")
    assert not marker.exists()


def test_missing_shard_file(tmp_path):
    write_hf_dir(tmp_path / "hf", random_model(LLAMA2), "safetensors-sharded")
    (tmp_path / "hf" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_model(tmp_path / "hf")


def edit_hf_weights(directory, edit):
    """Rewrite directory/model.safetensors after edit(state) changed its tensors in place."""
    with safe_open(directory / "model.safetensors", framework="pt") as f:
        state = {name: f.get_tensor(name) for name in f.keys()}
    edit(state)
    save_file(state, directory / "model.safetensors")


def test_wrong_shape(tmp_path):
    export_hf(random_model(LLAMA2), tmp_path)
    edit_hf_weights(tmp_path, lambda s: s.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(65, 32)}))
    with pytest.raises(ValueError, match=r"model\.safetensors.*model\.layers\.1\.mlp\.up_proj\.weight.*"
                                         r"\(65, 32\).*\(64, 32\)"):
        load_model(tmp_path)


def test_unexpected_tensor(tmp_path):
    export_hf(random_model(LLAMA2), tmp_path)
    edit_hf_weights(tmp_path, lambda s: s.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(32)}))
    with pytest.raises(ValueError, match=r"model\.safetensors.*unexpected tensor.*q_proj\.bias"):
        load_model(tmp_path)


def test_missing_tensor(tmp_path):
    export_hf(random_model(LLAMA2), tmp_path)
    edit_hf_weights(tmp_path, lambda s: s.pop("model.layers.1.input_layernorm.weight"))
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*layers\.1\.attention_norm\.weight"):
        load_model(tmp_path)


def test_untied_config_needs_lm_head(tmp_path):
    export_hf(random_model(LLAMA3), tmp_path)            # tied: no lm_head.weight stored
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "tie_word_embeddings": False}))
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*output\.weight"):
        load_model(tmp_path)
