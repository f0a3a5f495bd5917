"""
model.py: the Llama architecture, written once, used both as the TARGET and as the DRAFT.

Speculative decoding needs two models that speak the same vocabulary: a large target (Llama 2
Chat 7B in the paper, SmolLM2-135M-Instruct here) and a tiny draft (the paper's 4-layer
"Llama 2 Chat Drafter 115M"). Both are the same architecture at different sizes:

    tokens (B, T)
      -> tok_embeddings                                        (B, T, dim)
      -> n_layers x [ h = x + Attention(RMSNorm(x))            causal, RoPE, grouped-query KV
                      out = h + FeedForward(RMSNorm(h)) ]      SwiGLU MLP
      -> RMSNorm -> output (the LM head)                       (B, T, vocab_size) logits

Parameter names follow Meta's reference implementation (tok_embeddings, layers.{i}.attention.wq,
feed_forward.w1, attention_norm, ffn_norm, norm, output). Reading and writing checkpoints
(Hugging Face, Meta, GGUF, ours) is checkpoints.py's job; making decoding fast on a GPU
(fused projections, CUDA graphs, torch.compile) is fast_decode.py's.

The KV cache is small and explicit (as in pytorch-labs/gpt-fast): preallocated ("static")
buffers written at the slots the caller names with `input_pos`. Nothing in the cache says how
long the valid prefix is; the caller's position counter does. That makes rolling back a
rejected speculative suffix free: the caller continues writing from the shorter position.
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Configuration and named presets
# ----------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    vocab_size: int = 32000
    dim: int = 4096            # model width ("hidden_size" in Hugging Face configs)
    n_layers: int = 32
    n_heads: int = 32          # query heads
    n_kv_heads: int = 32       # key/value heads; < n_heads means grouped-query attention (GQA)
    ffn_dim: int = 11008       # SwiGLU hidden width ("intermediate_size")
    max_seq_len: int = 4096    # context length: the longest position RoPE tables are built for
    rope_theta: float = 10000.0  # RoPE base (Llama 2: 1e4, Llama 3: 5e5, SmolLM2: 1e5)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False  # output.weight is tok_embeddings.weight (SmolLM2, Llama 3.2 1B/3B)
    # RoPE frequency rescaling for long contexts, or None (see rope_frequencies): Llama 3.1's
    # {factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}, or
    # {"rope_type": "linear", "factor"}, or {"freq_factors": [...]} (a GGUF's rope_freqs tensor).
    rope_scaling: dict | None = None

    def __post_init__(self):
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even: RoPE rotates pairs of features")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


PRESETS: dict[str, ModelConfig] = {
    # The paper's target: Llama 2 (Chat) 7B, and Llama 3 8B for a GQA model with a 128K vocabulary.
    "llama2-7b": ModelConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                             ffn_dim=11008, max_seq_len=4096, rope_theta=10000.0),
    "llama3-8b": ModelConfig(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                             ffn_dim=14336, max_seq_len=8192, rope_theta=500000.0),
    # The paper's draft, "Llama 2 Chat Drafter 115M": 4 layers, dim 1024, 8 heads, MLP 2816.
    "drafter-115m": ModelConfig(vocab_size=32000, dim=1024, n_layers=4, n_heads=8, n_kv_heads=8,
                                ffn_dim=2816, max_seq_len=4096, rope_theta=10000.0),
    # The real chat target of PRESET=smollm2 (its weights come from the GGUF file; this preset
    # is its shape, for benchmarks with random weights) and two drafts for its 49,152-token
    # vocabulary. A draft shares the target's tied embedding layout; the embedding is most of
    # a small draft's parameters, so layers are cheap to add (README: sizes and step costs).
    "smollm2-135m": ModelConfig(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
                                ffn_dim=1536, max_seq_len=8192, rope_theta=100000.0, tie_embeddings=True),
    "smollm2-draft-2l": ModelConfig(vocab_size=49152, dim=256, n_layers=2, n_heads=4, n_kv_heads=4,
                                    ffn_dim=768, max_seq_len=2048, rope_theta=100000.0, tie_embeddings=True),
    "smollm2-draft-4l": ModelConfig(vocab_size=49152, dim=256, n_layers=4, n_heads=4, n_kv_heads=4,
                                    ffn_dim=768, max_seq_len=2048, rope_theta=100000.0, tie_embeddings=True),
    # The embedded synthetic world's models (vocab_size is replaced by the trained tokenizer's).
    # The CPU pair runs the whole recipe in minutes on 2 cores; its target uses GQA so that
    # path is exercised end to end. The GPU pair: a ~24M target and a draft with the paper
    # drafter's layout (4 layers, SwiGLU ~2.75 x dim) at ~1/22 of the target.
    "cpu-target": ModelConfig(vocab_size=1024, dim=192, n_layers=6, n_heads=6, n_kv_heads=2,
                              ffn_dim=512, max_seq_len=512),
    "cpu-draft": ModelConfig(vocab_size=1024, dim=128, n_layers=2, n_heads=4, n_kv_heads=4,
                             ffn_dim=352, max_seq_len=512),
    "gpu-target": ModelConfig(vocab_size=1024, dim=512, n_layers=8, n_heads=8, n_kv_heads=2,
                              ffn_dim=1408, max_seq_len=1024),
    "gpu-draft": ModelConfig(vocab_size=1024, dim=128, n_layers=4, n_heads=4, n_kv_heads=4,
                             ffn_dim=352, max_seq_len=1024),
    # For unit tests: tiny and fast.
    "test": ModelConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        ffn_dim=64, max_seq_len=64),
}


def get_config(preset: str, **overrides) -> ModelConfig:
    """A named preset, optionally with some fields replaced (e.g. vocab_size=tokenizer's)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides)


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (a tied embedding/LM-head matrix counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ----------------------------------------------------------------------------------------------
# RMSNorm and rotary position embeddings (RoPE)
# ----------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """RMSNorm(x) = x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring or bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (bf16 has too few mantissa bits for a mean of squares), then cast
        # back before the gain, exactly as Meta's and Hugging Face's Llama do.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_frequencies(config: ModelConfig) -> torch.Tensor:
    """theta_i = rope_theta^(-2i/head_dim), i = 0 .. head_dim/2 - 1 (float32, (head_dim/2,)),
    divided by the long-context rescaling factors if the config has any."""
    head_dim = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq
    if "freq_factors" in scaling:          # precomputed per frequency (llama.cpp's rope_freqs)
        return inv_freq / torch.tensor(scaling["freq_factors"], dtype=torch.float32)
    if scaling.get("rope_type") == "linear":   # positions / factor, i.e. every frequency / factor
        return inv_freq / scaling["factor"]
    # Llama 3.1: keep high frequencies (short wavelengths), divide low frequencies by `factor`,
    # and interpolate smoothly in between, so an 8K-trained model reads 128K.
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(wavelen < old_len / high, inv_freq,
                       torch.where(wavelen > old_len / low, inv_freq / factor, interpolated))


def rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(m * theta_i) and sin(m * theta_i) for every position m < max_seq_len: (max_seq_len, head_dim/2)."""
    positions = torch.arange(config.max_seq_len).float()
    angles = torch.outer(positions, rope_frequencies(config))     # (S, head_dim/2): m * theta_i
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each feature pair (x_2i, x_2i+1) of every head by the angle m * theta_i.

    x: (B, H, T, head_dim); cos, sin: (B or 1, 1, T, head_dim/2).
    Meta's layout: the pairs are ADJACENT features (Hugging Face stores q/k rows permuted so it
    can rotate halves instead; checkpoints.py undoes that permutation on loading).
    Because q at position m is rotated by m*theta and k at position n by n*theta, their dot
    product depends only on m - n: attention sees relative positions.
    """
    pairs = x.float().unflatten(-1, (-1, 2))                      # (B, H, T, head_dim/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin,                # [cos -sin] [even]
                           even * sin + odd * cos), dim=-1)       # [sin  cos] [odd ]
    return rotated.flatten(-2).type_as(x)                         # (B, H, T, head_dim)


# ----------------------------------------------------------------------------------------------
# The KV cache
# ----------------------------------------------------------------------------------------------

class KVCache:
    """Preallocated keys and values: k[i] and v[i], each (B, n_kv_heads, max_len, head_dim), for
    layer i. Llama.forward hands each layer its pair, and the layer's Attention writes the new
    keys and values into them in place at the slots `input_pos` (torch.compile keeps it in place).

    `start[b]` is the first real slot of row b. Batched generation of prompts of different
    lengths LEFT-pads them to a common length, so that every row's next token goes into the
    same slot; slots before start[b] hold padding, are never attended to, and RoPE positions
    are counted from start[b] (so a padded prompt sees exactly what an unpadded one would).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 start: torch.Tensor | None = None):
        shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.start = (torch.zeros(batch_size, dtype=torch.long, device=device) if start is None
                      else start.to(device=device, dtype=torch.long))
        self.max_len, self.dtype = max_len, dtype

    def attention_mask(self, input_pos: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, max_len) bool: may the query at slot input_pos[t] of row b see key slot j?

        Yes iff j <= input_pos[t] (causal) and j >= start[b] (not padding). A padding query has
        no such key, and a softmax over nothing is 0/0 (NaN on some attention backends), which
        would leak into later layers through its values; so every query may see its own slot.
        """
        slots = torch.arange(self.max_len, device=input_pos.device)            # (S,)
        query = input_pos[:, None]                                              # (T, 1)
        causal = slots[None, :] <= query                                        # (T, S)
        real = slots[None, None, :] >= self.start[:, None, None]                # (B, 1, S)
        return ((causal & real) | (slots[None, :] == query)).unsqueeze(1)      # (B, 1, T, S)

    def positions(self, input_pos: torch.Tensor) -> torch.Tensor:
        """RoPE position of each new token: its slot minus the row's first real slot. (B, T)"""
        return (input_pos[None, :] - self.start[:, None]).clamp(min=0)


# ----------------------------------------------------------------------------------------------
# The transformer block
# ----------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Causal self-attention with RoPE and grouped-query attention.

    GQA: n_heads query heads share n_kv_heads key/value heads (each K/V head serves
    n_heads / n_kv_heads query heads), which shrinks the KV cache by that factor.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.wqkv = None   # [wq; wk; wv] stacked into one matrix by fast_decode.fuse_projections

    def forward(self, x, cos, sin, kv_cache=None, input_pos=None, mask=None):
        B, T, _ = x.shape
        if self.wqkv is None:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        else:   # the same three products as one (fast_decode.fuse_projections)
            q, k, v = F.linear(x, self.wqkv).split(
                [self.wq.out_features, self.wk.out_features, self.wv.out_features], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)        # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)     # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)     # (B, Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is None:
            # Training / scoring a whole sequence: plain causal attention over these T tokens.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            # Decoding: store the new keys/values at their slots (an in-place write into this
            # layer's cache tensors), then attend over the whole cache; `mask` hides the future,
            # the padding and any stale slots past the current position.
            k_cache, v_cache = kv_cache                                              # (B, Hkv, S, hd)
            k_cache[:, :, input_pos] = k
            v_cache[:, :, input_pos] = v
            out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=True)
        # softmax(q k^T / sqrt(hd)) v per head, heads concatenated, then the output projection
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))                       # (B, T, dim)


class FeedForward(nn.Module):
    """SwiGLU MLP: FFN(x) = w2( silu(w1 x) * (w3 x) )."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)   # gate ("gate_proj")
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)   # up   ("up_proj")
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)   # down ("down_proj")
        self.w13 = None    # [w1; w3] stacked into one matrix by fast_decode.fuse_projections

    def forward(self, x):
        if self.w13 is None:
            gate, up = self.w1(x), self.w3(x)
        else:   # both products as one (fast_decode.fuse_projections)
            gate, up = F.linear(x, self.w13).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, kv_cache=None, input_pos=None, mask=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, kv_cache, input_pos, mask)  # pre-norm residual
        return h + self.feed_forward(self.ffn_norm(h))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

class Llama(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # RoPE tables stay float32 whatever dtype the weights are cast to, so they are a plain
        # attribute, not a buffer (model.to(torch.bfloat16) would round buffers); Meta's
        # reference does the same with its freqs_cis. forward() moves them to the input's device.
        self.rope_cos, self.rope_sin = rope_tables(config)
        self.apply(self._init_weights)
        # Residual projections get a smaller init so the residual stream's variance does not
        # grow with depth (GPT-2's scheme, as in nanoGPT).
        for name, param in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    def new_cache(self, batch_size: int, max_len: int, start: torch.Tensor | None = None) -> KVCache:
        """A cache on this model's device and dtype for `batch_size` rows of `max_len` slots."""
        weight = self.tok_embeddings.weight
        return KVCache(self.config, batch_size, max_len, weight.device, weight.dtype, start)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None,
                input_pos: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for tokens (B, T); with `keep`, (N,) flat indices b * T + t
        of positions, only the logits of those positions, (N, vocab_size).

        Without a cache: a plain causal pass over positions 0..T-1 (training, scoring).
        With a cache: the tokens occupy slots input_pos (a (T,) LongTensor, the same slots for
        every row); their keys/values are written there and they attend to all earlier slots.
        logits[:, t] is the distribution of the token that FOLLOWS tokens[:, t].
        Training keeps only the positions its loss uses (in distillation, the answers): the
        head, the largest matrix of a small model with a big vocabulary, then runs on those
        rows alone.
        """
        if (cache is None) != (input_pos is None):
            raise ValueError("pass both `cache` and `input_pos` (decoding) or neither (a full pass)")
        B, T = tokens.shape
        if self.rope_cos.device != tokens.device:
            self.rope_cos, self.rope_sin = self.rope_cos.to(tokens.device), self.rope_sin.to(tokens.device)
        if cache is None:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds max_seq_len={self.config.max_seq_len}")
            cos, sin, mask = self.rope_cos[:T], self.rope_sin[:T], None         # (T, hd/2)
        else:
            cos, sin, mask = self.cache_inputs(cache, input_pos)                # (B, T, hd/2) x2, (B, 1, T, S)
        cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)                          # broadcast over heads
        x = self.tok_embeddings(tokens)                                         # (B, T, dim)
        kv_caches = zip(cache.k, cache.v) if cache is not None else [None] * len(self.layers)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x = layer(x, cos, sin, kv_cache, input_pos, mask)
        if keep is not None:
            x = x.flatten(0, 1)[keep]                                           # (N, dim)
        return self.output(self.norm(x))                                        # (B, T, vocab_size) or (N, vocab_size)

    def cache_inputs(self, cache: KVCache, input_pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What every block needs to decode the tokens at the cache slots input_pos (T,): their
        RoPE angles cos and sin, (B, T, head_dim/2) each, and the attention mask (B, 1, T, S).
        A method of its own so that fast_decode.compile_blocks can compile it like a block:
        eagerly each of its small operations is a kernel of its own, at every model call.

        The mask is ADDITIVE (0 where a key may be seen, -inf where not, in the cache's dtype),
        made once per call from KVCache.attention_mask's booleans: given a boolean mask,
        scaled_dot_product_attention converts it to this form itself, in every layer's call."""
        positions = cache.positions(input_pos)                                  # (B, T)
        allowed = cache.attention_mask(input_pos)                               # (B, 1, T, S) bool
        mask = torch.zeros(allowed.shape, dtype=cache.dtype, device=allowed.device)
        return self.rope_cos[positions], self.rope_sin[positions], mask.masked_fill_(~allowed, float("-inf"))

    def prefill(self, tokens: torch.Tensor, cache: KVCache, input_pos: torch.Tensor) -> None:
        """Write the keys and values of a prompt's tokens (B, T) into the cache slots input_pos,
        computing no logits: a decoder reads only the distribution after the newest token, which
        its first step computes, so the head (for SmolLM2 a 49,152 x 576 matrix, the largest
        one of a small model) would run over every prompt position for nothing."""
        self(tokens, cache, input_pos, keep=tokens.new_empty(0))
