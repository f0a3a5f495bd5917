"""
checkpoints.py: every on-disk format of a Llama, in and out.

Four layouts hold the same numbers:
  ours          a directory: config.json {"format": "draft-align-llama", "config": {ModelConfig}}
                + model.safetensors, with model.py's parameter names.
  Hugging Face  a directory: config.json (a LlamaConfig) + model.safetensors, or shards listed
                in model.safetensors.index.json, or pytorch_model.bin (or its shards + index);
                other names (HF_NAMES) and the rows of wq and wk permuted (below).
  Meta          a directory: params.json + consolidated.00.pth, .01.pth, ...: one file per
                model-parallel rank, each holding a slice of every matrix, with our names.
  GGUF          one file (llama.cpp, Ollama, LM Studio): metadata (config, tokenizer, chat
                template) + tensors, often quantized (Q4_1, Q8_0, K-quants...), other names
                (GGUF_NAMES). The `gguf` package (llama.cpp's own) reads, dequantizes and writes it.
load_model reads all four, save_model writes ours, export_hf and export_gguf write the others so
a trained draft can serve other tools (transformers' `assistant_model`, llama.cpp's `--model-draft`).
Nothing here runs code from a file: torch.load(weights_only=True), and a GGUF's chat template
is a string that tokenizer.py recognises, never a program it executes.

The q/k permutation. RoPE rotates PAIRS of query/key features. model.apply_rope pairs
neighbours (2j, 2j+1), as Meta's code does; Hugging Face's rotate_half pairs feature j with
j + head_dim/2. So HF's conversion script reorders the rows of wq and wk inside every head.
One head, head_dim 8, pair j = letter j:

    row          0 1 2 3 4 5 6 7
    Meta (ours)  a a b b c c d d        pair j = rows 2j, 2j+1
    HF           a b c d a b c d        pair j = rows j, j + head_dim/2

HF row r is Meta row 2r for r < head_dim/2, and Meta row 2(r - head_dim/2) + 1 above that.
Reordering the features of q and k alike leaves every score q.k unchanged, so both layouts
compute the same attention; wv and wo are not rotated and keep their order. llama.cpp's
converter permutes HF's rows back to Meta's order (its RoPE also pairs neighbours), so a GGUF
needs only new names (tests/test_gguf.py checks this against transformers' own GGUF loader).
"""

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common import gguf_value, open_gguf, replace_atomically
from model import Llama, ModelConfig, rope_frequencies

CHECKPOINT_FORMAT = "draft-align-llama"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # --dtype
HF_NAMES = {  # Hugging Face name -> ours; {i} is the layer index
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attention.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attention.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attention.wv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attention.wo.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.feed_forward.w1.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.feed_forward.w3.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.feed_forward.w2.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_NAMES = {  # GGUF name (llama.cpp's gguf-py tensor names for "llama") -> ours
    "token_embd.weight": "tok_embeddings.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.attention_norm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.attention.wq.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.attention.wk.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.attention.wv.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.attention.wo.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.ffn_norm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.feed_forward.w1.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.feed_forward.w3.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.feed_forward.w2.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
IGNORED_TENSORS = ("rotary_emb.inv_freq", "rope.freqs")  # stored RoPE frequencies, not weights
HF_WEIGHT_FILES = (("model.safetensors", "model.safetensors.index.json"),   # preferred, like
                   ("pytorch_model.bin", "pytorch_model.bin.index.json"))   # transformers does


# ----------------------------------------------------------------------------------------------
# Names and the q/k permutation
# ----------------------------------------------------------------------------------------------

def _rename(name: str, table: dict[str, str]) -> str | None:
    layer = re.search(r"\.(\d+)\.", name)                      # ".7." in "model.layers.7.mlp..."
    pattern = name.replace(layer.group(0), ".{i}.", 1) if layer else name
    return table[pattern].format(i=layer.group(1) if layer else "") if pattern in table else None


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {ours: theirs for theirs, ours in table.items()}


def hf_to_meta_name(name: str) -> str | None:
    """Our name for a Hugging Face tensor name, or None if it is not a Llama weight."""
    return _rename(name, HF_NAMES)


def meta_to_hf_name(name: str) -> str | None:
    """Hugging Face's name for one of our parameter names."""
    return _rename(name, _inverse(HF_NAMES))


def permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """wq or wk (n_heads * head_dim, dim) from Meta's row order to Hugging Face's (picture above)."""
    rows, dim = w.shape
    # rows indexed (head, pair j, member a) -> (head, member a, pair j)
    return w.reshape(n_heads, rows // n_heads // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def unpermute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The exact inverse of permute_for_hf: Hugging Face's row order back to Meta's."""
    rows, dim = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, dim).transpose(1, 2).reshape(rows, dim)


def _rope_heads(name: str, config: ModelConfig) -> int | None:
    """The head count of a RoPE-rotated matrix (wq: n_heads, wk: n_kv_heads); None for the rest."""
    if name.endswith("attention.wq.weight"):
        return config.n_heads
    return config.n_kv_heads if name.endswith("attention.wk.weight") else None


# ----------------------------------------------------------------------------------------------
# Configs: Hugging Face's config.json, Meta's params.json, a GGUF's metadata <-> ModelConfig
# ----------------------------------------------------------------------------------------------

def _require(raw: dict, keys: list[str], where) -> None:
    missing = [key for key in keys if key not in raw]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; this config needs all of {keys}")


def _make_config(where, **values) -> ModelConfig:
    try:
        return ModelConfig(**values)
    except (TypeError, ValueError) as error:                   # unknown field, inconsistent sizes
        raise ValueError(f"{where}: invalid model config: {error}") from error


def config_from_hf(hf: dict, where="config.json") -> ModelConfig:
    """A Hugging Face LlamaConfig (as a dict) -> ModelConfig; refuses what this Llama lacks."""
    _require(hf, ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "max_position_embeddings"], where)
    supported = {"attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
                 "head_dim": hf["hidden_size"] // hf["num_attention_heads"]}
    for key, value in supported.items():
        if hf.get(key) not in (None, value):
            raise ValueError(f"{where}: {key}={hf[key]!r} is not supported; this Llama needs {value!r}")
    # transformers 4.x writes rope_theta and rope_scaling at the top; 5.x nests both in rope_parameters.
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3", "linear"):
        raise ValueError(f"{where}: RoPE scaling {rope_type!r} is not supported, only 'linear' and Llama 3.1's 'llama3'")
    scaling = None
    if rope_type == "linear":
        scaling = {"rope_type": "linear", "factor": float(rope["factor"])}
    elif rope_type == "llama3":
        _require(rope, ["factor", "low_freq_factor", "high_freq_factor"], f"{where} (RoPE scaling)")
        scaling = {key: rope[key] for key in ("factor", "low_freq_factor", "high_freq_factor")}
        scaling["original_max_position_embeddings"] = rope.get(
            "original_max_position_embeddings", hf["max_position_embeddings"])
    n_heads = hf["num_attention_heads"]
    return _make_config(
        where, vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        ffn_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-6),                      # defaults: transformers' own
        tie_embeddings=hf.get("tie_word_embeddings", False), rope_scaling=scaling)


def config_to_hf(config: ModelConfig, dtype: torch.dtype = torch.float32,
                 bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict:
    """The config.json of transformers' LlamaForCausalLM (in the 4.x form, which 5.x also reads)."""
    scaling = config.rope_scaling
    if scaling and "freq_factors" in scaling:
        raise ValueError("this model's RoPE uses per-frequency factors from a GGUF file, which a Hugging "
                         "Face config cannot express; export it with export_gguf instead")
    rope_scaling = scaling if scaling and "rope_type" in scaling else (
        {"rope_type": "llama3", **scaling} if scaling else None)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "rope_scaling": rope_scaling,
        "tie_word_embeddings": config.tie_embeddings, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02, "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
    }


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's SwiGLU width: 2/3 of 4*dim (the parameters of a 4*dim MLP), scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def config_from_meta(params: dict, vocab_size: int, where="params.json") -> ModelConfig:
    """Meta's params.json -> ModelConfig. vocab_size: the embedding's rows (Llama 2 says -1)."""
    _require(params, ["dim", "n_layers", "n_heads"], where)
    rope_theta = float(params.get("rope_theta", 10000.0))
    scaling = None
    if params.get("use_scaled_rope"):     # Llama 3.1: constants fixed in Meta's code, not in params
        scaling = {"factor": float(params.get("rope_scaling_factor", 8.0)), "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    # params.json has no context length: Llama 2 has 4K, Llama 3 8K, Llama 3.1 (scaled RoPE) 128K.
    max_seq_len = 131072 if scaling else 8192 if rope_theta >= 500000 else 4096
    return _make_config(
        where, vocab_size=params["vocab_size"] if params.get("vocab_size", -1) > 0 else vocab_size,
        dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
        n_kv_heads=params.get("n_kv_heads") or params["n_heads"],
        ffn_dim=meta_ffn_dim(params["dim"], params.get("multiple_of", 256), params.get("ffn_dim_multiplier")),
        max_seq_len=max_seq_len, rope_theta=rope_theta, norm_eps=params.get("norm_eps", 1e-5),
        rope_scaling=scaling)


def config_from_gguf(reader, where) -> ModelConfig:
    """A GGUF's metadata ("llama.block_count", ...) -> ModelConfig; refuses what this Llama lacks."""
    arch = gguf_value(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{where}: architecture {arch!r} is not supported; this project loads "
                         "Llama-architecture GGUF files (general.architecture = 'llama') only")

    def key(name, default=KeyError):
        value = gguf_value(reader, f"llama.{name}", default)
        if value is KeyError:
            raise ValueError(f"{where}: metadata key llama.{name} is missing; the file is incomplete")
        return value

    if key("expert_count", 0):
        raise ValueError(f"{where}: a mixture-of-experts model (llama.expert_count = {key('expert_count')}); "
                         "this project's Llama has one feed-forward network per layer")
    n_heads, dim = key("attention.head_count"), key("embedding_length")
    if key("rope.dimension_count", dim // n_heads) != dim // n_heads:
        raise ValueError(f"{where}: RoPE rotates {key('rope.dimension_count')} of {dim // n_heads} head "
                         "features; partial rotary embeddings are not supported")
    tokens = gguf_value(reader, "tokenizer.ggml.tokens")
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise ValueError(f"{where}: no tensor 'token_embd.weight'; the file is incomplete")
    vocab_size = len(tokens) if tokens else int(embedding.shape[1])   # GGUF shapes are innermost first
    return _make_config(
        where, vocab_size=vocab_size, dim=dim, n_layers=key("block_count"), n_heads=n_heads,
        n_kv_heads=key("attention.head_count_kv", n_heads), ffn_dim=key("feed_forward_length"),
        max_seq_len=key("context_length"), rope_theta=float(key("rope.freq_base", 10000.0)),
        norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        rope_scaling=_gguf_rope_scaling(reader, key, where))


def _gguf_rope_scaling(reader, key, where) -> dict | None:
    """A GGUF states long-context RoPE either as metadata (type + factor) or, for Llama 3.1, as a
    tensor `rope_freqs.weight` of per-frequency divisors that its converter precomputed."""
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is not None:
        return {"freq_factors": [float(x) for x in _dequantize(freqs, where)]}
    kind = key("rope.scaling.type", "linear" if key("rope.scale_linear", None) else "none")
    if kind == "none":
        return None
    if kind == "linear":
        factor = float(key("rope.scaling.factor", None) or key("rope.scale_linear", 1.0))
        return {"rope_type": "linear", "factor": factor} if factor != 1.0 else None
    raise ValueError(f"{where}: RoPE scaling {kind!r} is not supported, only 'linear' and Llama 3.1's "
                     "rope_freqs factors")


# ----------------------------------------------------------------------------------------------
# Reading tensors
# ----------------------------------------------------------------------------------------------

def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from error


def _read_tensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of a .safetensors / .bin / .pth file, one at a time."""
    if not file.is_file():
        raise FileNotFoundError(f"weight file {file} does not exist")
    try:
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt") as f:         # reads the header; tensors on demand
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            # weights_only: unpickling can run arbitrary code, so accept nothing but tensors.
            # mmap: tensors stay on disk until used, so a 7B checkpoint is not in memory twice.
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(state, dict):
                raise TypeError(f"it holds a {type(state).__name__}, not a dict of tensors")
            yield from state.items()
    except Exception as error:   # damaged files raise many types: SafetensorError, UnpicklingError, ...
        raise ValueError(f"{file}: cannot read the weights ({type(error).__name__}: {error}); the file "
                         "is corrupt, truncated or not a checkpoint: re-download or re-export it") from error


def _dequantize(tensor, where) -> np.ndarray:
    """A GGUF tensor as float32, (rows, columns) in torch's order, through gguf.quants."""
    from gguf import quants
    try:
        return quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise ValueError(f"{where}: tensor {tensor.name!r} is stored as {tensor.tensor_type.name}, which the "
                         "installed gguf package cannot dequantize; upgrade gguf or re-quantize the file "
                         "(F32, F16, BF16, Q8_0, Q4_0/1, Q5_0/1 and the K-quants are supported)") from None


def _own_config(raw: dict, where: Path) -> ModelConfig:
    if raw["format"] != CHECKPOINT_FORMAT or not isinstance(raw.get("config"), dict):
        raise ValueError(f"{where}: expected format {CHECKPOINT_FORMAT!r} with a 'config' object")
    _require(raw["config"], [field.name for field in fields(ModelConfig)], where)
    return _make_config(where, **raw["config"])


def _hf_weight_files(directory: Path) -> list[Path]:
    for single, index in HF_WEIGHT_FILES:
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            weight_map = _read_json(directory / index).get("weight_map")    # tensor name -> shard
            if not isinstance(weight_map, dict):
                raise ValueError(f"{directory / index}: no 'weight_map' (tensor name -> shard file)")
            return [directory / shard for shard in sorted(set(weight_map.values()))]
    raise ValueError(f"{directory}: config.json but no weights; expected one of {sum(HF_WEIGHT_FILES, ())}")


def _meta_shard_dim(name: str, shard: torch.Tensor, dim: int) -> int:
    """The axis along which Meta's model-parallel layers split this 2-D weight."""
    if name == "tok_embeddings.weight":   # Llama 2 splits the features, Llama 3 the vocabulary
        return 0 if shard.shape[1] == dim else 1
    # RowParallelLinear (wo, w2) splits its inputs; ColumnParallelLinear (wq wk wv w1 w3 output) its outputs
    return 1 if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")) else 0


# Each reader below returns (config, tensors): tensors yields (file, stored name, our name or
# None for a tensor that is no Llama weight, tensor), with HF's q/k rows already unpermuted.

def _own_or_hf_checkpoint(directory: Path, raw: dict, config_file: Path):
    if "format" in raw:
        config, files, from_hf = _own_config(raw, config_file), [directory / "model.safetensors"], False
    elif raw.get("model_type") == "llama" or "LlamaForCausalLM" in raw.get("architectures", []):
        config, files, from_hf = config_from_hf(raw, config_file), _hf_weight_files(directory), True
    else:
        raise ValueError(f"{config_file}: neither this project's checkpoint (no 'format' key) "
                         f"nor a Hugging Face Llama (model_type={raw.get('model_type')!r})")

    def tensors():
        for file in files:
            stored_tensors = _read_tensors(file)
            if raw.get("int8_rows"):                # save_model(dtype=torch.int8): w = scale q per row
                from quantize import dequantize_rows
                by_name = dict(stored_tensors)
                stored_tensors = [(name, dequantize_rows(t, by_name[name + ".scale"]) if t.dtype == torch.int8 else t)
                                  for name, t in by_name.items() if not name.endswith(".scale")]
            for stored, tensor in stored_tensors:
                name = hf_to_meta_name(stored) if from_hf else stored
                n_heads = _rope_heads(name, config) if (from_hf and name) else None
                if n_heads and tensor.dim() == 2 and tensor.shape[0] % (2 * n_heads) == 0:
                    tensor = unpermute_from_hf(tensor, n_heads)   # (a wrong shape is reported by _build)
                yield file, stored, name, tensor
    return config, tensors()


def _meta_checkpoint(directory: Path):
    params_file, files = directory / "params.json", sorted(directory.glob("consolidated.*.pth"))
    params = _read_json(params_file)
    _require(params, ["dim", "n_layers", "n_heads"], params_file)
    if not files:
        raise ValueError(f"{directory}: params.json but no consolidated.*.pth weight files")
    shards = [dict(_read_tensors(file)) for file in files]            # memory-mapped, not yet read
    for file, shard in zip(files, shards):
        if shard.keys() != shards[0].keys():
            raise ValueError(f"{file}: holds other tensors than {files[0].name}; the shards do not match")
    merged = {name: torch.cat([shard[name] for shard in shards], _meta_shard_dim(name, first, params["dim"]))
              if len(shards) > 1 and first.dim() == 2 else first       # 1-D norms are replicated
              for name, first in shards[0].items()}
    where = files[0] if len(files) == 1 else directory
    if "tok_embeddings.weight" not in merged:
        raise ValueError(f"{where}: no tensor 'tok_embeddings.weight'; is this a Llama checkpoint?")
    config = config_from_meta(params, merged["tok_embeddings.weight"].shape[0], params_file)
    # pop: each merged tensor is freed as soon as the model holds its converted copy
    return config, ((where, name, name, merged.pop(name)) for name in list(merged))


def _gguf_checkpoint(file: Path, only: set[str] | None = None):
    """only: our names of the tensors wanted (None: all), so that the others are not dequantized."""
    reader = open_gguf(str(file))
    config = config_from_gguf(reader, file)
    tensors = ((file, t.name, _rename(t.name, GGUF_NAMES), torch.tensor(_dequantize(t, file)))   # a copy: the file is mapped read-only
               for t in reader.tensors if t.name != "rope_freqs.weight"      # that one is in the config
               and (only is None or _rename(t.name, GGUF_NAMES) in only))
    return config, tensors


def _build(config: ModelConfig, tensors: Iterable, where: Path, device, dtype: torch.dtype | None) -> Llama:
    """Check every stored tensor against the config's names and shapes; build the model on them."""
    with torch.device("meta"):                   # shapes only: no memory, no random initialisation
        model = Llama(config)
    expected = {name: p.shape for name, p in _stored_state(model).items()}
    state = {}
    for file, stored, name, tensor in tensors:
        if stored.endswith(IGNORED_TENSORS) or (config.tie_embeddings and name == "output.weight"):
            continue
        if name not in expected:
            raise ValueError(f"{file}: unexpected tensor {stored!r}: not a weight of the Llama "
                             f"that {where}'s config describes; remove it or fix the config")
        if tensor.shape != expected[name]:
            raise ValueError(f"{file}: tensor {stored!r} has shape {tuple(tensor.shape)} but {where}'s "
                             f"config implies {tuple(expected[name])}; the config and the weights disagree")
        state[name] = tensor.to(device=device, dtype=dtype or tensor.dtype)
    missing = sorted(expected.keys() - state.keys())
    if missing:
        raise ValueError(f"{where}: the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:3]}; "
                         "it is incomplete or was written for another config")
    if config.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, assign=True)    # the model adopts these tensors: no second copy
    if config.tie_embeddings:                    # assign made two Parameters of one tensor: re-tie
        model.output.weight = model.tok_embeddings.weight
    from model import rope_tables
    model.rope_cos, model.rope_sin = rope_tables(config)   # the ones built above live on "meta"
    return model.eval()


def _open_checkpoint(path: Path, only: set[str] | None = None) -> tuple[ModelConfig, Iterator, dict | None]:
    """(config, tensors, embedding_from) of any checkpoint: embedding_from is set for ours when it
    stores no token embedding (save_model's embedding_from)."""
    if path.suffix == ".gguf" or (path.is_file() and path.read_bytes()[:4] == b"GGUF"):
        return (*_gguf_checkpoint(path, only), None)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give a checkpoint directory or a .gguf file)")
    if (path / "config.json").is_file():
        raw = _read_json(path / "config.json")
        return (*_own_or_hf_checkpoint(path, raw, path / "config.json"), raw.get("embedding_from"))
    if (path / "params.json").is_file():
        return (*_meta_checkpoint(path), None)
    found = sorted(p.name for p in path.iterdir())[:10]
    raise ValueError(f"{path}: no checkpoint (found {found}); expected config.json with model.safetensors "
                     "(ours or Hugging Face's, or Hugging Face's sharded / .bin files), Meta's params.json "
                     "with consolidated.*.pth, or a .gguf file")


def embedding_digest(embedding: torch.Tensor) -> str:
    """sha256 of a token embedding's values as float32: which embedding a draft was trained with,
    whatever file format holds it."""
    return hashlib.sha256(embedding.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def _shared_tensors(config: ModelConfig, path: Path, base, embedding_from: dict):
    """The token embedding (and an untied head) of `base`, for a checkpoint that shares them."""
    if base is None:
        raise ValueError(f"{path} stores a draft without its token embedding: it shares the embedding of "
                         f"{embedding_from['checkpoint']}; give that checkpoint as the target")
    names = {"tok_embeddings.weight"} | (set() if config.tie_embeddings else {"output.weight"})
    _, tensors, _ = _open_checkpoint(Path(base), only=names)
    shared = [item for item in tensors if item[2] in names]
    embedding = next((tensor for _, _, name, tensor in shared if name == "tok_embeddings.weight"), None)
    if embedding is None or embedding_digest(embedding) != embedding_from["sha256"]:
        raise ValueError(f"{path} was trained with the token embedding of {embedding_from['checkpoint']}, and "
                         f"{base} holds another one; give the target that this draft was trained for")
    return shared


def load_model(path, device="cpu", dtype: torch.dtype | None = None,
               max_seq_len: int | None = None, n_layers: int | None = None, base=None) -> Llama:
    """Load a checkpoint (ours, Hugging Face's or Meta's directory, or a .gguf file), in eval mode.

    dtype=None keeps the stored dtype (float32 for ours and for dequantized GGUF tensors;
    downloaded 7B checkpoints are usually bfloat16: pass torch.float32 for exact CPU work).
    max_seq_len overrides the context length (it sizes only the RoPE tables: KV caches are
    sized by each decoding call, so a model with an 8K context costs nothing extra).
    n_layers keeps only the first n_layers transformer blocks, with the embedding, the final
    norm and the head: a draft cut from the target. Untrained, it is the target "exiting
    early"; distillation then teaches its last block to hand the head what the target's
    last block would (PAPER.md section 2; README, the headline experiment).
    base: for a draft saved without its token embedding (save_model's embedding_from), the
    checkpoint it shares that embedding with, its target; ignored by any other checkpoint.
    """
    path = Path(path)
    config, tensors, embedding_from = _open_checkpoint(path)
    if embedding_from is not None:
        own = list(tensors)                # dtype=None: the shared embedding takes the stored dtype
        dtype = dtype or (own[0][3].dtype if own else None)
        tensors = itertools.chain(own, _shared_tensors(config, path, base, embedding_from))
    if max_seq_len:
        config = replace(config, max_seq_len=max_seq_len)
    if n_layers is not None:
        if not 1 <= n_layers <= config.n_layers:
            raise ValueError(f"cannot keep {n_layers} blocks of {path}: it has {config.n_layers}; "
                             f"choose 1 to {config.n_layers}")
        dropped = tuple(f"layers.{i}." for i in range(n_layers, config.n_layers))
        tensors = (item for item in tensors if not (item[2] or "").startswith(dropped))   # (file, stored, name, tensor)
        config = replace(config, n_layers=n_layers)
    return _build(config, tensors, path, device, dtype)


# ----------------------------------------------------------------------------------------------
# Writing: ours, Hugging Face's, GGUF
# ----------------------------------------------------------------------------------------------

def _stored_state(model: Llama) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: a tied embedding / LM-head matrix only once."""
    return {name: tensor for name, tensor in model.state_dict().items()
            if not (model.config.tie_embeddings and name == "output.weight")}


def _write_checkpoint(out_dir, tensors: dict[str, torch.Tensor], config_json: dict) -> None:
    """model.safetensors, then config.json LAST: a directory with a config.json is complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)     # an overwrite in progress is no checkpoint
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    replace_atomically(str(out / "model.safetensors"), lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
    replace_atomically(str(out / "config.json"), lambda tmp: Path(tmp).write_text(json.dumps(config_json, indent=2)))


def save_model(model: Llama, out_dir, dtype: torch.dtype | None = None, embedding_from=None) -> None:
    """Save in this project's format; load_model reads it back. dtype: store the weights in it
    (bfloat16: half the bytes of float32), or torch.int8: every matrix as int8 rows with a
    bfloat16 scale per row (quantize.int8_rows, a quarter of the bytes; loaded as float).
    embedding_from: the checkpoint (a draft's target) whose
    token embedding -- and tied head -- this model shares unchanged (a draft cut from its target
    and trained with train.py --freeze-embeddings). Then the embedding is not stored, only the
    target's name and the embedding's sha256 (embedding_digest), and load_model(path, base=target)
    takes it from the target: for SmolLM2 a 4-block draft is 14M parameters of its own beside
    the 28M of the embedding it shares."""
    config_json = {"format": CHECKPOINT_FORMAT, "config": asdict(model.config)}
    tensors = _stored_state(model)
    if embedding_from is not None:
        if not model.config.tie_embeddings:
            raise ValueError("a draft saved without its embedding must tie its head to it (like SmolLM2's)")
        digest = embedding_digest(model.tok_embeddings.weight)
        _, shared, _ = _open_checkpoint(Path(embedding_from), only={"tok_embeddings.weight"})
        if not any(name == "tok_embeddings.weight" and embedding_digest(tensor) == digest for _, _, name, tensor in shared):
            raise ValueError(f"the model's token embedding is not {embedding_from}'s: only a draft trained with "
                             "its target's embedding frozen (train.py --freeze-embeddings) can be saved without it")
        config_json["embedding_from"] = {"checkpoint": Path(embedding_from).name, "sha256": digest}
        tensors = {name: tensor for name, tensor in tensors.items() if name != "tok_embeddings.weight"}
    if dtype == torch.int8:           # matrices as int8 rows and a scale per row (quantize.int8_rows)
        from quantize import int8_rows
        config_json["int8_rows"] = True
        stored = {}
        for name, tensor in tensors.items():
            if tensor.dim() == 2:
                stored[name], stored[name + ".scale"] = int8_rows(tensor)
            else:
                stored[name] = tensor
        tensors = stored
    elif dtype is not None:
        tensors = {name: tensor.to(dtype) for name, tensor in tensors.items()}
    _write_checkpoint(out_dir, tensors, config_json)


def export_hf(model: Llama, out_dir, dtype: torch.dtype | None = None,
              bos_token_id: int | None = None, eos_token_id: int | None = None) -> None:
    """Write a directory that transformers.LlamaForCausalLM.from_pretrained loads (same logits)."""
    dtype = dtype or model.tok_embeddings.weight.dtype
    config_json = config_to_hf(model.config, dtype, bos_token_id, eos_token_id)
    tensors = {}
    for name, tensor in _stored_state(model).items():   # tied: transformers re-ties lm_head itself
        if n_heads := _rope_heads(name, model.config):
            tensor = permute_for_hf(tensor, n_heads)
        tensors[meta_to_hf_name(name)] = tensor.to(dtype)
    _write_checkpoint(out_dir, tensors, config_json)


def export_gguf(model: Llama, tokenizer, path, dtype: torch.dtype = torch.float32, name: str = "draft") -> None:
    """Write `model` as a llama-architecture GGUF file (F32, F16 or BF16 matrices; norms stay F32,
    as llama.cpp's converter keeps them) carrying `tokenizer`'s vocabulary and chat template, so
    llama.cpp can load it, e.g. as the draft (`--model-draft`) of the GGUF target it was trained for."""
    import gguf
    file_types = {torch.float32: (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
                  torch.float16: (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
                  torch.bfloat16: (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16)}
    if dtype not in file_types:
        raise ValueError(f"export_gguf writes float32, float16 or bfloat16, not {dtype}")
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {model.config.vocab_size}; "
                         "export the draft with its target's tokenizer")
    tokenizer_fields = tokenizer.gguf_fields()          # raises for tokenizers GGUF cannot describe
    config, tensor_type = model.config, file_types[dtype][0]

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(name)
        writer.add_file_type(file_types[dtype][1])
        writer.add_context_length(config.max_seq_len)
        writer.add_embedding_length(config.dim)
        writer.add_block_count(config.n_layers)
        writer.add_feed_forward_length(config.ffn_dim)
        writer.add_head_count(config.n_heads)
        writer.add_head_count_kv(config.n_kv_heads)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_vocab_size(config.vocab_size)
        for key, (value, types) in tokenizer_fields.items():
            writer.add_key_value(key, value, types[0], types[-1] if len(types) > 1 else None)
        scaling = config.rope_scaling or {}
        if scaling.get("rope_type") == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(scaling["factor"])
        elif scaling:                           # Llama 3.1 or GGUF factors: store the divisors
            unscaled = rope_frequencies(replace(config, rope_scaling=None))
            writer.add_tensor("rope_freqs.weight", (unscaled / rope_frequencies(config)).numpy())
        for our_name, tensor in _stored_state(model).items():
            array = tensor.detach().float().cpu().numpy()
            if tensor.dim() == 1 or tensor_type == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(_rename(our_name, _inverse(GGUF_NAMES)), array)
            else:
                writer.add_tensor(_rename(our_name, _inverse(GGUF_NAMES)),
                                  gguf.quants.quantize(array, tensor_type), raw_dtype=tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(str(path), write)
