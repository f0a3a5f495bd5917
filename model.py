"""
model.py: the Llama architecture, written once, used both as the TARGET and as the DRAFT.

Speculative decoding needs two models that speak the same vocabulary: a large target (Llama 2
Chat 7B in the paper) and a tiny draft (the paper's "Llama 2 Chat Drafter 115M": 4 layers,
dim 1024). Both are the same architecture at different sizes, so this file defines it once:

    tokens (B, T)
      -> tok_embeddings                                        (B, T, dim)
      -> n_layers x [ h = x + Attention(RMSNorm(x))            causal, RoPE, grouped-query KV
                      out = h + FeedForward(RMSNorm(h)) ]      SwiGLU MLP
      -> RMSNorm -> output (the LM head)                       (B, T, vocab_size) logits

Parameter names follow Meta's reference implementation (tok_embeddings, layers.{i}.attention.wq,
feed_forward.w1, attention_norm, ffn_norm, norm, output), so a Meta checkpoint loads by name and
Hugging Face checkpoints load through a fixed renaming table and a q/k row permutation (the last
section, "Checkpoints": load_model, save_model, export_hf).

The KV cache is small and explicit (as in pytorch-labs/gpt-fast): a preallocated ("static")
buffer per layer, written at the slots the caller names with `input_pos`. Nothing in the cache
says how long the valid prefix is; the caller's position counter does. That makes rolling back
a rejected speculative suffix free: the caller simply continues writing from the shorter
position, and the stale slots beyond it are (a) hidden by the causal mask and (b) overwritten
before anyone can see them. Static shapes also let a GPU decode step be captured as a CUDA graph.
"""

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from data import replace_atomically


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
    rope_theta: float = 10000.0  # RoPE base (Llama 2: 1e4, Llama 3: 5e5)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False  # output.weight is tok_embeddings.weight (Llama 3.2 1B/3B)
    # Llama 3.1's long-context RoPE rescaling, or None. Keys: factor, low_freq_factor,
    # high_freq_factor, original_max_position_embeddings (the names Hugging Face uses).
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
    # The paper's target: Llama 2 (Chat) 7B.
    "llama2-7b": ModelConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                             ffn_dim=11008, max_seq_len=4096, rope_theta=10000.0),
    # Llama 3 8B, for readers pointing the recipe at a GQA model with a 128K vocabulary.
    "llama3-8b": ModelConfig(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                             ffn_dim=14336, max_seq_len=8192, rope_theta=500000.0),
    # The paper's draft, "Llama 2 Chat Drafter 115M": 4 layers, dim 1024, 8 heads, MLP 2816,
    # the Llama 2 tokenizer and context. ~117M parameters counting both embedding matrices.
    "drafter-115m": ModelConfig(vocab_size=32000, dim=1024, n_layers=4, n_heads=8, n_kv_heads=8,
                                ffn_dim=2816, max_seq_len=4096, rope_theta=10000.0),
    # The embedded default's models (vocab_size is replaced by the trained tokenizer's size).
    # The CPU pair is sized so the whole recipe runs in minutes on 2 cores; the target uses GQA
    # so that path is exercised end to end.
    "cpu-target": ModelConfig(vocab_size=1024, dim=192, n_layers=6, n_heads=6, n_kv_heads=2,
                              ffn_dim=512, max_seq_len=512),
    "cpu-draft": ModelConfig(vocab_size=1024, dim=128, n_layers=2, n_heads=4, n_kv_heads=4,
                             ffn_dim=352, max_seq_len=512),
    # The single-GPU experiment: a ~24M-parameter target, and a draft with the paper drafter's
    # layout (4 layers, SwiGLU ~2.75 x dim) scaled down to ~1/30 of the target, near the
    # paper's 1.64%.
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
    """theta_i = rope_theta^(-2i/head_dim), i = 0 .. head_dim/2 - 1 (float32, (head_dim/2,))."""
    head_dim = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    scaling = config.rope_scaling
    if scaling:
        # Llama 3.1: keep high frequencies (short wavelengths), divide low frequencies by
        # `factor`, and interpolate smoothly in between, so an 8K-trained model reads 128K.
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen < old_len / high, inv_freq,
                               torch.where(wavelen > old_len / low, inv_freq / factor, interpolated))
    return inv_freq


def rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(m * theta_i) and sin(m * theta_i) for every position m < max_seq_len: (max_seq_len, head_dim/2)."""
    positions = torch.arange(config.max_seq_len).float()
    angles = torch.outer(positions, rope_frequencies(config))     # (S, head_dim/2): m * theta_i
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each feature pair (x_2i, x_2i+1) of every head by the angle m * theta_i.

    x: (B, H, T, head_dim); cos, sin: (B or 1, 1, T, head_dim/2).
    Meta's layout: the pairs are ADJACENT features (Hugging Face stores q/k rows permuted so it
    can rotate halves instead; load_model undoes that permutation).
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
    """Preallocated keys and values: one (B, n_kv_heads, max_len, head_dim) tensor per layer.

    One tensor per layer rather than one (n_layers, ...) tensor, so that each layer's update is an
    in-place write into a whole tensor, the form torch.compile handles best: a compiled 7B
    decode step on an H100 took 7.77 ms with one big tensor and 6.30 ms with one per layer
    (BENCHMARKS.md; two runs on two days).

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
        self.max_len = max_len

    def update(self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write this step's k, v (B, n_kv_heads, T, head_dim) at slots input_pos; return the whole layer."""
        self.k[layer][:, :, input_pos] = k    # index_put_, which torch.compile updates in place
        self.v[layer][:, :, input_pos] = v
        return self.k[layer], self.v[layer]                       # (B, n_kv_heads, max_len, head_dim)

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

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads = layer, config.n_heads, config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.wqkv = None   # [wq; wk; wv] as one matrix, once Llama.fuse_projections() is called

    def forward(self, x, cos, sin, cache=None, input_pos=None, mask=None):
        B, T, _ = x.shape
        if self.wqkv is None:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        else:   # the same three products as ONE matrix-vector product (Llama.fuse_projections)
            q, k, v = F.linear(x, self.wqkv).split(
                [self.wq.out_features, self.wk.out_features, self.wv.out_features], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)        # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)     # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)     # (B, Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            # Training / scoring a whole sequence: plain causal attention over these T tokens.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            # Decoding: store the new keys/values, then attend over the whole cache; `mask`
            # hides the future, the padding and any stale slots past the current position.
            k, v = cache.update(self.layer, input_pos, k, v)                         # (B, Hkv, S, hd)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        # softmax(q k^T / sqrt(hd)) v per head, heads concatenated, then the output projection
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))                       # (B, T, dim)


class FeedForward(nn.Module):
    """SwiGLU MLP: FFN(x) = w2( silu(w1 x) * (w3 x) )."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)   # gate ("gate_proj")
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)   # up   ("up_proj")
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)   # down ("down_proj")
        self.w13 = None    # [w1; w3] as one matrix, once Llama.fuse_projections() is called

    def forward(self, x):
        if self.w13 is None:
            gate, up = self.w1(x), self.w3(x)
        else:   # both products as ONE (Llama.fuse_projections)
            gate, up = F.linear(x, self.w13).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, cache=None, input_pos=None, mask=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, input_pos, mask)  # pre-norm residual
        return h + self.feed_forward(self.ffn_norm(h))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

class Llama(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # RoPE tables stay float32 whatever dtype the weights are cast to, so they are a plain
        # attribute, not a buffer (model.to(torch.bfloat16) would round buffers); Meta's
        # reference does the same with its freqs_cis. forward() moves them to the input's device.
        self.rope_cos, self.rope_sin = rope_tables(config)
        self.graphs = None   # CUDA graphs of decode steps, once enable_cuda_graphs() is called
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

    def new_cache(self, batch_size: int, max_len: int, start: torch.Tensor | None = None) -> KVCache:
        """A cache on this model's device and dtype for `batch_size` rows of at least `max_len` slots."""
        weight = self.tok_embeddings.weight
        if self.graphs is None:
            return KVCache(self.config, batch_size, max_len, weight.device, weight.dtype, start)
        # CUDA graphs replay fixed addresses, so graphs recorded for one cache only serve that
        # cache. A graphed model therefore keeps ONE cache and hands it out again to every call
        # that fits in it (re-recording per call would cost more than it saves). Its length is
        # rounded up to 64 slots so prompts of similar lengths share it; slots past a call's
        # positions are masked (see KVCache), and `start` is overwritten in place because the
        # recorded graphs read it from its address.
        cache = self.graphs.get("cache")
        if cache is None or cache.start.numel() != batch_size or cache.max_len < max_len:
            slots = max(max_len, min(-(-max_len // 64) * 64, self.config.max_seq_len))
            cache = KVCache(self.config, batch_size, slots, weight.device, weight.dtype)
            self.graphs["cache"] = cache
        if start is None:
            cache.start.zero_()
        else:
            cache.start.copy_(start)
        return cache

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None,
                input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for tokens (B, T).

        Without a cache: a plain causal pass over positions 0..T-1 (training, scoring).
        With a cache: the tokens occupy slots input_pos (a (T,) LongTensor, the same slots for
        every row); their keys/values are written there and they attend to all earlier slots.
        logits[:, t] is the distribution of the token that FOLLOWS tokens[:, t].
        """
        if (cache is None) != (input_pos is None):
            raise ValueError("pass both `cache` and `input_pos` (decoding) or neither (a full pass)")
        if self.graphs is not None and cache is not None and tokens.shape[1] <= self.graphs["max_tokens"]:
            return self.replay_cuda_graph(tokens, cache, input_pos)
        return self.forward_eager(tokens, cache, input_pos)

    def forward_eager(self, tokens, cache=None, input_pos=None):
        B, T = tokens.shape
        if self.rope_cos.device != tokens.device:
            self.rope_cos, self.rope_sin = self.rope_cos.to(tokens.device), self.rope_sin.to(tokens.device)
        if cache is None:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds max_seq_len={self.config.max_seq_len}")
            cos, sin, mask = self.rope_cos[:T], self.rope_sin[:T], None         # (T, hd/2)
        else:
            positions = cache.positions(input_pos)                              # (B, T)
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]        # (B, T, hd/2)
            mask = cache.attention_mask(input_pos)                              # (B, 1, T, S)
        cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)                          # broadcast over heads
        x = self.tok_embeddings(tokens)                                         # (B, T, dim)
        for layer in self.layers:
            x = layer(x, cos, sin, cache, input_pos, mask)
        return self.output(self.norm(x))                                        # (B, T, vocab_size)

    # --- Fast decoding on a GPU (opt-in): fused projections, CUDA graphs, torch.compile -------
    # A decode step of a 7B model launches hundreds of small kernels; at batch 1 each is so short that
    # the CPU cannot launch them as fast as the GPU runs them, and the GPU idles. A CUDA graph
    # records the whole step's kernels once and replays them with ONE launch. It replays the
    # exact recorded memory addresses, which is why the KV cache is preallocated (static): the
    # step reads its inputs from, and writes its logits to, fixed buffers. Long inputs (a
    # prompt's prefill) are not worth a graph and run eagerly.

    @torch.no_grad()
    def fuse_projections(self) -> "Llama":
        """Store wq, wk, wv of every layer as row blocks of ONE matrix, and w1, w3 likewise.

        At batch 1 each projection is a matrix-vector product that reads its whole matrix, so
        one product over the stacked matrix reads the same bytes with one kernel instead of
        three (two): fewer and larger kernels, which decoding needs (BENCHMARKS.md measures it).
        The parameters keep their names and shapes, now as views into the stacked matrix, so
        state_dict(), save_model and export_hf see the usual Llama weights. For inference:
        call it after .to(device, dtype) (which would copy the views apart again).
        """
        def stack(linears: list[nn.Linear]) -> torch.Tensor:
            stacked = torch.cat([linear.weight for linear in linears])          # (sum of outs, in)
            first = 0
            for linear in linears:
                rows = linear.out_features
                linear.weight = nn.Parameter(stacked[first: first + rows], requires_grad=False)
                first += rows
            return stacked

        for layer in self.layers:
            attention, feed_forward = layer.attention, layer.feed_forward
            attention.wqkv = stack([attention.wq, attention.wk, attention.wv])
            feed_forward.w13 = stack([feed_forward.w1, feed_forward.w3])
        return self

    def enable_cuda_graphs(self, max_tokens: int = 16, compile: bool = False) -> "Llama":
        """Replay decode steps of at most `max_tokens` new tokens from CUDA graphs. With
        compile=True the step is first fused by torch.compile (fewer, larger kernels), then
        recorded. The logits a replayed step returns are overwritten by the next step."""
        if not torch.cuda.is_available():
            raise ValueError("CUDA graphs need a CUDA GPU; run without --cuda-graphs on this machine")
        # Move the RoPE tables now: moving them inside the first recorded step would make
        # torch.compile recompile (and so run code) while a graph is being recorded.
        device = self.tok_embeddings.weight.device
        self.rope_cos, self.rope_sin = self.rope_cos.to(device), self.rope_sin.to(device)
        step = torch.compile(self.forward_eager, fullgraph=True, dynamic=False) if compile else self.forward_eager
        if compile:
            # torch.compile makes one version of forward_eager per model and input shape, and by
            # default refuses a 9th (an error with fullgraph=True). The count is per function,
            # shared by every model: a target and a draft with decode, verify and short-prompt
            # shapes together need more, so allow one per recorded graph.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.graphs = {"max_tokens": max_tokens, "step": step, "recorded": {}}
        return self

    @torch.no_grad()
    def replay_cuda_graph(self, tokens, cache, input_pos):
        recorded = self.graphs["recorded"]
        key = (id(cache), tuple(tokens.shape))
        if key not in recorded:
            # A new cache: forget graphs of older caches (holding the cache object in the entry
            # keeps its memory, and so its id, alive while its graphs exist).
            for old in [k for k, entry in recorded.items() if entry[0] is not cache]:
                del recorded[old]
            static_tokens, static_pos = tokens.clone(), input_pos.clone()
            # Warm up on a side stream (required before capture). Running the step on the real
            # inputs is harmless: it writes the same keys/values to the same slots as the replay.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.graphs["step"](static_tokens, cache, static_pos)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):           # records kernels; nothing runs yet
                static_logits = self.graphs["step"](static_tokens, cache, static_pos)
            recorded[key] = (cache, graph, static_tokens, static_pos, static_logits)
        _, graph, static_tokens, static_pos, static_logits = recorded[key]
        static_tokens.copy_(tokens)
        static_pos.copy_(input_pos)
        graph.replay()
        return static_logits


# ----------------------------------------------------------------------------------------------
# Checkpoints: this project's format, Hugging Face's and Meta's
# ----------------------------------------------------------------------------------------------
#
# Three directory layouts hold the same numbers:
#   ours          config.json {"format": "draft-align-llama", "config": {ModelConfig fields}}
#                 + model.safetensors, with the parameter names above.
#   Hugging Face  config.json (a LlamaConfig) + model.safetensors, or shards listed in
#                 model.safetensors.index.json, or pytorch_model.bin (or its shards + index);
#                 other names (HF_NAMES) and the rows of wq and wk permuted (below).
#   Meta          params.json + consolidated.00.pth, .01.pth, ...: one file per model-parallel
#                 rank, each holding a slice of every matrix, with our names.
# load_model reads all three, save_model writes ours, and export_hf writes Hugging Face's so a
# trained draft can serve other tools (e.g. as transformers' `assistant_model`).
#
# The permutation: RoPE rotates PAIRS of query/key features. apply_rope pairs neighbours
# (2j, 2j+1); Hugging Face's rotate_half pairs feature j with j + head_dim/2. So its conversion
# script reorders the rows of wq and wk inside every head. One head, head_dim 8, pair j = letter j:
#
#     row          0 1 2 3 4 5 6 7
#     Meta (ours)  a a b b c c d d        pair j = rows 2j, 2j+1
#     HF           a b c d a b c d        pair j = rows j, j + head_dim/2
#
# HF row r is Meta row 2r for r < head_dim/2, and Meta row 2(r - head_dim/2) + 1 above that.
# Reordering the features of q and k alike leaves every score q.k unchanged, so both layouts
# compute the same attention; wv and wo are not rotated and keep their order.

CHECKPOINT_FORMAT = "draft-align-llama"
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
IGNORED_TENSORS = ("rotary_emb.inv_freq", "rope.freqs")  # stored RoPE frequencies, not weights
HF_WEIGHT_FILES = (("model.safetensors", "model.safetensors.index.json"),   # preferred, like
                   ("pytorch_model.bin", "pytorch_model.bin.index.json"))   # transformers does


def _rename(name: str, table: dict[str, str]) -> str | None:
    layer = re.search(r"\.(\d+)\.", name)                      # ".7." in "model.layers.7.mlp..."
    pattern = name.replace(layer.group(0), ".{i}.", 1) if layer else name
    return table[pattern].format(i=layer.group(1) if layer else "") if pattern in table else None


def hf_to_meta_name(name: str) -> str | None:
    """Our name for a Hugging Face tensor name, or None if it is not a Llama weight."""
    return _rename(name, HF_NAMES)


def meta_to_hf_name(name: str) -> str | None:
    """Hugging Face's name for one of our parameter names."""
    return _rename(name, {ours: hf for hf, ours in HF_NAMES.items()})


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
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"{where}: RoPE scaling {rope_type!r} is not supported, only Llama 3.1's 'llama3'")
    scaling = None
    if rope_type == "llama3":
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
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
        "rope_scaling": {"rope_type": "llama3", **config.rope_scaling} if config.rope_scaling else None,
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


def _meta_checkpoint(directory: Path) -> tuple[ModelConfig, Iterator[tuple[Path, str, torch.Tensor]]]:
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
    return config, ((where, name, merged.pop(name)) for name in list(merged))


def _build(config: ModelConfig, tensors: Iterable[tuple[Path, str, torch.Tensor]], where: Path,
           device, dtype: torch.dtype | None, from_hf: bool) -> Llama:
    """Check every stored (file, name, tensor) against the config's names and shapes; build on them."""
    with torch.device("meta"):                   # shapes only: no memory, no random initialisation
        model = Llama(config)
    expected = {name: p.shape for name, p in _stored_state(model).items()}
    state = {}
    for file, stored_name, tensor in tensors:
        name = hf_to_meta_name(stored_name) if from_hf else stored_name
        if stored_name.endswith(IGNORED_TENSORS) or (config.tie_embeddings and name == "output.weight"):
            continue
        if name not in expected:
            raise ValueError(f"{file}: unexpected tensor {stored_name!r}: not a weight of the Llama "
                             f"that {where}'s config describes; remove it or fix the config")
        if tensor.shape != expected[name]:
            raise ValueError(f"{file}: tensor {stored_name!r} has shape {tuple(tensor.shape)} but {where}'s "
                             f"config implies {tuple(expected[name])}; the config and the weights disagree")
        if from_hf and (n_heads := _rope_heads(name, config)):
            tensor = unpermute_from_hf(tensor, n_heads)
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
    model.rope_cos, model.rope_sin = rope_tables(config)   # the ones built above live on "meta"
    return model.eval()


def load_model(path, device="cpu", dtype: torch.dtype | None = None,
               max_seq_len: int | None = None) -> Llama:
    """Load a checkpoint directory in our, Hugging Face's or Meta's format (detected), in eval mode.

    dtype=None keeps the stored dtype (float32 for ours; downloaded 7B checkpoints are usually
    bfloat16: pass torch.float32 for exact CPU work). max_seq_len overrides the context length.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist (or is not a directory)")
    config_file = directory / "config.json"
    if config_file.is_file():
        raw = _read_json(config_file)
        if "format" in raw:
            config, files, from_hf = _own_config(raw, config_file), [directory / "model.safetensors"], False
        elif raw.get("model_type") == "llama" or "LlamaForCausalLM" in raw.get("architectures", []):
            config, files, from_hf = config_from_hf(raw, config_file), _hf_weight_files(directory), True
        else:
            raise ValueError(f"{config_file}: neither this project's checkpoint (no 'format' key) "
                             f"nor a Hugging Face Llama (model_type={raw.get('model_type')!r})")
        tensors = ((file, name, tensor) for file in files for name, tensor in _read_tensors(file))
    elif (directory / "params.json").is_file():
        (config, tensors), from_hf = _meta_checkpoint(directory), False
    else:
        found = sorted(p.name for p in directory.iterdir())[:10]
        raise ValueError(f"{directory}: no checkpoint (found {found}); "
                         "expected config.json with model.safetensors (ours or Hugging Face's, or "
                         "Hugging Face's sharded / .bin files) or Meta's params.json with consolidated.*.pth")
    if max_seq_len:
        config = replace(config, max_seq_len=max_seq_len)
    return _build(config, tensors, directory, device, dtype, from_hf)


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


def save_model(model: Llama, out_dir) -> None:
    """Save in this project's format; load_model reads it back."""
    config_json = {"format": CHECKPOINT_FORMAT, "config": asdict(model.config)}
    _write_checkpoint(out_dir, _stored_state(model), config_json)


def export_hf(model: Llama, out_dir, dtype: torch.dtype | None = None,
              bos_token_id: int | None = None, eos_token_id: int | None = None) -> None:
    """Write a directory that transformers.LlamaForCausalLM.from_pretrained loads (same logits)."""
    dtype = dtype or model.tok_embeddings.weight.dtype
    tensors = {}
    for name, tensor in _stored_state(model).items():   # tied: transformers re-ties lm_head itself
        if n_heads := _rope_heads(name, model.config):
            tensor = permute_for_hf(tensor, n_heads)
        tensors[meta_to_hf_name(name)] = tensor.to(dtype)
    _write_checkpoint(out_dir, tensors, config_to_hf(model.config, dtype, bos_token_id, eos_token_id))
