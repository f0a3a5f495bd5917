"""Check model.py's checkpoint code against the real transformers LlamaForCausalLM.

Run from the repository root, in a venv that also has transformers installed (it is not a
dependency of this project):  PYTHONPATH=. python results/verify_hf.py
(1) HF model -> save_pretrained (safetensors / .bin, single / sharded) -> our load_model
(2) our Llama -> export_hf -> LlamaForCausalLM.from_pretrained
and compares float32 logits on random tokens (max relative error must be < 1e-4).
"""
import os
import tempfile

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import checkpoints as ours
from model import Llama

torch.manual_seed(0)
TOL = 1e-4

HF_CONFIGS = {
    "llama2-mha": dict(vocab_size=257, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
    "llama3-gqa-tied": dict(vocab_size=256, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                            rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True),
    "llama3.1-scaled": dict(vocab_size=256, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                            rms_norm_eps=1e-5, tie_word_embeddings=False,
                            rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                                 low_freq_factor=1.0, high_freq_factor=4.0,
                                                 original_max_position_embeddings=64)),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the largest logit error relative to the logits' scale."""
    return ((a - b).abs().max() / b.abs().max()).item()


def randomize(module: torch.nn.Module) -> None:
    """Random weights everywhere, norms included (their default of ones would hide mix-ups)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1)


def hf_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(input_ids=tokens).logits


def our_logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def main() -> None:
    print("transformers", transformers.__version__, "torch", torch.__version__)
    worst = 0.0
    tokens = torch.randint(0, 256, (2, 200))   # past original_max_position_embeddings=64
    for label, kwargs in HF_CONFIGS.items():
        hf_config = LlamaConfig(**kwargs)
        hf_model = LlamaForCausalLM(hf_config).float().eval()
        randomize(hf_model)
        if hf_config.tie_word_embeddings:
            assert hf_model.lm_head.weight is hf_model.model.embed_tokens.weight
        t = tokens[:, : min(200, kwargs["max_position_embeddings"])]
        reference = hf_logits(hf_model, t)
        # (1) HF -> ours
        for fmt, save_kwargs in {"safetensors": {}, "bin": dict(safe_serialization=False),
                                 "safetensors-sharded": dict(max_shard_size="40KB"),
                                 "bin-sharded": dict(safe_serialization=False, max_shard_size="40KB")}.items():
            with tempfile.TemporaryDirectory() as d:
                hf_model.save_pretrained(d, **save_kwargs)
                files = sorted(os.listdir(d))
                loaded = ours.load_model(d, dtype=torch.float32)
                assert (loaded.config.rope_scaling is not None) == ("rope_parameters" in kwargs)
                err = rel_err(our_logits(loaded, t), reference)
                worst = max(worst, err)
                shards = sum(f.endswith((".safetensors", ".bin")) for f in files)
                print(f"HF->ours  {label:16s} {fmt:20s} files={shards:2d}  max rel err {err:.2e}")
                assert err < TOL, (label, fmt, err)
        # negative control: leaving HF's q/k row order in place must break the match
        with torch.no_grad():
            for layer in loaded.layers:
                attn = layer.attention
                attn.wq.weight.copy_(ours.permute_for_hf(attn.wq.weight, attn.n_heads))
                attn.wk.weight.copy_(ours.permute_for_hf(attn.wk.weight, attn.n_kv_heads))
        print(f"  control: without undoing the permutation, rel err {rel_err(our_logits(loaded, t), reference):.2e}")
        # (2) ours -> HF
        config = ours.config_from_hf(hf_config.to_dict())
        model = Llama(config).eval()
        randomize(model)
        with tempfile.TemporaryDirectory() as d:
            ours.export_hf(model, d)
            reloaded = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
            if config.tie_embeddings:
                assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
            err = rel_err(hf_logits(reloaded, t), our_logits(model, t))
            worst = max(worst, err)
            print(f"ours->HF  {label:16s} {'export_hf':20s}           max rel err {err:.2e}")
            assert err < TOL, (label, "export", err)
    print(f"worst relative error {worst:.2e} (< {TOL}): OK")


if __name__ == "__main__":
    main()
