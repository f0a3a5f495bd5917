"""The fast decode paths (CUDA graphs, torch.compile of the blocks and of the sampling, fused
projections) give the same tokens and the same accept/reject decisions as eager decoding, and
the decode loops never wait for all of the GPU's work as they go: each token or block is read
after the next one is launched.

These tests need a CUDA GPU and are skipped without one (CI has none); they are run on the GPU
machine with `pytest tests/test_gpu.py` before any benchmark (BENCHMARKS.md records the run).
The models run in float32, so that the paths agree to float32 rounding and tokens match.
"""

import gc
import warnings

import pytest
import torch

from fast_decode import CudaGraph, compile_blocks, fuse_projections
from speculative import Decoder, SpeculativeDecoder
from test_speculative import (assert_decoders_agree, perturbed_copy, plain_decode, plain_decode_batch, random_model,
                              speculative_decode)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

PROMPTS = [[1, 5, 9], [1, 7, 3, 2, 8, 4, 6], [1, 2], [3], [1] + [3, 4] * 9]   # lengths 3, 7, 2, 1, 19
SLOTS = 48


def pair(fuse: bool = False, compile: bool = False):
    target = random_model(0).cuda()
    draft = perturbed_copy(random_model(0), 0.3).cuda()
    for model in (target, draft):
        if fuse:
            fuse_projections(model)
        if compile:
            compile_blocks(model)
    return target, draft


# prefill_chunk: the decoders' default (fast_decode.PREFILL_CHUNK, above SLOTS: one recorded chunk over every
# slot), or 8 (a prompt of 19 tokens in three recorded chunks).
@pytest.mark.parametrize("compile, fuse, prefill_chunk", [(False, False, None), (False, False, 8),
                                                          (True, False, None), (True, True, 8)])
def test_graphed_plain_decoding_matches_eager_across_prompts(compile, fuse, prefill_chunk):
    # One decoder for several prompts in a row: its state is reused, so a stale slot or a
    # stale `start` from the previous prompt would change the tokens.
    eager, _ = pair()
    fast, _ = pair(fuse, compile)
    decoder = Decoder(fast, 1, SLOTS, graphs=True, compile_sampling=compile)
    decoder.steps.prefill_chunk = prefill_chunk or decoder.steps.prefill_chunk
    for prompt in PROMPTS:
        for temperature in (0.0, 1.0):
            g1, g2 = (torch.Generator("cuda").manual_seed(3) for _ in range(2))
            expected = plain_decode(eager, prompt, 12, temperature, generator=g1).tolist()
            assert decoder.generate([prompt], 12, temperature, generator=g2)[0] == expected
            assert g1.get_state().equal(g2.get_state())        # the caller's generator moved on alike
    # left-padded batches: a different `start` per row
    batched = Decoder(fast, len(PROMPTS), SLOTS, graphs=True, compile_sampling=compile)
    batched.steps.prefill_chunk = prefill_chunk or batched.steps.prefill_chunk
    assert batched.generate(PROMPTS, 8, 0.0) == plain_decode_batch(eager, PROMPTS, 8, 0.0)


@pytest.mark.parametrize("compile, fuse, prefill_chunk", [(False, False, None), (False, False, 8), (True, True, 8)])
def test_graphed_speculative_matches_eager_token_for_token_and_block_for_block(compile, fuse, prefill_chunk):
    eager_target, eager_draft = pair()
    target, draft = pair(fuse, compile)
    decoder = SpeculativeDecoder(target, draft, SLOTS, graphs=True, compile_sampling=compile)
    decoder.steps.prefill_chunk = prefill_chunk or decoder.steps.prefill_chunk
    blocks = []
    for prompt in PROMPTS:
        for temperature in (0.0, 1.0):
            for gamma in (1, 3):
                g1, g2 = (torch.Generator("cuda").manual_seed(7) for _ in range(2))
                expected, stats_eager = speculative_decode(eager_target, eager_draft, prompt, 12, gamma,
                                                             temperature, generator=g1)
                tokens, stats = decoder.generate(prompt, 12, gamma, temperature, generator=g2)
                assert tokens.tolist() == expected.tolist()
                assert stats["accepted_per_block"] == stats_eager["accepted_per_block"]
                blocks += stats["accepted_per_block"]
    assert 0 in blocks and 3 in blocks, "both rejections and full acceptance must occur"



@pytest.mark.parametrize("compile, fuse", [(False, False), (True, True)])
def test_graphed_argmax_drafting_auto_gamma_and_a_shortlist_match_eager(compile, fuse, monkeypatch):
    """The recorded forms of what runs beside the rejection rule: argmax drafting (verify_argmax),
    gamma "auto" with plain steps between blocks and the draft's catch-up prefill after them,
    and a draft over a shortlist (logits over K tokens, verify over S): the same tokens and the
    same blocks as eagerly, on the same random numbers."""
    from fast_decode import shortlist_head
    shortlist = list(range(0, random_model(0).config.vocab_size, 2))
    for mode, auto, short in (("argmax", False, False), ("sample", True, False), ("sample", False, True)):
        eager_pair, fast_pair = pair(), pair(fuse, compile)
        if short:
            shortlist_head(eager_pair[1], shortlist)
            shortlist_head(fast_pair[1], shortlist)
        fast = SpeculativeDecoder(*fast_pair, SLOTS, graphs=True, compile_sampling=compile)
        assert_decoders_agree(SpeculativeDecoder(*eager_pair, SLOTS), fast, PROMPTS, mode, auto, monkeypatch)


def test_gpu_paths_record_their_steps_and_the_compiling_ones_compile_the_sampling():
    from fast_decode import GPU_PATHS, apply_decode_path
    for path in GPU_PATHS:
        assert apply_decode_path([random_model(0).cuda()], path) == {"graphs": True, "compile_sampling": "compile" in path}


def test_a_dead_graph_collected_during_a_capture_does_not_break_it():
    # The evaluation's failure, made deterministic: a recorded graph that only the cyclic
    # collector can free (as a decoder's recordings are), and a collection that runs while the
    # next graph is captured. Freeing a graph mid-capture invalidates the capture, so CudaGraph
    # collects first (fast_decode.garbage_collector_paused) and the collection finds nothing.
    x = torch.arange(4.0, device="cuda")
    was_enabled = gc.isenabled()
    gc.disable()                                   # no automatic collection: only explicit ones
    try:
        dead = CudaGraph(lambda: x + 1)
        dead()
        dead.self = dead                           # a reference cycle
        del dead
        calls = []

        def step():
            calls.append(1)
            if len(calls) == 2:                    # during the capture
                gc.collect()
            return x * 2
        recorded = CudaGraph(step)
        recorded()
        x.add_(1)
        torch.testing.assert_close(recorded(), torch.arange(1.0, 5.0, device="cuda") * 2)
    finally:
        if was_enabled:
            gc.enable()


def count_host_syncs(fn) -> int:
    """How many times fn() makes the host wait for the GPU (torch's sync debug mode warns once per wait)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("called a synchronizing CUDA operation" in str(w.message) for w in caught)


def test_the_loops_never_wait_for_the_whole_queue_and_read_each_result_once(monkeypatch):
    # The CPU can queue the next steps while the GPU works only if nothing waits for all of the
    # GPU's work in between. So the stream syncs must not grow with the tokens (a few at the
    # ends: the prompt's copy in, the tokens' copy out), with stop ids too: the loops read every
    # token (plain decoding) or block (speculative decoding) through an event recorded right
    # after it (fast_decode.ReadLater), which waits for that step only, not for the next one
    # launched behind it -- and the speculative loop launches its second block before it reads
    # its first.
    import fast_decode
    events = []
    tolist = fast_decode.ReadLater.tolist
    monkeypatch.setattr(fast_decode.ReadLater, "tolist", lambda self: events.append("read") or tolist(self))
    target, draft = pair()
    plain = Decoder(target, 1, SLOTS, graphs=True)
    speculative = SpeculativeDecoder(target, draft, SLOTS, graphs=True)
    prompt, stop = PROMPTS[1], {target.config.vocab_size}         # a stop id no model draws
    for n_new in (6, 30):                                          # record every graph first
        plain.generate([prompt], n_new, 1.0, stop_ids=stop)
        speculative.generate(prompt, n_new, 3, 1.0, stop_ids=stop)
    run = speculative.steps.run                                    # a block's key starts with its gamma
    speculative.steps.run = lambda key, step: (events.append("block") if isinstance(key[0], int) else None) or \
        run(key, step)
    waits, blocks, n_reads = {}, {}, {}
    for n_new in (6, 30):
        events.clear()
        waits["plain", n_new] = count_host_syncs(lambda: plain.generate([prompt], n_new, 1.0, stop_ids=stop))
        n_reads["plain", n_new] = events.count("read")
        events.clear()
        waits[n_new] = count_host_syncs(lambda: blocks.__setitem__(
            n_new, len(speculative.generate(prompt, n_new, 3, 1.0, stop_ids=stop)[1]["accepted_per_block"])))
        n_reads[n_new] = events.count("read")
    assert waits["plain", 6] == waits["plain", 30] <= 4 and waits[6] == waits[30] <= 4
    assert n_reads["plain", 6] == 6 - 1 and n_reads["plain", 30] == 30 - 1    # the last token is never asked
    assert n_reads[6] == blocks[6] and n_reads[30] == blocks[30]
    assert events[:3] == ["block", "block", "read"]               # of the 30-token call


def test_compiled_blocks_train_as_eager_ones_do():
    """train.py --compile on a GPU: a few distillation steps with every block of the draft and the
    teacher compiled by inductor (forward and backward, batches of changing lengths, so the shapes
    go dynamic) end at the weights of the eager steps, to float32 rounding."""
    from losses import get_loss
    from train import collate, make_optimizer, objective, on_device

    def train_steps(compiled: bool) -> dict:
        teacher, draft = random_model(0).cuda().requires_grad_(False), random_model(1).cuda().train()
        if compiled:
            compile_blocks(teacher)
            compile_blocks(draft)
        optimizer = make_optimizer(draft, 1e-3, 0.1)
        generator = torch.Generator().manual_seed(0)
        for length in (9, 13, 11, 16):
            examples = [(torch.randint(0, draft.config.vocab_size, (length - row,), generator=generator).tolist(), 3)
                        for row in range(4)]
            inputs, targets, keep = on_device(collate(examples, 0), torch.device("cuda"))
            loss = objective(draft, teacher, get_loss("kld"), inputs, targets, keep, None)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {name: p.detach().clone() for name, p in draft.named_parameters()}

    eager, compiled = train_steps(False), train_steps(True)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], atol=1e-4, rtol=1e-3)
