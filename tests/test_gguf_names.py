"""GGUF tensor names and metadata keys spelled out here, not taken from checkpoints.GGUF_NAMES
(issue 38: the other GGUF tests build their files through the project's own name table, so a
wrong table, e.g. ffn_gate and ffn_up swapped, round-trips through itself and passes).

The file is written with the `gguf` package directly, with llama.cpp's names for a "llama"
model (gguf-py's constants.py, MODEL_TENSOR -> TENSOR_NAMES) and a different random tensor
behind every name, so a swap of any two same-shaped tensors is caught.

The q/k rows. Our RoPE (model.apply_rope) rotates neighbouring features (2j, 2j+1), as Meta's
reference does. Hugging Face's checkpoints reorder each head's q/k rows for their rotate-half
RoPE, and llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute) reorders them back,
so a GGUF's attn_q / attn_k rows are in Meta's order: the very rows our wq / wk hold. Hence
the expected wq below is attn_q exactly as written, not permuted.
"""

import gguf
import numpy as np
import torch

from checkpoints import export_gguf, load_model
from model import Llama, ModelConfig
from tokenizer import gpt2_byte_alphabet, load_tokenizer

N_LAYERS = 2
# llama.cpp name -> where the tensor belongs in our Llama (model.py's Meta-style names).
PER_LAYER = {
    "blk.{i}.attn_norm.weight": "layers.{i}.attention_norm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.attention.wq.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.attention.wk.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.attention.wv.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.attention.wo.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.ffn_norm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.feed_forward.w1.weight",    # silu(w1 x): the gate
    "blk.{i}.ffn_up.weight": "layers.{i}.feed_forward.w3.weight",      # * (w3 x): the up projection
    "blk.{i}.ffn_down.weight": "layers.{i}.feed_forward.w2.weight",    # w2(...): back to dim
}
NAMES = {"token_embd.weight": "tok_embeddings.weight",
         **{gguf_name.format(i=i): ours.format(i=i) for i in range(N_LAYERS) for gguf_name, ours in PER_LAYER.items()},
         "output_norm.weight": "norm.weight",
         "output.weight": "output.weight"}

# A vocabulary of the 256 bytes and one control token (the gpt2 byte-level layout).
TOKENS = ["<|endoftext|>"] + sorted(gpt2_byte_alphabet(), key=gpt2_byte_alphabet().get)
CONFIG = ModelConfig(vocab_size=len(TOKENS), dim=16, n_layers=N_LAYERS, n_heads=4, n_kv_heads=2, ffn_dim=24,
                     max_seq_len=32, rope_theta=50000.0, norm_eps=1e-5, tie_embeddings=False)
METADATA = {  # the llama metadata keys, typed, and their values for CONFIG
    "llama.block_count": CONFIG.n_layers, "llama.context_length": CONFIG.max_seq_len,
    "llama.embedding_length": CONFIG.dim, "llama.feed_forward_length": CONFIG.ffn_dim,
    "llama.attention.head_count": CONFIG.n_heads, "llama.attention.head_count_kv": CONFIG.n_kv_heads,
    "llama.rope.dimension_count": CONFIG.head_dim}


def shapes() -> dict[str, tuple[int, ...]]:
    """torch (out, in) shape of each GGUF tensor, written from the architecture, not from a Llama."""
    c, kv = CONFIG, CONFIG.n_kv_heads * CONFIG.head_dim
    per_layer = {"attn_norm": (c.dim,), "attn_q": (c.dim, c.dim), "attn_k": (kv, c.dim), "attn_v": (kv, c.dim),
                 "attn_output": (c.dim, c.dim), "ffn_norm": (c.dim,), "ffn_gate": (c.ffn_dim, c.dim),
                 "ffn_up": (c.ffn_dim, c.dim), "ffn_down": (c.dim, c.ffn_dim)}
    out = {"token_embd.weight": (c.vocab_size, c.dim), "output_norm.weight": (c.dim,),
           "output.weight": (c.vocab_size, c.dim)}
    out.update({f"blk.{i}.{name}.weight": shape for i in range(c.n_layers) for name, shape in per_layer.items()})
    return out


def hand_tensors() -> dict[str, np.ndarray]:
    """A different random float32 array behind every GGUF name."""
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes().items()}


def write_hand_gguf(path, tensors: dict[str, np.ndarray]) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")          # writes general.architecture = "llama"
    for key, value in METADATA.items():
        writer.add_uint32(key, value)
    writer.add_float32("llama.rope.freq_base", CONFIG.rope_theta)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", CONFIG.norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3] + [1] * 256)                # 3: a control token
    writer.add_token_merges(["Ġ t"])                      # a reader wants the list; "Ġt" is no token here
    writer.add_eos_token_id(0)
    for name, array in tensors.items():
        writer.add_tensor(name, array)                     # numpy (out, in): gguf stores it innermost first
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_the_typed_names_cover_every_parameter_once():
    """Guards the test itself: the typed table names each of our parameters exactly once."""
    assert sorted(NAMES.values()) == sorted(name for name, _ in Llama(CONFIG).named_parameters())
    assert len(NAMES) == 3 + 9 * N_LAYERS


def test_a_hand_written_gguf_loads_every_tensor_into_its_parameter(tmp_path):
    """Guards load_model's GGUF name table: each llama.cpp name, typed here, must land in our
    parameter of that role (a swapped ffn_gate / ffn_up, attn_q / attn_k... puts other values
    there), with q/k rows unpermuted, and the metadata must become the config."""
    tensors = hand_tensors()
    write_hand_gguf(tmp_path / "hand.gguf", tensors)
    model = load_model(tmp_path / "hand.gguf")
    assert (model.config.vocab_size, model.config.dim, model.config.n_layers, model.config.n_heads,
            model.config.n_kv_heads, model.config.ffn_dim, model.config.max_seq_len) == (257, 16, 2, 4, 2, 24, 32)
    assert model.config.rope_theta == 50000.0 and not model.config.tie_embeddings
    parameters = dict(model.named_parameters())
    for gguf_name, ours in NAMES.items():
        landed = torch.equal(parameters[ours].detach(), torch.from_numpy(tensors[gguf_name]))
        assert landed, f"{gguf_name} did not land in {ours}"


def test_export_gguf_writes_llama_cpp_names_and_metadata(tmp_path):
    """Guards export_gguf's names: a model whose parameters are set here by the typed table is
    exported; the file, read with gguf.GGUFReader, must hold exactly the typed names, each with
    the values of its parameter, and the llama metadata keys."""
    tensors = hand_tensors()
    write_hand_gguf(tmp_path / "vocab.gguf", tensors)          # also a source of the tokenizer
    model = Llama(CONFIG).eval()
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for gguf_name, ours in NAMES.items():
            parameters[ours].copy_(torch.from_numpy(tensors[gguf_name]))
    export_gguf(model, load_tokenizer(str(tmp_path / "vocab.gguf")), tmp_path / "out.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "out.gguf"))
    written = {t.name: t for t in reader.tensors}
    assert sorted(written) == sorted(NAMES)
    for name, tensor in written.items():
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        data = np.asarray(tensor.data).reshape(tensors[name].shape)
        np.testing.assert_array_equal(data, tensors[name], err_msg=f"{name} holds another tensor's values")
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    for key, value in METADATA.items():
        assert int(fields[key].parts[-1][0]) == value, key
    assert float(fields["llama.rope.freq_base"].parts[-1][0]) == CONFIG.rope_theta
