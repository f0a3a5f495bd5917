"""Check this project's checkpoint code against the real transformers LlamaForCausalLM.

    python tools/verify_hf.py

Run it in a venv that also has transformers installed (not a dependency of this project):
(1) HF model -> save_pretrained (safetensors / .bin, single / sharded) -> our load_model
(2) our Llama -> export_hf -> LlamaForCausalLM.from_pretrained
and compares float32 logits on random tokens (max relative error must be < 1e-4).
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules

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


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the largest logit error relative to the logits' scale."""
    return ((a - b).abs().max() / b.abs().max()).item()


def randomize(module) -> None:
    """Random weights everywhere, norms included (their default of ones would hide mix-ups)."""
    import torch
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1)


def hf_logits(hf_model, tokens):
    import torch
    with torch.no_grad():
        return hf_model(input_ids=tokens).logits


def our_logits(model, tokens):
    import torch
    with torch.no_grad():
        return model(tokens)


def hf_row_order(w, n_heads: int):
    """wq or wk rows from Meta's RoPE pairing to Hugging Face's (what load_model undoes)."""
    rows, dim = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import torch                                  # after the flags: --help needs neither torch nor transformers
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from checkpoints import export_hf, load_model
    from model import Llama

    torch.manual_seed(0)
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
                loaded = load_model(d, dtype=torch.float32)
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
                attn.wq.weight.copy_(hf_row_order(attn.wq.weight, attn.n_heads))
                attn.wk.weight.copy_(hf_row_order(attn.wk.weight, attn.n_kv_heads))
        print(f"  control: without undoing the permutation, rel err {rel_err(our_logits(loaded, t), reference):.2e}")
        # (2) ours -> HF
        config = loaded.config                    # ours, as load_model read it from the HF directory
        model = Llama(config).eval()
        randomize(model)
        with tempfile.TemporaryDirectory() as d:
            export_hf(model, d)
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
