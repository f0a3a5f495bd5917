"""The fast decode paths (CUDA graphs, torch.compile, fused projections) give the same tokens
as eager decoding, and the decode loops do not wait for the GPU as they go.

These tests need a CUDA GPU and are skipped without one (CI has none); they are run on the GPU
machine with `pytest tests/test_gpu.py` before any benchmark (BENCHMARKS.md records the run).
The models run in float32, so that the paths agree to float32 rounding and greedy tokens match.
"""

import warnings

import pytest
import torch

from speculative import generate, generate_batch, speculative_generate
from test_speculative import perturbed_copy, random_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

PROMPTS = [[1, 5, 9], [1, 7, 3, 2, 8, 4, 6], [1, 2], [1] + [3, 4] * 9]   # lengths 3, 7, 2, 19


def pair(graphs: bool, compile: bool = False, fuse: bool = False):
    target = random_model(0).cuda()
    draft = perturbed_copy(random_model(0), 0.3).cuda()
    for model in (target, draft):
        if fuse:
            model.fuse_projections()
        if graphs:
            model.enable_cuda_graphs(compile=compile)
    return target, draft


@pytest.mark.parametrize("compile, fuse", [(False, False), (True, False), (True, True)])
def test_graphed_generate_matches_eager_across_prompts(compile, fuse):
    # Several prompts of different lengths in a row: the graphed model reuses ONE cache, so a
    # stale slot or a stale `start` from the previous prompt would change the tokens.
    eager, _ = pair(graphs=False)
    graphed, _ = pair(graphs=True, compile=compile, fuse=fuse)
    for prompt in PROMPTS:
        expected = generate(eager, prompt, 12, temperature=0.0)
        assert generate(graphed, prompt, 12, temperature=0.0).tolist() == expected.tolist()
    # left-padded batches share the cache too, with a different `start` per row
    assert generate_batch(graphed, PROMPTS, 8, temperature=0.0) == generate_batch(eager, PROMPTS, 8, temperature=0.0)


def test_graphed_speculative_matches_eager():
    eager_target, eager_draft = pair(graphs=False)
    target, draft = pair(graphs=True)
    for prompt in PROMPTS:
        for temperature in (0.0, 1.0):
            g1, g2 = (torch.Generator("cuda").manual_seed(7) for _ in range(2))
            expected, stats_eager = speculative_generate(eager_target, eager_draft, prompt, 12, 3, temperature, generator=g1)
            tokens, stats = speculative_generate(target, draft, prompt, 12, 3, temperature, generator=g2)
            assert tokens.tolist() == expected.tolist()
            assert stats["accepted_per_block"] == stats_eager["accepted_per_block"]
        assert tokens.numel() == 12


def test_graphed_model_cannot_be_its_own_draft():
    target, _ = pair(graphs=True)
    with pytest.raises(ValueError, match="separate copy"):
        speculative_generate(target, target, PROMPTS[0], 4, 2, 0.0)


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


def test_no_host_sync_inside_the_decode_loops():
    # The CPU can queue the next decode steps while the GPU works only if nothing waits for the
    # GPU in between. So the number of waits must not grow with the number of tokens: a few at
    # the ends (the prompt's copy to the GPU, the tokens' copy back), plus, for speculative
    # decoding, exactly one per block (the accept/reject decision). A sampler that waits at
    # every token, as torch.multinomial does (it checks the probabilities with .item()), fails.
    target, draft = pair(graphs=True)
    prompt = PROMPTS[1]
    for n_new in (6, 18):                                          # record every graph first
        generate(target, prompt, n_new, temperature=1.0)
        speculative_generate(target, draft, prompt, n_new, 3, 1.0)
    plain = [count_host_syncs(lambda: generate(target, prompt, n_new, temperature=1.0)) for n_new in (6, 18)]
    assert plain[0] == plain[1] <= 4
    beyond_blocks = []
    for n_new in (6, 18):
        blocks = []
        syncs = count_host_syncs(lambda: blocks.extend(
            speculative_generate(target, draft, prompt, n_new, 3, 1.0)[1]["accepted_per_block"]))
        beyond_blocks.append(syncs - len(blocks))
    assert beyond_blocks[0] == beyond_blocks[1] and 0 <= beyond_blocks[0] <= 4
