"""Tests of model.py: the Llama architecture, its KV cache, RoPE and RMSNorm.

Every test compares the code against an independent statement of what it must compute:
a full forward pass for the cache, an unpadded pass for the padded batch, a repeated-head
MHA model for GQA, complex-number rotation for RoPE, Meta's scalar loop for Llama 3.1's
RoPE scaling, and the RMSNorm formula written out. All on CPU, in a few seconds.

The library initialisation (std 0.02) makes every logit nearly zero, so a wrong mask or a
wrong position would change the logits by less than any sensible tolerance. `random_model`
therefore re-draws the weights at unit scale: attention is then sharp and a mistake shows.
"""

import math

import pytest
import torch

from model import (PRESETS, KVCache, Llama, ModelConfig, RMSNorm, apply_rope, count_params,
                   get_config, rope_frequencies, rope_tables)

ATOL = 1e-5  # float32 agreement between two ways of computing the same logits


def random_model(seed: int = 0, **overrides) -> Llama:
    """The "test" preset (GQA: 4 query heads, 2 KV heads) with O(1)-scale random weights."""
    torch.manual_seed(seed)
    model = Llama(get_config("test", **overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:                          # RMSNorm gains: around 1, not all 1
                param.uniform_(0.5, 1.5)
            else:                                         # (out, in): unit-variance outputs
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]))
                if name.endswith("attention.wq.weight"):
                    param.mul_(2.0)                       # sharper attention patterns
    return model


def random_tokens(batch: int, length: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def decode_in_chunks(model: Llama, tokens: torch.Tensor, chunk_sizes: list[int],
                     cache: KVCache | None = None, first_slot: int = 0) -> torch.Tensor:
    """Feed tokens (B, T) through the cache chunk by chunk from `first_slot`; logits (B, T, V)."""
    if cache is None:
        cache = model.new_cache(tokens.shape[0], max_len=model.config.max_seq_len)
    assert sum(chunk_sizes) == tokens.shape[1]
    logits, slot = [], first_slot
    for size in chunk_sizes:
        input_pos = torch.arange(slot, slot + size)
        logits.append(model(tokens[:, slot - first_slot: slot - first_slot + size], cache, input_pos))
        slot += size
    return torch.cat(logits, dim=1)


# ----------------------------------------------------------------------------------------------
# Shapes and parameter counts
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])   # MHA, GQA (the "test" preset), multi-query
def test_logits_shape(n_kv_heads):
    model = random_model(n_kv_heads=n_kv_heads)
    logits = model(random_tokens(3, 11, model.config.vocab_size))
    assert logits.shape == (3, 11, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_keep_returns_exactly_the_kept_rows_of_the_full_logits():
    """train.py asks for the logits of the answer positions only: the same numbers as selecting
    those rows of the full (B, T, V) logits, in row-major order."""
    model = random_model()
    tokens = random_tokens(3, 11, model.config.vocab_size)
    mask = torch.rand(3, 11, generator=torch.Generator().manual_seed(2)) > 0.5
    kept = model(tokens, keep=mask.flatten().nonzero().squeeze(1))
    assert kept.shape == (int(mask.sum()), model.config.vocab_size)
    torch.testing.assert_close(kept, model(tokens)[mask], atol=ATOL, rtol=0)


def test_drafter_115m_parameter_count():
    with torch.device("meta"):
        model = Llama(get_config("drafter-115m"))
    assert abs(count_params(model) - 117e6) / 117e6 < 0.02


def test_llama2_7b_parameter_count():
    with torch.device("meta"):
        model = Llama(get_config("llama2-7b"))
    assert count_params(model) == 6_738_415_616   # the published count of Llama 2 7B


def test_tied_embeddings_count_once():
    untied = Llama(get_config("test"))
    tied = Llama(get_config("test", tie_embeddings=True))
    assert tied.output.weight is tied.tok_embeddings.weight
    cfg = tied.config
    assert count_params(tied) == count_params(untied) - cfg.vocab_size * cfg.dim


# ----------------------------------------------------------------------------------------------
# Causality and the KV cache
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0, 5, 12])
def test_causality(t):
    model = random_model()
    tokens = random_tokens(2, 13, model.config.vocab_size)
    changed = tokens.clone()
    changed[:, t] = (changed[:, t] + 1) % model.config.vocab_size
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], atol=ATOL, rtol=0)
    assert (after[:, t:] - before[:, t:]).abs().amax() > 1e-2   # the change is visible from t on


@pytest.mark.parametrize("n_kv_heads", [4, 2])
@pytest.mark.parametrize("chunk_sizes", [[6] + [1] * 10, [6, 3, 4, 1, 1, 1], [16]])
def test_cache_matches_full_forward(n_kv_heads, chunk_sizes):
    """Prefill then one token at a time, or chunks of several: same logits as one full pass."""
    model = random_model(n_kv_heads=n_kv_heads)
    tokens = random_tokens(2, 16, model.config.vocab_size)
    with torch.no_grad():
        full = model(tokens)
        cached = decode_in_chunks(model, tokens, chunk_sizes)
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("rewrite_chunks", [[1, 1, 1, 1, 1, 1], [4, 2], [6]])
def test_cache_rollback(rewrite_chunks):
    """Garbage at slots p..p+k, then the true tokens rewritten from slot p: stale slots never leak."""
    model = random_model()
    vocab, p, k = model.config.vocab_size, 7, 5
    tokens = random_tokens(2, p + 6, vocab)
    garbage = (tokens[:, p: p + k] + 1 + random_tokens(2, k, vocab - 1, seed=2)) % vocab
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2, max_len=32)
        decode_in_chunks(model, tokens[:, :p], [p], cache)
        garbage_logits = decode_in_chunks(model, garbage, [k], cache, first_slot=p)
        # Roll back: continue from slot p as if the garbage had never been written.
        rewritten = decode_in_chunks(model, tokens[:, p:], rewrite_chunks, cache, first_slot=p)
    assert (garbage_logits[:, 1:] - full[:, p + 1: p + k]).abs().amax() > 1e-2   # garbage mattered
    torch.testing.assert_close(rewritten, full[:, p:], atol=ATOL, rtol=0)


def padded_batch_logits(model: Llama, prompts: list[torch.Tensor], continuations: torch.Tensor,
                        pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad the prompts into one cache, prefill, decode the continuations one token at a time.

    Returns the logits of every slot (B, P + C, V) and the number of pad slots per row (B,).
    """
    pad_len = max(len(p) for p in prompts)
    start = torch.tensor([pad_len - len(p) for p in prompts])
    padded = torch.stack([torch.cat([torch.full((pad_len - len(p),), pad_id), p]) for p in prompts])
    cache = model.new_cache(len(prompts), max_len=pad_len + continuations.shape[1] + 3, start=start)
    prefill = model(padded, cache, torch.arange(pad_len))                       # (B, P, V)
    steps = decode_in_chunks(model, continuations, [1] * continuations.shape[1], cache,
                             first_slot=pad_len)                                # (B, C, V)
    return torch.cat([prefill, steps], dim=1), start


def test_prefill_writes_the_cache_a_logits_pass_writes_and_runs_no_head_rows():
    """Llama.prefill: the same keys and values in the same slots as a forward pass over the
    prompt, so decoding after it is unchanged, with the head run over no position at all."""
    model = random_model(n_kv_heads=2)
    tokens = random_tokens(2, 10, model.config.vocab_size)
    head_rows = []
    model.output.register_forward_hook(lambda module, inputs, output: head_rows.append(inputs[0].shape[0]))
    with torch.no_grad():
        with_logits, without = model.new_cache(2, 12), model.new_cache(2, 12)
        model(tokens[:, :7], with_logits, torch.arange(7))
        head_rows.clear()
        assert model.prefill(tokens[:, :7], without, torch.arange(7)) is None
        assert head_rows == [0]
        for written, expected in zip(without.k + without.v, with_logits.k + with_logits.v):
            torch.testing.assert_close(written, expected, atol=0, rtol=0)
        after = model(tokens[:, 7:], without, torch.arange(7, 10))
    torch.testing.assert_close(after, model(tokens)[:, 7:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_fused_projections_change_nothing_but_the_kernels(n_kv_heads, tmp_path):
    """fuse_projections: the stacked products are what runs (the separate wq/wk/wv/w1/w3 modules
    are never called), with the same logits (full pass and cached decoding), the same parameter
    names and shapes (views into the stacked matrices), and a checkpoint that loads unfused."""
    from checkpoints import load_model, save_model
    from fast_decode import fuse_projections
    model = random_model(n_kv_heads=n_kv_heads)
    tokens = random_tokens(2, 12, model.config.vocab_size)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    separate = [module for layer in model.layers for module in (
        layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.feed_forward.w1, layer.feed_forward.w3)]
    calls = []
    for module in separate:
        module.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        full, cached = model(tokens), decode_in_chunks(model, tokens, [5, 1, 1, 3, 2])
        assert len(calls) > 0                                   # unfused: the separate products run
        fuse_projections(model)
        calls.clear()
        torch.testing.assert_close(model(tokens), full, atol=ATOL, rtol=0)
        torch.testing.assert_close(decode_in_chunks(model, tokens, [5, 1, 1, 3, 2]), cached, atol=ATOL, rtol=0)
    assert calls == []                                          # fused: only the stacked products ran
    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    attention = model.layers[1].attention
    assert attention.wk.weight.data_ptr() == attention.wqkv[attention.wq.out_features:].data_ptr()  # a view
    save_model(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(tokens), full, atol=0, rtol=0)


def test_compile_blocks_traces_one_block_for_every_layer_and_every_model_of_its_shape():
    """compile_blocks: the same logits, and torch.compile traces the block once per input shape,
    not once per layer or per model (regional compilation), so compile time does not grow with
    depth; so do the two pieces compiled beside the blocks (the final norm, Llama.cache_inputs).
    The "eager" backend traces exactly as the real one does, without generating kernels."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from fast_decode import compile_blocks
    shallow, deep = random_model(0), random_model(1, n_layers=6)
    tokens = random_tokens(1, 9, shallow.config.vocab_size)
    chunks = [5, 1, 3]                   # a prefill, a decode step, a verify: three input shapes
    torch._dynamo.reset()
    counters.clear()
    try:
        with torch.no_grad():
            expected = [decode_in_chunks(model, tokens, chunks) for model in (shallow, deep)]
            traced = []
            for model, logits in zip((shallow, deep), expected):
                compile_blocks(model, backend="eager")
                torch.testing.assert_close(decode_in_chunks(model, tokens, chunks), logits, atol=ATOL, rtol=0)
                traced.append(counters["stats"]["unique_graphs"])
        # 2 + 6 compiled layers, a norm and cache_inputs per model: each of the three pieces traced
        # once per shape (5, then 1, which torch.compile always specialises, then 3, the dynamic
        # length), and nothing traced again for the deeper model
        assert traced[0] == 3 * len(chunks) and traced[1] == traced[0]
    finally:
        torch._dynamo.reset()


def test_cuda_graph_records_with_the_garbage_collector_paused(monkeypatch):
    """CudaGraph's capture runs with Python's collector off, after a collection (a dead graph
    freed by the collector mid-capture invalidates the capture), and turns it back on after, also
    when the step fails; a collector the caller had turned off stays off. torch.cuda's stream and
    graph calls are replaced by stand-ins, so this runs on a CPU; tests/test_gpu.py has the real
    capture."""
    import contextlib
    import gc
    import types
    import weakref
    import fast_decode
    stream = types.SimpleNamespace(wait_stream=lambda other: None)
    replays = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: types.SimpleNamespace(replay=lambda: replays.append(1)))

    collector_on, garbage_alive = [], []

    def step():
        collector_on.append(gc.isenabled())
        garbage_alive.append(garbage() is not None)
        return torch.zeros(1)

    class Cycle:
        pass
    was_enabled = gc.isenabled()
    try:
        for caller_enabled in (True, False):
            collector_on.clear(), garbage_alive.clear(), replays.clear()
            gc.disable()                               # no collection before CudaGraph's own
            cycle = Cycle()
            cycle.self = cycle                         # freed only by the cyclic collector
            garbage = weakref.ref(cycle)
            del cycle
            if caller_enabled:
                gc.enable()
            recorded = fast_decode.CudaGraph(step)
            recorded()                                 # warm-up step, then the capture
            recorded()                                 # a replay: step does not run
            assert collector_on == [caller_enabled, False] and len(replays) == 1
            assert garbage_alive[1] is False           # collected before the capture began
            assert gc.isenabled() == caller_enabled
        gc.enable()
        with pytest.raises(RuntimeError):
            with fast_decode.garbage_collector_paused():
                raise RuntimeError("a failing capture")
        assert gc.isenabled()
    finally:
        (gc.enable if was_enabled else gc.disable)()


@pytest.mark.parametrize("one_row_as_two", [False, True])
def test_few_row_matmuls_change_nothing_but_the_product(tmp_path, monkeypatch, one_row_as_two):
    """few_row_matmuls: every linear layer computes (W x^T)^T for a few rows and x W^T for many
    (nn.Linear's own forward runs only then), with the same logits (full pass: many rows; cached
    decoding: few), the same parameters, and a checkpoint that loads as a plain model. One row
    goes to the library's own product, or with one_row_as_two as two rows in the transposed form."""
    from checkpoints import load_model, save_model
    from fast_decode import FewRowLinear, few_row_matmuls
    model = random_model()
    tokens = random_tokens(2, 12, model.config.vocab_size)
    state = {name: p.clone() for name, p in model.state_dict().items()}
    usual_rows = []                       # the row counts nn.Linear.forward (x W^T) was called with
    usual = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward",
                        lambda self, x: (usual_rows.append(x.numel() // x.shape[-1]), usual(self, x))[1])
    with torch.no_grad():
        full, cached = model(tokens), decode_in_chunks(model, tokens, [5, 1, 1, 3, 2])
        few_row_matmuls(model, one_row_as_two)
        assert all(type(m) is FewRowLinear and m.one_row_as_two == one_row_as_two
                   for m in model.modules() if isinstance(m, torch.nn.Linear))
        usual_rows.clear()
        torch.testing.assert_close(decode_in_chunks(model, tokens, [5, 1, 1, 3, 2]), cached, atol=ATOL, rtol=0)
        assert usual_rows == []                                    # at most 10 rows: all (W x^T)^T
        torch.testing.assert_close(model(tokens), full, atol=ATOL, rtol=0)
        assert set(usual_rows) == {24}                             # 2 x 12 rows: the usual product
        x = torch.randn(3, 2, model.config.dim)                        # 6 rows: the (W x^T)^T branch
        layer = model.layers[0].feed_forward.w1
        torch.testing.assert_close(layer(x), x @ layer.weight.T, atol=ATOL, rtol=0)
        assert layer(x).is_contiguous() and layer(x.transpose(0, 1)).is_contiguous()
        torch.testing.assert_close(layer(x.transpose(0, 1)), x.transpose(0, 1) @ layer.weight.T, atol=ATOL, rtol=0)
        one = torch.randn(1, 1, model.config.dim)
        torch.testing.assert_close(layer(one), one @ layer.weight.T, atol=ATOL, rtol=0)
        assert layer(one).shape == (1, 1, layer.out_features) and layer(one).is_contiguous()
        usual_rows.clear()
        torch.testing.assert_close(decode_in_chunks(model, tokens[:1, :7], [5, 1, 1]), cached[:1, :7], atol=ATOL, rtol=0)
        linears = 7 * model.config.n_layers + 1                    # wq wk wv wo w1 w2 w3 per block, the head
        assert usual_rows == ([] if one_row_as_two else [1] * 2 * linears)   # one row: the library's product?
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[name], p) for name, p in state.items())
    save_model(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(tokens), full, atol=ATOL, rtol=0)


def test_few_row_matmuls_takes_one_row_the_way_that_makes_a_step_faster(monkeypatch):
    """few_row_matmuls(model) with no choice given times a 1-token step both ways on a CPU and
    keeps the faster one: here each way is made slow in turn (a sleep in its 1-row product)."""
    import time
    from fast_decode import FewRowLinear, few_row_matmuls
    forward = FewRowLinear.forward

    def slowed(slow_as_two: bool):
        def slow_forward(self, x):
            if x.numel() == x.shape[-1] and self.one_row_as_two == slow_as_two:
                time.sleep(0.002)
            return forward(self, x)
        return slow_forward

    for slow_as_two in (False, True):
        monkeypatch.setattr(FewRowLinear, "forward", slowed(slow_as_two))
        model = few_row_matmuls(random_model())
        assert {m.one_row_as_two for m in model.modules() if isinstance(m, torch.nn.Linear)} == {not slow_as_two}


@pytest.mark.parametrize("path", ["eager", "few-row-matmuls"])
def test_shortlist_head_computes_the_shortlisted_logits_only(path):
    """shortlist_head: logits over the sorted shortlist alone, equal to the full head's logits of
    those tokens, in a full pass and in cached decoding, on both CPU decode paths (which must
    reach the new head); its token_ids map each logit back to its token."""
    from fast_decode import FewRowLinear, ShortlistHead, apply_decode_path, shortlist_head
    model = random_model()
    tokens = random_tokens(2, 12, model.config.vocab_size)
    shortlist = [40, 3, 7, 96, 3, 0]                       # unsorted, with a repeat
    kept = sorted(set(shortlist))
    with torch.no_grad():
        full = model(tokens)
        shortlist_head(model, shortlist)
        assert apply_decode_path([model], path) == {"graphs": False, "compile_sampling": False}
        assert isinstance(model.output, ShortlistHead)
        assert model.output.token_ids.tolist() == kept
        assert (type(model.output.proj) is FewRowLinear) == (path == "few-row-matmuls")
        for logits in (model(tokens), decode_in_chunks(model, tokens, [5, 1, 1, 3, 2])):
            assert logits.shape[-1] == len(kept)
            torch.testing.assert_close(logits, full[..., kept], atol=ATOL, rtol=0)
    assert torch.equal(model.tok_embeddings.weight, random_model().tok_embeddings.weight)   # untouched
    for bad in ([], [-1], [model.config.vocab_size]):
        with pytest.raises(ValueError, match="a shortlist needs token ids in 0..96"):
            shortlist_head(random_model(), bad)


def test_left_padded_batch_matches_unpadded_rows():
    model = random_model()
    vocab = model.config.vocab_size
    prompts = [random_tokens(1, n, vocab, seed=10 + n)[0] for n in (5, 9, 2)]
    continuations = random_tokens(3, 4, vocab, seed=3)
    with torch.no_grad():
        results = [padded_batch_logits(model, prompts, continuations, pad_id) for pad_id in (0, 96)]
        for logits, start in results:
            assert torch.isfinite(logits).all()                  # pad rows included: no NaN
            for row, prompt in enumerate(prompts):
                unpadded = model(torch.cat([prompt, continuations[row]])[None])  # (1, L, V)
                torch.testing.assert_close(logits[row, start[row]:], unpadded[0], atol=ATOL, rtol=0)
    # The pad id is invisible to the real positions.
    (logits_a, start), (logits_b, _) = results
    for row in range(len(prompts)):
        torch.testing.assert_close(logits_a[row, start[row]:], logits_b[row, start[row]:],
                                   atol=ATOL, rtol=0)


def test_cache_mask_and_positions():
    """KVCache's contract, element by element (the logit tests cannot see two details of it:
    RoPE is relative, so a constant position offset per row changes no logit, and SDPA on CPU
    returns zeros rather than NaN for a query that may see nothing)."""
    cache = KVCache(get_config("test"), batch_size=2, max_len=8, start=torch.tensor([0, 3]))
    input_pos = torch.arange(1, 6)                                              # slots 1..5
    mask = cache.attention_mask(input_pos)
    assert mask.shape == (2, 1, 5, 8)
    for b, start in enumerate([0, 3]):
        for t, slot in enumerate(input_pos.tolist()):
            for j in range(8):
                visible = start <= j <= slot or j == slot    # causal and not padding; always itself
                assert mask[b, 0, t, j].item() == visible, (b, slot, j)
    expected_positions = torch.tensor([[1, 2, 3, 4, 5], [0, 0, 0, 1, 2]])      # slot - start, >= 0
    assert torch.equal(cache.positions(input_pos), expected_positions)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = random_model(n_heads=4, n_kv_heads=2)
    mha = Llama(get_config("test", n_heads=4, n_kv_heads=4)).eval()
    repeats, head_dim = 4 // 2, gqa.config.head_dim
    state = gqa.state_dict()
    for name, weight in list(state.items()):
        if name.endswith(("attention.wk.weight", "attention.wv.weight")):
            per_head = weight.view(2, head_dim, -1)                        # (Hkv, hd, dim)
            state[name] = per_head.repeat_interleave(repeats, dim=0).reshape(4 * head_dim, -1)
    mha.load_state_dict(state)
    tokens = random_tokens(2, 12, gqa.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(mha(tokens), gqa(tokens), atol=ATOL, rtol=0)
        torch.testing.assert_close(decode_in_chunks(mha, tokens, [5, 1, 6]),
                                   decode_in_chunks(gqa, tokens, [5, 1, 6]), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------
# RoPE
# ----------------------------------------------------------------------------------------------

ROPE_CONFIG = ModelConfig(vocab_size=8, dim=128, n_layers=1, n_heads=2, n_kv_heads=2,
                          ffn_dim=8, max_seq_len=128, rope_theta=10000.0)   # head_dim 64


def rope_at(x: torch.Tensor, position: int) -> torch.Tensor:
    """apply_rope to one vector x (head_dim,) at one position."""
    cos, sin = rope_tables(ROPE_CONFIG)
    return apply_rope(x.view(1, 1, 1, -1), cos[position].view(1, 1, 1, -1),
                      sin[position].view(1, 1, 1, -1)).view(-1)


def test_rope_dot_product_depends_only_on_relative_position():
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(64, generator=gen), dim=0)
    k = torch.nn.functional.normalize(torch.randn(64, generator=gen), dim=0)
    for m, n, shift in [(3, 0, 17), (10, 4, 40), (0, 9, 25), (5, 5, 60)]:
        here = rope_at(q, m) @ rope_at(k, n)
        shifted = rope_at(q, m + shift) @ rope_at(k, n + shift)
        assert abs(here - shifted) < 1e-5, (m, n, shift)
    # ...and it does depend on m - n (a rotation by a constant angle would pass the loop above).
    by_distance = torch.stack([rope_at(q, d) @ rope_at(k, 0) for d in range(8)])
    assert by_distance.amax() - by_distance.amin() > 0.05


def test_rope_at_position_zero_is_identity():
    x = torch.randn(2, 3, 1, 64, generator=torch.Generator().manual_seed(0))
    cos, sin = rope_tables(ROPE_CONFIG)
    torch.testing.assert_close(apply_rope(x, cos[:1], sin[:1]), x, atol=0, rtol=0)


def test_rope_matches_complex_rotation():
    """Meta's formulation: adjacent pairs as complex numbers, multiplied by exp(i * m * theta_i)."""
    B, H, T, hd = 2, 3, 50, ROPE_CONFIG.head_dim
    x = torch.randn(B, H, T, hd, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(T)[None, :] + torch.tensor([[0], [13]])             # (B, T): row offsets
    theta = ROPE_CONFIG.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rotation = torch.polar(torch.ones(B, T, hd // 2, dtype=torch.float64),
                           positions[..., None].double() * theta)                 # (B, T, hd/2)
    as_complex = torch.view_as_complex(x.double().reshape(B, H, T, hd // 2, 2))
    expected = torch.view_as_real(as_complex * rotation[:, None]).flatten(-2)     # (B, H, T, hd)
    cos, sin = rope_tables(ROPE_CONFIG)
    actual = apply_rope(x, cos[positions][:, None], sin[positions][:, None])
    torch.testing.assert_close(actual.double(), expected, atol=1e-5, rtol=0)


def meta_apply_scaling(freqs: list[float], factor: float, low_freq_factor: float,
                       high_freq_factor: float, old_context_len: int) -> list[float]:
    """Meta's Llama 3.1 `apply_scaling`, transcribed one scalar at a time."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    new_freqs = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            new_freqs.append((1 - smooth) * freq / factor + smooth * freq)
    return new_freqs


def test_llama31_rope_scaling_matches_meta_loop():
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config = get_config("llama3-8b", rope_scaling=scaling)          # head_dim 128, theta 5e5
    hd = config.head_dim
    freqs = [config.rope_theta ** (-(2 * i) / hd) for i in range(hd // 2)]
    expected = meta_apply_scaling(freqs, 8.0, 1.0, 4.0, 8192)
    actual = rope_frequencies(config)
    assert actual.dtype == torch.float32 and actual.shape == (hd // 2,)
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    # All three regimes occur (kept, divided by 8, interpolated), so the test covers each branch.
    ratios = [f / e for f, e in zip(freqs, expected)]
    assert any(abs(r - 1) < 1e-9 for r in ratios) and any(abs(r - 8) < 1e-9 for r in ratios)
    assert any(1.01 < r < 7.99 for r in ratios)


# ----------------------------------------------------------------------------------------------
# RMSNorm
# ----------------------------------------------------------------------------------------------

def test_rmsnorm_formula_float64_reference():
    """The float32 module against the formula evaluated in float64 on the same numbers."""
    gen = torch.Generator().manual_seed(0)
    norm = RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(48, generator=gen) + 0.5)
    x = torch.randn(3, 5, 48, generator=gen) * 4 + 1
    x64, weight64 = x.double(), norm.weight.detach().double()
    expected = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * weight64
    torch.testing.assert_close(norm(x).double(), expected, atol=1e-6, rtol=1e-6)


def test_rmsnorm_bf16_normalises_in_float32():
    gen = torch.Generator().manual_seed(0)
    norm = RMSNorm(256, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(256, generator=gen) + 0.5)
    norm = norm.to(torch.bfloat16)
    x = (torch.randn(16, 256, generator=gen) * 3 + 1).to(torch.bfloat16)
    x32 = x.float()
    expected = (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16) * norm.weight
    actual = norm(x)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    # Normalising in bf16 instead would round differently, so the comparison above can tell.
    in_bf16 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert not torch.equal(in_bf16, expected)


# ----------------------------------------------------------------------------------------------
# Errors and dtypes
# ----------------------------------------------------------------------------------------------

def test_forward_rejects_bad_arguments():
    model = random_model()
    tokens = random_tokens(1, 4, model.config.vocab_size)
    with pytest.raises(ValueError, match="input_pos"):
        model(tokens, cache=model.new_cache(1, 8))
    with pytest.raises(ValueError, match="cache"):
        model(tokens, input_pos=torch.arange(4))
    longest = random_tokens(1, model.config.max_seq_len + 1, model.config.vocab_size)
    with torch.no_grad():   # exactly max_seq_len tokens is allowed: the RoPE tables cover them
        assert model(longest[:, :-1]).shape == (1, model.config.max_seq_len, model.config.vocab_size)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(longest)


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(dim=30, n_heads=4, n_kv_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(dim=32, n_heads=4, n_kv_heads=3)


def test_get_config_names_valid_presets():
    with pytest.raises(ValueError) as error:
        get_config("nope")
    assert "nope" in str(error.value)
    assert all(name in str(error.value) for name in PRESETS)


def test_bfloat16_model():
    model = random_model()
    tokens = random_tokens(2, 10, model.config.vocab_size)
    with torch.no_grad():
        logits32 = model(tokens)
        model = model.to(torch.bfloat16)
        logits = model(tokens)
        cached = decode_in_chunks(model, tokens, [6, 1, 3])
    assert model.rope_cos.dtype == torch.float32 and model.rope_sin.dtype == torch.float32
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert cached.dtype == torch.bfloat16 and torch.isfinite(cached).all()
    # bf16 keeps ~3 significant digits: close to float32, far from a broken model.
    assert (logits.float() - logits32).abs().amax() < 0.1 * logits32.abs().amax()
