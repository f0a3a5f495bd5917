"""Tests of speculative.py: sampling, the cached generation loop, and lossless speculative decoding.

Speculative decoding has one promise: its output is distributed EXACTLY as the target's own
sampling (and, greedy, identical token for token). Every test below checks that promise, or a
piece of it, against something computed independently of the code under test:

  - greedy: plain decoding with the target alone;
  - sampling, bit for bit: a reference implementation written here from PAPER.md 4.1's rule that
    recomputes every distribution with a fresh full forward pass (no KV cache) and draws the
    same random numbers in the same order. Equal outputs prove that the caches, rolled back
    after every rejected block, give the same distributions as recomputing from scratch;
  - sampling, in distribution: on a 4-6 token vocabulary the exact joint probability of the
    first 3 generated tokens is enumerated with full forward passes, and a chi-square test
    checks that speculative samples follow it -- and that the SAME samples reject the draft's
    joint, so the test has the power to see a wrong distribution;
  - the metrics: a target and draft whose distributions do not depend on the context make every
    draft token an i.i.d. accept test with alpha = 1 - TVD(p, q), so the measured alpha and tau
    must agree with alpha's exact value and with PAPER.md 5.2's formula for tau.

Random weights are drawn at unit scale (as in test_model.py): the library initialisation makes
every logit nearly zero, i.e. every distribution nearly uniform, where mistakes hide.
The models are tiny, so one CPU thread is faster than two (thread wake-ups cost more than the
arithmetic); the whole file runs in about 15 s.
"""

import collections
import copy
import math
import types

import pytest
import torch

from fast_decode import apply_decode_path, shortlist_head
from model import Llama, count_params, get_config
from evaluate import (ci_gaps, evaluate_pair, mean_ci95, memory_bound_speedup, predicted_block_efficiency,
                      separation_lines)
import speculative as speculative_module
from speculative import (AcceptanceCounts, Decoder, SpeculativeDecoder, block_stats, catch_up_cost, choose_gamma,
                         decoder_slots, draw, expected_tokens, expected_tokens_left, exponentials, loop_cost,
                         pays_for_catch_up, predicted_gain, race, sample_probs, sample_token, update_cost, verify,
                         verify_argmax, verify_draws, verify_greedy)

SIGNIFICANCE = 0.001   # chi-square tests: a correct implementation fails 1 time in 1000 seeds


# ----------------------------------------------------------------------------------------------
# Models and statistics helpers
# ----------------------------------------------------------------------------------------------

def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of probs (..., V), drawn as the decoders draw: the race on fresh exponentials."""
    return race(probs, exponentials(probs, generator))


# A one-layer model for the statistical tests: thousands of decodes must take seconds.
TINY = dict(n_layers=1, dim=16, n_heads=2, n_kv_heads=1, ffn_dim=32, max_seq_len=16)


def random_model(seed: int = 0, **overrides) -> Llama:
    """The "test" preset (2 layers, GQA) with O(1)-scale random weights: sharp, context-dependent."""
    torch.manual_seed(seed)
    model = Llama(get_config("test", **overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:                          # RMSNorm gains
                param.uniform_(0.5, 1.5)
            else:                                         # (out, in): unit-variance outputs
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]))
    return model


def perturbed_copy(model: Llama, noise: float, seed: int = 1) -> Llama:
    """A draft that mostly agrees with `model`: every weight moved by `noise` of its own std."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(noise * param.std() * torch.randn(param.shape, generator=generator))
    return draft


# ----------------------------------------------------------------------------------------------
# The decoders, called once: a fresh decoder with just the slots the call needs
# ----------------------------------------------------------------------------------------------

def plain_decode_batch(model: Llama, prompts: list[list[int]], max_new_tokens: int, *sampling, **options):
    """Decoder.generate of every prompt at once (left-padded): the new tokens of every row."""
    n_slots = max(map(len, prompts)) + max_new_tokens
    return Decoder(model, len(prompts), n_slots).generate(prompts, max_new_tokens, *sampling, **options)


def plain_decode(model: Llama, prompt_ids: list[int], max_new_tokens: int, *sampling, **options) -> torch.Tensor:
    """Plain decoding of one prompt: a 1-D LongTensor of the new tokens."""
    return torch.tensor(plain_decode_batch(model, [list(prompt_ids)], max_new_tokens, *sampling, **options)[0],
                        dtype=torch.long)


def speculative_decode(target: Llama, draft: Llama, prompt_ids: list[int], max_new_tokens: int, gamma: int = 4,
                       *sampling, **options):
    """SpeculativeDecoder.generate of one prompt: (new tokens, stats)."""
    n_slots = decoder_slots(target, draft, [prompt_ids], max_new_tokens, gamma)
    return SpeculativeDecoder(target, draft, n_slots).generate(prompt_ids, max_new_tokens, gamma, *sampling, **options)


@torch.no_grad()
def exact_joint(model: Llama, prompt: list[int], n_tokens: int, **sampling) -> torch.Tensor:
    """P(first n_tokens generated = s) for every s in V^n_tokens, flattened in row-major order.

    Chain rule over the tree of prefixes: one full forward pass (no cache) per tree level scores
    all V^step prefixes at once; sample_probs applies the same temperature / top-k / top-p
    processing that sampling uses. float64 products. (V^n_tokens,)
    """
    V = model.config.vocab_size
    joint, prefixes = torch.ones(1, dtype=torch.float64), [[]]
    for _ in range(n_tokens):
        logits = model(torch.tensor([prompt + prefix for prefix in prefixes]))[:, -1]  # (V^step, V)
        shortlist = getattr(model.output, "token_ids", None)          # a head over K tokens: the rest -inf
        if shortlist is not None:
            logits = torch.full((len(prefixes), V), float("-inf")).index_copy(1, shortlist, logits)
        next_probs = sample_probs(logits, **sampling).double()
        joint = (joint[:, None] * next_probs).flatten()
        prefixes = [prefix + [token] for prefix in prefixes for token in range(V)]
    return joint


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df): the regularised upper incomplete gamma Q(df/2, x/2).

    Numerical Recipes' method: the power series of the lower function P when x < a + 1, else
    the continued fraction of Q (modified Lentz). Both converge fast in their regions.
    """
    a, x = df / 2, statistic / 2
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)        # log(x^a e^-x / Gamma(a))
    if x < a + 1:
        term = total = 1 / a                                # P = front * sum_n x^n / (a (a+1) .. (a+n))
        denominator = a
        while term > 1e-16 * total:
            denominator += 1
            term *= x / denominator
            total += term
        return max(0.0, 1 - math.exp(log_front) * total)
    tiny = 1e-300                                           # Q = front * 1/(x+1-a- 1(1-a)/(x+3-a- ...))
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    fraction = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        fraction *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(log_front) * fraction


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's goodness-of-fit test of observed counts against exact cell probabilities.

    Cells expecting fewer than 5 counts are pooled (the usual validity rule of the chi-square
    approximation); a count in a cell of probability 0 is an outright rejection (p-value 0).
    """
    counts, expected = counts.double(), probs.double() * counts.sum()
    if (counts[expected == 0] > 0).any():
        return 0.0
    order = torch.argsort(expected)
    counts, expected = counts[order], expected[order]
    n_pooled = int((expected < 5).sum())
    while n_pooled < len(expected) and 0 < expected[:n_pooled].sum() < 5:
        n_pooled += 1                                       # the pool itself must expect >= 5
    cells_counts = torch.cat([counts[:n_pooled].sum().view(1), counts[n_pooled:]])
    cells_expected = torch.cat([expected[:n_pooled].sum().view(1), expected[n_pooled:]])
    real = cells_expected > 0                               # drop an empty pool of impossible cells
    cells_counts, cells_expected = cells_counts[real], cells_expected[real]
    statistic = float(((cells_counts - cells_expected) ** 2 / cells_expected).sum())
    return chi2_sf(statistic, len(cells_expected) - 1)


def tvd(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


# (statistic, df, P(X >= statistic)) from published chi-square tables: both branches of chi2_sf.
@pytest.mark.parametrize("statistic, df, p_value", [
    (3.841458820694124, 1, 0.05), (2.365973884375338, 3, 0.5), (29.58829844507442, 10, 0.001),
    (0.5, 2, math.exp(-0.25)), (9.0, 4, math.exp(-4.5) * 5.5), (124.342, 100, 0.05)])
def test_chi2_sf_matches_tables(statistic, df, p_value):
    assert chi2_sf(statistic, df) == pytest.approx(p_value, rel=1e-4)


def test_chi_square_pools_rare_cells_and_rejects_impossible_ones():
    probs = torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 32, 0])  # 64 draws: 4 + 2 + 2 pool into 8
    assert chi_square_p_value(torch.tensor([32, 16, 8, 4, 2, 2, 0]), probs) == pytest.approx(1.0)
    assert chi_square_p_value(torch.tensor([32, 16, 8, 0, 8, 0, 0]), probs) == pytest.approx(1.0)
    assert chi_square_p_value(torch.tensor([32, 16, 8, 4, 2, 1, 1]), probs) == 0.0   # impossible cell hit
    statistic = 12 ** 2 / 32 + 4 ** 2 / 16 + 8 ** 2 / 8 + 0                          # df = 4 cells - 1
    p_value = chi_square_p_value(torch.tensor([20, 20, 16, 0, 8, 0, 0]), probs)
    assert p_value == pytest.approx(chi2_sf(statistic, 3))


# ----------------------------------------------------------------------------------------------
# sample_probs and sample
# ----------------------------------------------------------------------------------------------

HAND_PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
HAND_LOGITS = HAND_PROBS.log()


def test_temperature_zero_is_one_hot_argmax():
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0))
    probs = sample_probs(logits, temperature=0)
    assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 11).float())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_divides_logits(temperature):
    logits = torch.randn(3, 11, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sample_probs(logits, temperature), torch.softmax(logits / temperature, -1))


@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_top_k_keeps_the_k_most_likely_in_proportion(top_k):
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    probs = sample_probs(logits, 1.0, top_k=top_k)
    full = torch.softmax(logits, -1)
    kept = torch.topk(logits, top_k, -1).indices
    assert ((probs > 0).sum(-1) == top_k).all()
    assert torch.equal(probs.gather(-1, kept) > 0, torch.ones(4, top_k, dtype=torch.bool))
    renormalised = full.gather(-1, kept) / full.gather(-1, kept).sum(-1, keepdim=True)
    assert torch.allclose(probs.gather(-1, kept), renormalised)


# probs [0.5, 0.3, 0.15, 0.05]: cumulative 0.5, 0.8, 0.95, 1. The nucleus is the shortest prefix
# whose mass reaches top_p. (Exact ties such as top_p = 0.8 are avoided: float32 rounding.)
@pytest.mark.parametrize("top_p, expected", [
    (0.49, [1.0, 0, 0, 0]), (0.51, [0.625, 0.375, 0, 0]), (0.79, [0.625, 0.375, 0, 0]),
    (0.81, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]), (0.96, HAND_PROBS.tolist()), (1.0, HAND_PROBS.tolist())])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, expected):
    assert torch.allclose(sample_probs(HAND_LOGITS, 1.0, top_p=top_p), torch.tensor(expected), atol=1e-6)


def test_top_k_is_applied_before_top_p():
    # top-k 2 leaves [0.625, 0.375], whose nucleus at 0.55 is token 0 alone. (top-p first would
    # keep tokens 0 and 1: 0.5 < 0.55.)
    assert torch.allclose(sample_probs(HAND_LOGITS, 1.0, top_k=2, top_p=0.55), torch.tensor([1.0, 0, 0, 0]))


@pytest.mark.parametrize("temperature, top_k, top_p", [(0, None, None), (0.7, None, None), (1.0, 3, None),
                                                       (1.3, None, 0.6), (0.5, 5, 0.9)])
def test_rows_are_distributions(temperature, top_k, top_p):
    logits = 3 * torch.randn(2, 5, 17, generator=torch.Generator().manual_seed(2))
    probs = sample_probs(logits.to(torch.bfloat16), temperature, top_k, top_p)
    assert probs.dtype == torch.float32 and probs.shape == (2, 5, 17)
    assert (probs >= 0).all() and torch.allclose(probs.sum(-1), torch.ones(2, 5))


def test_greedy_decoding_draws_no_random_numbers_and_picks_the_same_tokens():
    # At temperature 0 the distributions are one-hot: the random race would pick the same token,
    # so sample_token takes the argmax of the logits and leaves the generator alone (a CPU spends
    # most of a 49,152-token draw on the random numbers), and so do both decoders.
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    greedy = sample_token(logits, (0.0, None, None), generator)
    assert torch.equal(greedy, sample(sample_probs(logits, 0), torch.Generator().manual_seed(5)))
    assert torch.equal(greedy, logits.float().argmax(-1))
    assert torch.equal(generator.get_state(), state)
    model = random_model(0, vocab_size=32)
    tokens = plain_decode(model, [5, 9, 2], 12, temperature=0, generator=generator)
    assert torch.equal(generator.get_state(), state)             # plain greedy decoding drew nothing
    assert torch.equal(tokens, plain_decode(model, [5, 9, 2], 12, temperature=0))
    draft = perturbed_copy(model, noise=0.3)
    speculative_decode(model, draft, [5, 9, 2], 12, 3, temperature=0, generator=generator)
    assert torch.equal(generator.get_state(), state)             # nor did greedy speculative decoding
    assert sample_token(logits, (1.0, None, None), generator).shape == (3,)
    assert not torch.equal(generator.get_state(), state)         # at T > 0 it samples


def test_sample_keeps_shape_and_never_draws_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]]).expand(3, 2, 4)
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(probs, generator) for _ in range(200)])           # (200, 3, 2)
    assert draws.shape == (200, 3, 2)
    assert set(draws[:, :, 0].unique().tolist()) == {1, 2} and (draws[:, :, 1] == 3).all()


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, None, None), (1.3, 5, None),
                                                       (0.8, None, 0.9), (1.0, 7, 0.5), (0.0, None, None)])
def test_draw_picks_the_races_token_from_the_logits(temperature, top_k, top_p):
    """draw(logits, E) is the token race(sample_probs(logits), E) picks for the same E (the
    Gumbel-max form of the race), with bf16 logits too; a token top-k or top-p drops never wins."""
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 50, generator=generator)
    races = exponentials(logits, generator)
    probs = sample_probs(logits, temperature, top_k, top_p)
    tokens = draw(logits, races, temperature, top_k, top_p)
    assert torch.equal(tokens, race(probs, races) if temperature else logits.argmax(-1))
    assert (probs.gather(-1, tokens[:, None]) > 0).all()
    low = logits.bfloat16()
    assert torch.equal(draw(low, races, temperature, top_k, top_p),
                       race(sample_probs(low, temperature, top_k, top_p), races) if temperature else low.argmax(-1))


# ----------------------------------------------------------------------------------------------
# The autoregressive loop
# ----------------------------------------------------------------------------------------------

def test_batched_decoding_left_padding_matches_each_prompt_alone():
    model = random_model(0, vocab_size=32)
    prompts = [[1, 2, 3, 4, 5, 6], [7], [3, 9, 2]]
    batched = plain_decode_batch(model, prompts, 10, temperature=0)
    assert batched == [plain_decode(model, prompt, 10, temperature=0).tolist() for prompt in prompts]


def test_batched_decoding_cuts_each_row_at_its_own_eos():
    model = random_model(0, vocab_size=32)
    prompts = [[1, 2, 3, 4, 5, 6], [7], [3, 9, 2]]
    full = plain_decode_batch(model, prompts, 10, temperature=0)
    eos_id = full[0][3]
    cut = plain_decode_batch(model, prompts, 10, temperature=0, stop_ids={eos_id})
    assert cut == [row[: row.index(eos_id) + 1] if eos_id in row else row for row in full]
    assert len(cut[0]) <= 4


@pytest.mark.parametrize("chunk, expected_firsts", [(4, [0, 4, 8]), (8, [0, 5]), (50, [0])])
def test_a_prefill_in_chunks_writes_what_one_call_writes(chunk, expected_firsts):
    """StepRunner.prefill with chunks of C slots (the recorded form on a GPU, run eagerly here): chunks of C
    slots from the first, the last one moved back to end at the decoder's last slot (C=8: 0..7,
    then 5..12, not 8..15) or the whole cache when C exceeds it (C=50); the same keys and values
    in the prompt's slots as one call, so the same tokens greedy and sampled."""
    target = random_model(0, vocab_size=32)
    draft = perturbed_copy(target, noise=0.3)
    prompts = [[5, 1, 4, 1, 5, 9, 2, 6, 5, 3], [7, 2], [3, 9, 2, 8]]         # P = 10: prefill slots 0..8
    firsts = []
    target.register_forward_hook(lambda module, inputs, output: firsts.append(int(inputs[2][0])))
    caches, outputs = [], []
    for prefill_chunk in (None, chunk):
        decoder = Decoder(target, len(prompts), 13)                          # 10 + 3 new tokens
        decoder.steps.prefill_chunk = prefill_chunk
        outputs.append([decoder.generate(prompts, 3, temperature=0),
                        decoder.generate(prompts, 3, generator=torch.Generator().manual_seed(1))])
        firsts.clear()
        decoder.steps.prefill(target, decoder.tokens, decoder.cache, 0, 9)
        caches.append([layer[:, :, :9] for layer in decoder.cache.k + decoder.cache.v])
    assert firsts == expected_firsts
    for chunked, whole in zip(caches[1], caches[0]):
        torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    assert outputs[1] == outputs[0]
    speculative = []
    for prefill_chunk in (None, chunk):
        decoder = SpeculativeDecoder(target, draft, 22)
        decoder.steps.prefill_chunk = prefill_chunk
        speculative.append([decoder.generate(prompts[0], 6, 3, temperature=0)[0].tolist(),
                            decoder.generate(prompts[0], 6, 3, generator=torch.Generator().manual_seed(2))[0].tolist()])
    assert speculative[1] == speculative[0]


# ----------------------------------------------------------------------------------------------
# verify: the rejection-sampling rule on hand-built distributions
# ----------------------------------------------------------------------------------------------

def as_ints(tensors) -> tuple[int, ...]:
    return tuple(int(t) for t in tensors)


def test_verify_greedy_accepts_the_matching_prefix():
    def one_hot(tokens: list[int]) -> torch.Tensor:       # temperature 0: one-hot distributions
        return torch.nn.functional.one_hot(torch.tensor(tokens), 5).float()

    draft_tokens = torch.tensor([2, 4, 1])
    for target_tokens, expected in (([2, 4, 3, 0], (2, 3)),    # agrees on 2 tokens, then wants 3
                                    ([2, 4, 1, 0], (3, 0)),    # agrees on all: bonus = argmax p_4
                                    ([4, 4, 1, 0], (0, 4))):   # first token wrong: nothing accepted
        target_probs = one_hot(target_tokens)
        assert as_ints(verify(draft_tokens, one_hot([2, 4, 1]), target_probs, *verify_draws(target_probs))) == expected
        noise = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
        target_logits = 5 * one_hot(target_tokens) + 0.1 * noise                 # argmax: target_tokens
        assert as_ints(verify_greedy(draft_tokens, target_logits)) == expected


def test_verify_greedy_is_verify_on_the_one_hot_distributions():
    # The decoders' shortcut at T=0 against the general rule fed sample_probs(., 0), on random
    # blocks (draft tokens drawn near the target's argmaxes, so that every prefix length occurs).
    generator = torch.Generator().manual_seed(0)
    lengths = set()
    for _ in range(200):
        gamma = int(torch.randint(1, 6, (1,), generator=generator))
        target_logits = torch.randn(gamma + 1, 7, generator=generator)
        draft_tokens = target_logits[:gamma].argmax(-1)
        wrong = torch.rand(gamma, generator=generator) < 0.3
        draft_tokens = torch.where(wrong, torch.randint(0, 7, (gamma,), generator=generator), draft_tokens)
        draft_probs = torch.nn.functional.one_hot(draft_tokens, 7).float()
        target_probs = sample_probs(target_logits, 0)
        expected = as_ints(verify(draft_tokens, draft_probs, target_probs, *verify_draws(target_probs, generator)))
        assert as_ints(verify_greedy(draft_tokens, target_logits)) == expected
        lengths.add((expected[0], gamma))
    assert {n for n, _ in lengths} == set(range(6)) and any(n < g for n, g in lengths)


def test_verify_accepts_exactly_while_u_q_below_p():
    """Replay verify's uniforms u from a copy of the generator: x_i is accepted iff u_i q(x_i) < p(x_i),
    and the token after a rejection always lies where p > q (the residual's support)."""
    draft_probs = torch.tensor([[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.5, 0.0, 0.5]])
    target_probs = torch.tensor([[0.4, 0.3, 0.3, 0.0], [0.0, 0.2, 0.3, 0.5], [0.0, 0.2, 0.8, 0.0],
                                 [0.0, 0.0, 0.7, 0.3]])
    draft_tokens = torch.tensor([1, 2, 1])                 # p/q = 0.5, 1.2 (always kept), 0.4
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        replay = torch.Generator().set_state(generator.get_state())
        u = torch.rand(3, generator=replay)
        q_x, p_x = draft_probs[range(3), draft_tokens], target_probs[range(3), draft_tokens]
        expected = next((i for i in range(3) if not u[i] * q_x[i] < p_x[i]), 3)
        n_accepted, next_token = as_ints(verify(draft_tokens, draft_probs, target_probs,
                                                *verify_draws(target_probs, generator)))
        assert n_accepted == expected
        support = target_probs[3] > 0 if n_accepted == 3 else target_probs[n_accepted] > draft_probs[n_accepted]
        assert support[next_token], (n_accepted, int(next_token))
        seen.add(n_accepted)
    assert seen == {0, 2, 3}                               # x_2 is never rejected


def test_verify_output_is_distributed_as_the_target():
    """gamma = 1: x ~ q, then keep x or replace it. The first output token must follow p, not q."""
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    bonus = torch.tensor([0.25, 0.25, 0.25, 0.25])
    generator = torch.Generator().manual_seed(0)
    counts, accepted = torch.zeros(4), 0
    n_draws = 6000
    for _ in range(n_draws):
        x = sample(q, generator).view(1)
        target_probs = torch.stack([p, bonus])
        n_accepted, next_token = as_ints(verify(x, q[None], target_probs, *verify_draws(target_probs, generator)))
        counts[int(x) if n_accepted == 1 else int(next_token)] += 1
        accepted += n_accepted
    assert chi_square_p_value(counts, p) > SIGNIFICANCE, counts
    assert chi_square_p_value(counts, q) < SIGNIFICANCE, "the test cannot tell p from q"
    alpha = 1 - tvd(p, q)                                  # P(accept) = sum_x min(p, q) = 0.6
    assert abs(accepted / n_draws - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / n_draws)


# ----------------------------------------------------------------------------------------------
# Speculative decoding: exact agreement with the target
# ----------------------------------------------------------------------------------------------

def greedy_pair() -> tuple[Llama, Llama]:
    """A 32-token target and a draft close enough to agree on some greedy tokens, not all."""
    target = random_model(0, vocab_size=32)
    return target, perturbed_copy(target, noise=0.1)


@pytest.mark.parametrize("prompt", [[1], [5, 9, 2, 7, 30]])
@pytest.mark.parametrize("path", ["eager", "few-row-matmuls"])
def test_greedy_speculative_equals_greedy_generate(prompt, path):
    target, draft = greedy_pair()
    expected = plain_decode(target, prompt, 24, temperature=0)     # eager: the reference
    apply_decode_path([target, draft], path)
    accepted = []
    for gamma in [1, 2, 3, 5]:
        tokens, stats = speculative_decode(target, draft, prompt, 24, gamma, temperature=0)
        assert tokens.tolist() == expected.tolist(), f"gamma={gamma}"
        accepted += [n / gamma for n in stats["accepted_per_block"]]
    assert min(accepted) == 0 and max(accepted) == 1 and 0 < sum(accepted) / len(accepted) < 1, \
        "the pair must exercise both full acceptance and rejection"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("same_object", [True, False])
def test_draft_identical_to_target_is_always_accepted(temperature, same_object):
    target = random_model(0, vocab_size=32)
    draft = target if same_object else copy.deepcopy(target)
    gamma, max_new_tokens = 3, 18
    tokens, stats = speculative_decode(target, draft, [4, 2], max_new_tokens, gamma, temperature,
                                         generator=torch.Generator().manual_seed(0))
    assert tokens.numel() == max_new_tokens
    assert stats["accepted_per_block"] == [gamma] * math.ceil(max_new_tokens / (gamma + 1))
    assert stats["block_efficiency"] == gamma + 1 and stats["acceptance_rate"] == 1.0


@torch.no_grad()
def reference_speculative(target: Llama, draft: Llama, prompt: list[int], max_new_tokens: int,
                          gamma: int, generator: torch.Generator, **sampling) -> tuple[list[int], list[int]]:
    """PAPER.md 4.1's speculative sampling with no KV cache: every distribution from a fresh full pass.

    Draws random numbers in the order speculative.py documents: gamma draft tokens, then gamma
    uniforms u, then the replacement or bonus token. Returns (new tokens, accepted per block).
    """
    def next_probs(model: Llama, tokens: list[int]) -> torch.Tensor:       # (V,)
        return sample_probs(model(torch.tensor([tokens]))[0, -1], **sampling)

    seq, accepted_per_block = list(prompt), []
    while len(seq) - len(prompt) < max_new_tokens:
        drafted, q = [], []
        for _ in range(gamma):
            q.append(next_probs(draft, seq + drafted))
            drafted.append(int(sample(q[-1], generator)))
        p = sample_probs(target(torch.tensor([seq + drafted]))[0, -(gamma + 1):], **sampling)  # (gamma+1, V)
        u = torch.rand(gamma, generator=generator)
        n = 0
        while n < gamma and u[n] * q[n][drafted[n]] < p[n, drafted[n]]:   # accept w.p. min(1, p/q)
            n += 1
        if n == gamma:
            next_token = sample(p[gamma], generator)                        # bonus token
        else:
            residual = (p[n] - q[n]).clamp(min=0)                           # norm(max(p - q, 0))
            next_token = sample(residual / residual.sum(), generator)
        seq += drafted[:n] + [int(next_token)]
        accepted_per_block.append(n)
    return seq[len(prompt): len(prompt) + max_new_tokens], accepted_per_block


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.8, top_k=5),
                                      dict(temperature=1.2, top_p=0.9)])
def test_cached_speculative_equals_uncached_reference(sampling):
    """Same random stream, same tokens: the rolled-back caches behave as fresh full passes."""
    target = random_model(0, vocab_size=16)
    draft = perturbed_copy(target, noise=0.3)
    accepted = []
    for gamma in [1, 2, 4]:
        for seed in range(3):
            prompt = [3, 1, 4][: seed + 1]
            tokens, stats = speculative_decode(target, draft, prompt, 12, gamma, **sampling,
                                                 generator=torch.Generator().manual_seed(seed))
            expected, expected_accepted = reference_speculative(
                target, draft, prompt, 12, gamma, torch.Generator().manual_seed(seed), **sampling)
            assert tokens.tolist() == expected, f"gamma={gamma} seed={seed}"
            assert stats["accepted_per_block"] == expected_accepted
            accepted += [(n, gamma) for n in stats["accepted_per_block"][:-1]]   # blocks with a successor
    assert any(n < g for n, g in accepted), "no rejected block was followed by another"
    assert any(0 < n for n, _ in accepted) and any(n == g for n, g in accepted)


@pytest.mark.parametrize("gamma", [1, 2, 3, 5])
@pytest.mark.parametrize("max_new_tokens", [1, 7])
def test_returns_exactly_max_new_tokens_and_consistent_stats(gamma, max_new_tokens):
    target = random_model(0, vocab_size=16)
    draft = perturbed_copy(target, noise=0.3)
    tokens, stats = speculative_decode(target, draft, [1, 2], max_new_tokens, gamma,
                                         generator=torch.Generator().manual_seed(gamma))
    blocks = stats["accepted_per_block"]
    assert tokens.shape == (max_new_tokens,) and tokens.dtype == torch.long
    assert stats["new_tokens"] == max_new_tokens
    assert stats["target_calls"] == len(blocks) and stats["draft_calls"] == gamma * len(blocks)
    assert sum(n + 1 for n in blocks[:-1]) < max_new_tokens <= sum(n + 1 for n in blocks)  # no extra block
    assert stats["block_efficiency"] == pytest.approx(sum(n + 1 for n in blocks) / len(blocks))


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_eos_stops_like_generate(gamma):
    target, draft = greedy_pair()
    prompt = [5, 9, 2, 7, 30]
    greedy = plain_decode(target, prompt, 16, temperature=0).tolist()
    eos_id = greedy[5]                                     # a token the target emits early
    stop = greedy.index(eos_id)
    assert stop >= 2
    tokens, _ = speculative_decode(target, draft, prompt, 16, gamma, temperature=0, stop_ids={eos_id})
    assert tokens.tolist() == greedy[: stop + 1]
    assert tokens.tolist() == plain_decode(target, prompt, 16, temperature=0, stop_ids={eos_id}).tolist()


@pytest.mark.parametrize("run_ahead", [0, 1])
def test_plain_decoding_runs_at_most_one_step_past_every_rows_stop_token(run_ahead):
    # The baseline of every speed-up: a decoder that ran steps after a stop token and dropped
    # their tokens would be timed for work it threw away, inflating the speed-up. Reading each
    # token after the next step is launched (run_ahead 1, a GPU's default) runs one such step.
    model = random_model(0, vocab_size=32)
    prompts = [[5, 9, 2], [7, 30]]
    greedy = plain_decode_batch(model, prompts, 20, temperature=0)
    stop_ids = {greedy[0][3], greedy[1][2]}                 # each row stops within 4 tokens
    lengths = [next(i for i, token in enumerate(row) if token in stop_ids) + 1 for row in greedy]
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[1]))
    decoder = Decoder(model, len(prompts), 25)
    decoder.steps.run_ahead = run_ahead
    rows = decoder.generate(prompts, 20, temperature=0, stop_ids=stop_ids)
    assert rows == [row[:n] for row, n in zip(greedy, lengths)]
    assert calls == [2] + [1] * (max(lengths) + run_ahead)   # the prefill, one step per token made


def test_sampled_output_ends_at_its_first_eos():
    target = random_model(0, vocab_size=8)
    draft = perturbed_copy(target, noise=0.3)
    lengths = []
    for seed in range(10):
        tokens, stats = speculative_decode(target, draft, [1], 12, 3, stop_ids={0},
                                             generator=torch.Generator().manual_seed(seed))
        tokens = tokens.tolist()
        assert 0 not in tokens[:-1] and (tokens[-1] == 0 or len(tokens) == 12), tokens
        assert stats["new_tokens"] == len(tokens)
        lengths.append(len(tokens))
    assert min(lengths) < 12 and max(lengths) > 1, lengths


# ----------------------------------------------------------------------------------------------
# Speculative decoding: the output distribution, by chi-square against the exact joint
# ----------------------------------------------------------------------------------------------

# (vocabulary, gamma, prompt, sampling). Three generated tokens span: acceptances, rejections at
# each draft position, the bonus token (after gamma accepted), and a second block on top of a
# rolled-back cache. gamma=1 makes three tokens span at least two blocks; a one-token prompt
# skips the target's prefill.
STAT_CASES = [
    (4, 2, [1, 2], dict(temperature=1.0)),
    (6, 1, [3], dict(temperature=0.7, top_k=4)),
    (6, 3, [2, 5], dict(temperature=1.0, top_p=0.85)),
]


@pytest.mark.parametrize("vocab_size, gamma, prompt, sampling", STAT_CASES)
@pytest.mark.parametrize("path", ["eager", "few-row-matmuls"])
def test_speculative_samples_follow_the_target_joint_not_the_draft(vocab_size, gamma, prompt, sampling, path):
    n_tokens, n_runs = 3, 600
    target = random_model(0, vocab_size=vocab_size, **TINY)
    draft = perturbed_copy(target, noise=0.5)
    target_joint = exact_joint(target, prompt, n_tokens, **sampling)   # computed eagerly: the reference
    draft_joint = exact_joint(draft, prompt, n_tokens, **sampling)
    apply_decode_path([target, draft], path)
    generator = torch.Generator().manual_seed(0)
    counts, blocks = torch.zeros(vocab_size ** n_tokens), []
    for _ in range(n_runs):
        tokens, stats = speculative_decode(target, draft, prompt, n_tokens, gamma, **sampling,
                                             generator=generator)
        counts[sum(int(t) * vocab_size ** (n_tokens - 1 - i) for i, t in enumerate(tokens))] += 1
        blocks += stats["accepted_per_block"]
    assert set(blocks) == set(range(gamma + 1)), "every acceptance count must occur"
    p_target = chi_square_p_value(counts, target_joint)
    assert p_target > SIGNIFICANCE, f"speculative samples do not follow the target: p={p_target:.2g}"
    p_draft = chi_square_p_value(counts, draft_joint)
    assert p_draft < SIGNIFICANCE, f"no power: the draft's joint (TVD {tvd(target_joint, draft_joint):.2f}) " \
                                   f"was not rejected, p={p_draft:.2g}"


@pytest.mark.parametrize("path", ["eager", "few-row-matmuls"])
def test_a_draft_over_a_shortlist_still_samples_the_target_joint(path):
    """fast_decode.ShortlistHead: the draft never proposes tokens 1, 4 and 5, yet they come out
    exactly as often as the target writes them (through the residual draw after a rejection)."""
    vocab_size, gamma, prompt, sampling, n_tokens, n_runs = 6, 2, [2, 5], dict(temperature=1.0), 3, 600
    target = random_model(0, vocab_size=vocab_size, **TINY)
    draft = perturbed_copy(target, noise=0.3)
    target_joint = exact_joint(target, prompt, n_tokens, **sampling)
    full_draft_joint = exact_joint(draft, prompt, n_tokens, **sampling)     # every cell > 0: the power check
    shortlist_head(draft, [0, 2, 3])
    draft_joint = exact_joint(draft, prompt, n_tokens, **sampling).view(*[vocab_size] * n_tokens)
    outside_ids = [1, 4, 5]
    for position in range(n_tokens):          # the draft itself can never write 1, 4 or 5
        assert draft_joint.index_select(position, torch.tensor(outside_ids)).sum() == 0
    apply_decode_path([target, draft], path)
    generator = torch.Generator().manual_seed(0)
    counts, outside = torch.zeros(vocab_size ** n_tokens), 0
    for _ in range(n_runs):
        tokens, _ = speculative_decode(target, draft, prompt, n_tokens, gamma, **sampling, generator=generator)
        counts[sum(int(t) * vocab_size ** (n_tokens - 1 - i) for i, t in enumerate(tokens))] += 1
        outside += sum(int(t) in outside_ids for t in tokens)
    assert outside > 50, "tokens outside the shortlist must still be written"
    p_target = chi_square_p_value(counts, target_joint)
    assert p_target > SIGNIFICANCE, f"speculative samples do not follow the target: p={p_target:.2g}"
    # The shortlisted draft's joint is 0 where 1, 4 or 5 appear, which any such count rejects; the
    # power check uses the draft's joint before the shortlist, which has no empty cell.
    assert chi_square_p_value(counts, full_draft_joint) < SIGNIFICANCE, "no power: the draft's joint was not rejected"
    # At T=0 (argmaxes, verify_greedy) the output is the target's greedy decoding, shortlist or not.
    greedy, _ = speculative_decode(target, draft, prompt, 12, gamma, temperature=0)
    assert torch.equal(greedy, plain_decode(target, prompt, 12, temperature=0))
    assert any(int(t) in outside_ids for t in greedy)      # and it writes tokens the draft cannot



# The engines' rule (verify_argmax): the draft proposes its argmax, the target keeps it while it
# equals its own sample. Lossless by construction: the same chi-square test, with power.
@pytest.mark.parametrize("vocab_size, gamma, prompt, sampling", [STAT_CASES[0], STAT_CASES[2]])
def test_argmax_drafting_samples_the_target_joint_not_the_draft(vocab_size, gamma, prompt, sampling):
    n_tokens, n_runs = 3, 600
    target = random_model(0, vocab_size=vocab_size, **TINY)
    draft = perturbed_copy(target, noise=0.5)
    target_joint = exact_joint(target, prompt, n_tokens, **sampling)
    draft_joint = exact_joint(draft, prompt, n_tokens, **sampling)
    generator = torch.Generator().manual_seed(0)
    counts, blocks = torch.zeros(vocab_size ** n_tokens), []
    for _ in range(n_runs):
        tokens, stats = speculative_decode(target, draft, prompt, n_tokens, gamma, **sampling,
                                           generator=generator, draft_mode="argmax")
        counts[sum(int(t) * vocab_size ** (n_tokens - 1 - i) for i, t in enumerate(tokens))] += 1
        blocks += stats["accepted_per_block"]
    assert set(blocks) == set(range(gamma + 1)), "every acceptance count must occur"
    p_target = chi_square_p_value(counts, target_joint)
    assert p_target > SIGNIFICANCE, f"argmax drafting does not follow the target: p={p_target:.2g}"
    assert chi_square_p_value(counts, draft_joint) < SIGNIFICANCE, "no power: the draft's joint was not rejected"


@pytest.mark.parametrize("gamma", [1, 3])
def test_argmax_drafting_equals_the_rejection_rule_at_temperature_0(gamma):
    target = random_model(0, vocab_size=32)
    draft = perturbed_copy(target, noise=0.4)
    for prompt in ([5, 9, 2], [1], [3, 3, 7, 1]):
        runs = [speculative_decode(target, draft, prompt, 20, gamma, temperature=0, draft_mode=mode)
                for mode in ("sample", "argmax")]
        assert torch.equal(runs[0][0], runs[1][0])
        assert runs[0][1]["accepted_per_block"] == runs[1][1]["accepted_per_block"]
        assert torch.equal(runs[0][0], plain_decode(target, prompt, 20, temperature=0))
    # The decoders send both modes to verify_greedy at T = 0; the engines' rule itself, given
    # T = 0 (where draw takes the target's argmax), gives the same answer for every prefix length.
    logits = torch.randn(gamma + 1, 32)
    argmaxes = logits.argmax(-1)
    for n_matching in range(gamma + 1):
        draft_tokens = argmaxes[:gamma].clone()
        draft_tokens[n_matching:] = (draft_tokens[n_matching:] + 1) % 32          # mismatch from there on
        expected = verify_greedy(draft_tokens, logits)
        assert [int(x) for x in expected] == [n_matching, int(argmaxes[n_matching])]
        races = exponentials(logits)
        assert [int(x) for x in verify_argmax(draft_tokens, logits, races, 0.0)] == [int(x) for x in expected]


def test_argmax_drafting_accepts_with_the_target_probability_of_the_draft_argmax():
    """verify_argmax keeps a draft token with probability p(argmax q), not sum_x min(p, q): on
    context-free models every test is i.i.d., and the two differ by far more than the noise."""
    target = context_free_model([2.0, 1.0, 0.0, 0.0, -1.0, 0.5])
    draft = context_free_model([0.5, 1.0, 1.5, 0.0, 0.0, 0.0])        # its argmax: token 2
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0, 0.0, -1.0, 0.5]), -1)
    q = torch.softmax(torch.tensor([0.5, 1.0, 1.5, 0.0, 0.0, 0.0]), -1)
    engine_alpha, rejection_alpha = float(p[2]), float(torch.minimum(p, q).sum())
    assert rejection_alpha - engine_alpha > 0.4
    _, stats = speculative_decode(target, draft, [0], 800, 3, generator=torch.Generator().manual_seed(0),
                                  draft_mode="argmax")
    tests = stats["accept_tests"]
    assert abs(stats["acceptance_rate"] - engine_alpha) < 4 * math.sqrt(engine_alpha * (1 - engine_alpha) / tests)
    # i.i.d. tests: every position's conditional acceptance alpha_k is alpha too.
    for accepted, tested in zip(stats["accepted_at"], stats["tested_at"]):
        assert abs(accepted / tested - engine_alpha) < 4 * math.sqrt(engine_alpha * (1 - engine_alpha) / tested)


def test_an_unknown_draft_mode_is_rejected():
    target = random_model(0, vocab_size=16)
    with pytest.raises(ValueError, match="draft mode"):
        speculative_decode(target, perturbed_copy(target, 0.3), [1, 2], 5, 2, draft_mode="greedy")

# ----------------------------------------------------------------------------------------------
# The metrics: alpha and tau on an i.i.d. case, and hand-computed values
# ----------------------------------------------------------------------------------------------

def context_free_model(logits: list[float]) -> Llama:
    """A model whose next-token logits are `logits` whatever the context.

    The attention and MLP output projections (wo, w2) are zero, so every block adds nothing and
    the final hidden state is the token's embedding; every embedding is the all-ones vector, whose
    RMSNorm is itself (up to eps). The LM head then reads the logits from its first column.
    """
    model = Llama(get_config("test", vocab_size=len(logits), **{**TINY, "max_seq_len": 1024})).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        model.tok_embeddings.weight.fill_(1.0)
        model.output.weight.zero_()
        model.output.weight[:, 0] = torch.tensor(logits)
    return model


def test_measured_tau_and_alpha_match_the_iid_prediction():
    target = context_free_model([2.0, 1.0, 0.0, 0.0, -1.0, 0.5])
    draft = context_free_model([0.5, 1.0, 1.5, 0.0, 0.0, 0.0])
    tokens = torch.randint(0, 6, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p, q = torch.softmax(target(tokens)[0], -1), torch.softmax(draft(tokens)[0], -1)  # (20, V)
    assert torch.allclose(p, p[0].expand_as(p)) and torch.allclose(q, q[0].expand_as(q)), "context leaks in"
    alpha = 1 - tvd(p[0], q[0])                            # PAPER.md 3.2: at T=1, alpha = 1 - TVD(p, q)
    assert 0.5 < alpha < 0.8

    gamma = 3
    _, stats = speculative_decode(target, draft, [0], 800, gamma, generator=torch.Generator().manual_seed(0))
    blocks = stats["accepted_per_block"]
    # Per block, n accepted ~ truncated geometric: P(n = j) = alpha^j (1 - alpha), P(n = gamma) = alpha^gamma.
    law = torch.tensor([alpha ** j * (1 - alpha) for j in range(gamma)] + [alpha ** gamma], dtype=torch.float64)
    tau_values = torch.arange(1, gamma + 2, dtype=torch.float64)            # tokens per block: n + 1
    tau_mean = float((law * tau_values).sum())
    tau_se = math.sqrt(float((law * (tau_values - tau_mean) ** 2).sum()) / len(blocks))
    assert tau_mean == pytest.approx(predicted_block_efficiency(alpha, gamma))
    assert abs(stats["block_efficiency"] - tau_mean) < 4 * tau_se, (stats["block_efficiency"], tau_mean, tau_se)
    tests = sum(n + 1 if n < gamma else n for n in blocks)
    assert abs(stats["acceptance_rate"] - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / tests)
    predicted = predicted_block_efficiency(stats["acceptance_rate"], gamma)
    assert abs(stats["block_efficiency"] - predicted) < 6 * tau_se   # PAPER.md 5.2's correctness check


def test_block_stats_by_hand():
    stats = block_stats([2, 0, 3], [3, 3, 3], n_tokens=8, seconds=0.5)
    assert stats["block_efficiency"] == pytest.approx(8 / 3)            # (2+1 + 0+1 + 3+1) / 3 blocks
    assert stats["acceptance_rate"] == pytest.approx(5 / 7)             # tests: 3 + 1 + 3 (full block)
    assert (stats["target_calls"], stats["draft_calls"], stats["new_tokens"]) == (3, 9, 8)
    assert math.isnan(block_stats([], [], 0, 0.0)["block_efficiency"])
    # A short last block (drafted 1 at the end of a context) fully accepted made 1 test, not gamma.
    short = block_stats([2, 1], [3, 1], n_tokens=5, seconds=0.1)
    assert short["acceptance_rate"] == pytest.approx(3 / 4)             # tests: 3 + 1
    # Per position: the 1st token was tested in all 3 blocks and accepted in 2; the 2nd tested in
    # the 2 blocks that accepted the 1st, accepted in both; the 3rd tested in 2, accepted in 1.
    assert (stats["tested_at"], stats["accepted_at"]) == ([3, 2, 2], [2, 2, 1])
    assert (short["tested_at"], short["accepted_at"]) == ([2, 1, 1], [2, 1, 0])   # the short block: 1 test
    # positions drafted but never reached (a rejection at the 1st) count 0 tests, not nothing
    assert (block_stats([0], [3], 1, 0.1)["tested_at"], block_stats([0], [3], 1, 0.1)["accepted_at"]) == ([1, 0, 0],
                                                                                                         [0, 0, 0])


def test_predicted_block_efficiency_by_hand():
    assert predicted_block_efficiency(0.5, 2) == pytest.approx(1.75)     # 1 + 0.5 + 0.25
    assert predicted_block_efficiency(0.0, 4) == 1.0
    assert predicted_block_efficiency(1.0, 4) == 5.0
    assert predicted_block_efficiency(0.999999, 4) == pytest.approx(5.0, abs=1e-4)


def test_memory_bound_speedup_by_hand():
    assert memory_bound_speedup(100, 10, 2.0, 4) == pytest.approx(10 * 2.0 / 14)   # c tau / (c + gamma)
    assert memory_bound_speedup(1000, 10, 1.0, 4) < 1.0                             # nothing accepted: a loss


def test_mean_ci95_by_hand():
    mean, half_width = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half_width == pytest.approx(1.96 * math.sqrt((5 / 3) / 4))
    mean, half_width = mean_ci95([3.0])
    assert mean == 3.0 and math.isnan(half_width)


def test_evaluate_pair_pools_runs_seeded_per_prompt():
    target = random_model(0, vocab_size=16)
    draft = perturbed_copy(target, noise=0.3)
    prompts, gammas = [[1], [2, 3], [4, 5, 6]], [2, 3]
    plain = Decoder(target, 1, decoder_slots(target, None, prompts, 10))
    results = evaluate_pair(target, draft, prompts, gammas, 1.0, 10, seed=7, plain=plain)
    assert [result["gamma"] for result in results] == gammas
    for gamma, result in zip(gammas, results):
        runs = [speculative_decode(target, draft, prompt, 10, gamma, 1.0,
                                     generator=torch.Generator().manual_seed(7 + i))[1]   # seed + prompt index
                for i, prompt in enumerate(prompts)]
        taus = [run["block_efficiency"] for run in runs]
        blocks = [n for run in runs for n in run["accepted_per_block"]]
        alpha = sum(blocks) / sum(n + 1 if n < gamma else n for n in blocks)
        assert result["block_efficiency"] == pytest.approx(sum(taus) / 3)
        assert result["ci95"] == pytest.approx(mean_ci95(taus)[1])
        assert result["acceptance_rate"] == pytest.approx(alpha)
        assert result["predicted_block_efficiency"] == pytest.approx(predicted_block_efficiency(alpha, gamma))
        assert result["mbsu"] == pytest.approx(memory_bound_speedup(count_params(target), count_params(draft),
                                                                    result["block_efficiency"], gamma))
        assert result["baseline_tokens_per_s"] == results[0]["baseline_tokens_per_s"] > 0    # one baseline per call
        assert result["speedup"] == pytest.approx(result["tokens_per_s"] / result["baseline_tokens_per_s"])


def test_evaluate_pair_keeps_the_costs_auto_chose_from():
    """An "auto" row carries the step costs in ms: as measure_costs measured them, and as the
    loop's timings left them after the row's runs (the decoder's own, loop_cost)."""
    target = random_model(0, vocab_size=16)
    draft = perturbed_copy(target, noise=0.3)
    prompts = [[1], [2, 3]]
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, prompts, 10, 3))
    measured, measure = [], decoder.measure_costs

    def recorded_measure(*args):
        measured.append(copy.deepcopy(measure(*args)))
        return measure.__self__.costs[((1.0, None, None), "sample")]
    decoder.measure_costs = recorded_measure
    fixed, auto = evaluate_pair(target, draft, prompts, [2, "auto"], 1.0, 10, seed=7, decoder=decoder)
    assert "costs_ms" not in fixed
    after = decoder.costs[((1.0, None, None), "sample")]
    assert auto["costs_ms"]["after"] == {"plain": round(loop_cost(after, 0) * 1e3, 4),
                                         "block": {g: round(loop_cost(after, g) * 1e3, 4) for g in (1, 2)},
                                         "catch_up": {part: round(seconds * 1e3, 6) for part, seconds
                                                      in after["catch_up"].items()}}
    assert auto["costs_ms"]["measured"]["block"].keys() == {1, 2}
    assert auto["costs_ms"]["measured"]["plain"] == round(measured[0]["plain"] * 1e3, 4)
    per_token = measured[0]["catch_up"]["per_token"]
    assert auto["costs_ms"]["measured"]["catch_up"]["per_token"] == round(per_token * 1e3, 6)
    assert auto["costs_ms"]["measured"] != auto["costs_ms"]["after"]          # the loop moved them
    assert "auto_trace" not in fixed and len(auto["auto_trace"]) == len(prompts)
    for trace in auto["auto_trace"]:            # every iteration: a plain step's token, a block's n + 1
        iterations = [tuple(map(int, step.split(":"))) if ":" in step else (0, 0) for step in trace.split()]
        assert sum(n + 1 for _, n in iterations) >= 10 > sum(n + 1 for _, n in iterations[:-1])
        assert all(0 <= n <= gamma <= 2 for gamma, n in iterations)
    assert auto["mean_gamma"] == pytest.approx(sum(int(step.split(":")[0]) for trace in auto["auto_trace"]
                                                   for step in trace.split()) /
                                               sum(len(trace.split()) for trace in auto["auto_trace"]))


def test_evaluate_pair_warms_up_without_moving_the_costs(monkeypatch):
    """The warm-up's calls pay one-off costs (compiling, recording): they time nothing into the
    loop's factors (weight 0), the timed runs after them do, and the decoder's weight is restored."""
    target = random_model(0, vocab_size=16)
    draft = perturbed_copy(target, noise=0.3)
    prompts = [[1, 4, 2], [2, 3, 5, 7]]
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, prompts, 10, 3))
    weights, update = [], speculative_module.update_cost
    monkeypatch.setattr(speculative_module, "update_cost", lambda costs, gamma, seconds, weight:
                        weights.append(weight) or update(costs, gamma, seconds, weight))
    evaluate_pair(target, draft, prompts, [2, "auto"], 0.0, 10, seed=7, decoder=decoder,
                  plain=Decoder(target, 1, decoder_slots(target, None, prompts, 10)))
    warm_up = weights.index(decoder.cost_update)                  # the first timing of a timed run
    assert warm_up > 0 and set(weights[:warm_up]) == {0} and set(weights[warm_up:]) == {1 / 8}
    assert decoder.cost_update == 1 / 8
    # Nor do its answers (of a block or two) count among the answers so far: only the timed runs'
    assert len(decoder.answer_lengths[((0.0, None, None), "sample")]) == 2 * len(prompts)


def test_evaluate_pair_times_plain_and_speculative_decoding_prompt_by_prompt(monkeypatch):
    # The baseline is interleaved with the speculative runs: after the untimed warm-up, each
    # prompt is decoded plainly (with its seed, the full length) right before its speculative
    # runs at every gamma, so drift of the machine's speed reaches both sides of the ratio.
    target = random_model(0, vocab_size=16)
    draft = perturbed_copy(target, noise=0.3)
    prompts, gammas = [[1], [2, 3], [4, 5, 6]], [1, 3]
    calls, seeds = [], []       # seeds: the timed runs' generators (sampling, stop ids, generator follow n)
    real_plain, real_speculative = Decoder.generate, SpeculativeDecoder.generate
    monkeypatch.setattr(Decoder, "generate", lambda self, rows, n, *a, **k: (
        calls.append(("plain", rows[0], n)), len(a) > 4 and seeds.append(a[4].initial_seed()),
        real_plain(self, rows, n, *a, **k))[-1])
    monkeypatch.setattr(SpeculativeDecoder, "generate", lambda self, prompt, n, gamma, *a, **k: (
        calls.append((f"gamma {gamma}", prompt, n)), len(a) > 4 and seeds.append(a[4].initial_seed()),
        real_speculative(self, prompt, n, gamma, *a, **k))[-1])
    plain = Decoder(target, 1, decoder_slots(target, None, prompts, 10))
    evaluate_pair(target, draft, prompts, gammas, 1.0, 10, seed=7, plain=plain)
    timed = [call for call in calls if call[2] == 10]
    assert timed == [(kind, prompt, 10) for prompt in prompts for kind in ("plain", "gamma 1", "gamma 3")]
    assert seeds == [7 + i for i in range(len(prompts)) for _ in range(3)]     # prompt i: seed + i, both sides
    assert calls[: len(calls) - len(timed)] == ([("plain", p, 2) for p in prompts] + [("gamma 1", p, 2) for p in prompts]
                                                + [("gamma 3", p, 4) for p in prompts])   # the warm-up, first


def test_evaluate_pair_baseline_is_every_plain_token_over_every_plain_second(monkeypatch):
    # The baseline pools the plain runs as the speculative side pools its own: total new tokens
    # over total seconds (not a mean of per-prompt rates), one figure for every gamma's row.
    import evaluate
    target = random_model(0, vocab_size=16)
    draft = perturbed_copy(target, noise=0.3)
    prompts = [[1], [2, 3], [4, 5, 6]]
    runs = iter([(10, 0.5), (4, 0.1), (6, 0.4)])                       # (new tokens, seconds) per prompt
    monkeypatch.setattr(evaluate, "timed_plain_run", lambda *args: next(runs))
    plain = Decoder(target, 1, decoder_slots(target, None, prompts, 10))
    rows = evaluate_pair(target, draft, prompts, [1, 2], 1.0, 10, seed=7, plain=plain)
    assert [row["baseline_tokens_per_s"] for row in rows] == [pytest.approx(20 / 1.0)] * 2
    assert all(row["speedup"] == pytest.approx(row["tokens_per_s"] / 20) for row in rows)


def test_ci_gaps_compare_each_draft_with_the_pretrained_one_cell_by_cell():
    def row(draft, gamma, tau, ci):
        return {"draft": draft, "task": "story", "temperature": 0.0, "gamma": gamma, "draft_mode": "sample", "block_efficiency": tau, "ci95": ci}
    rows = [row("pretrained", 2, 1.2, 0.1), row("kld", 2, 1.5, 0.1),      # 1.4 vs 1.3: apart
            row("pretrained", 4, 1.3, 0.1), row("kld", 4, 1.35, 0.1),     # above, but 1.25 vs 1.4
            row("kld", 6, 9.0, 0.1)]                                       # no pretrained row: no cell
    assert [(round(lower, 6), round(above, 6)) for lower, above, _ in ci_gaps(rows)] == [(0.1, 0.3), (-0.15, 0.05)]
    assert separation_lines(rows) == ("- kld: tau above pretrained in 2 of 2 cells, the 95% CIs apart in 1; "
                                      "closest: story T=0 gamma 4, lower bound -0.150 from pretrained's upper")
    assert separation_lines(rows[1::2]) == ""                              # nothing to compare with
    one_prompt = [{**r, "ci95": float("nan")} for r in rows]              # mean_ci95 of one value
    assert separation_lines(one_prompt) == "- kld: tau above pretrained in 2 of 2 cells (one prompt per task: no 95% intervals)"


def test_every_prompt_is_warmed_up_before_the_clock_starts():
    # Each prompt's prefill (all its tokens but the last, through the target) runs twice: once
    # in the untimed warm-up, once timed. Warming up on the first prompt only would prefill the
    # others once. (On a GPU each new prompt length can cost one-off set-up; speculative.warm_up.)
    target = random_model(0, vocab_size=32)
    draft = perturbed_copy(target, noise=0.3)
    # Prefills of 2, 4 and 7 tokens: none of the lengths of a step (1) or a gamma-2 verify (3).
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9] * 8]
    prefills = []
    target.register_forward_hook(lambda module, inputs, output: prefills.append(inputs[0].shape[1]))
    expected = sorted(2 * [len(p) - 1 for p in prompts])
    evaluate_pair(target, draft, prompts, [2], 1.0, 4, seed=7, plain=Decoder(target, 1, decoder_slots(target, None, prompts, 4)))
    # Every prompt's target prefill twice for the plain decoder and twice for the speculative one.
    assert sorted(n for n in prefills if n not in (1, 3)) == sorted(2 * expected)


def test_timed_runs_after_the_warm_up_compile_nothing():
    """speculative.warm_up runs every prompt before the clock starts, so no compilation lands in a
    timed run (without it, the timed runs compile, which this checks too). The "eager" backend
    traces as the real one does. On a GPU other one-off costs come with each new prompt length
    (cuDNN's attention plans, for one), which is why every prompt is warmed up, not just one."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from speculative import warm_up
    from fast_decode import compile_blocks
    target, draft = random_model(0, vocab_size=32), random_model(1, vocab_size=32, n_layers=1)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9] * 8, [3] * 11, [5] * 6]

    def traces_while_timed(warmed: list[list[int]]) -> int:
        torch._dynamo.reset()
        counters.clear()
        plain, speculative = Decoder(target, 1, 32), SpeculativeDecoder(target, draft, 32)
        with torch.no_grad():
            warm_up(lambda prompt: plain.generate([prompt], 2), warmed)
            warm_up(lambda prompt: speculative.generate(prompt, 4, 3), warmed)
            before = counters["stats"]["unique_graphs"]
            for prompt in prompts:                                      # the timed runs
                plain.generate([prompt], 6)
                speculative.generate(prompt, 6, 3)
        return counters["stats"]["unique_graphs"] - before

    try:
        for model in (target, draft):
            compile_blocks(model, backend="eager")
        assert traces_while_timed(prompts) == 0
        assert traces_while_timed([]) > 0
    finally:
        torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------
# Bad input: one ValueError that names the problem
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=0), "gamma"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(prompt_ids=[]), "at least one token"),
    (dict(prompt_ids=list(range(10)), max_new_tokens=60), "context"),   # target context 64
])
def test_speculative_decoding_rejects_bad_settings(kwargs, message):
    target = random_model(0, vocab_size=16)
    arguments = dict(target=target, draft=perturbed_copy(target, 0.3), prompt_ids=[1, 2], max_new_tokens=5)
    with pytest.raises(ValueError, match=message):
        speculative_decode(**{**arguments, **kwargs})


def test_vocabulary_mismatch_is_rejected():
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_decode(random_model(0, vocab_size=16), random_model(0, vocab_size=17), [1], 5)


def test_draft_with_a_shorter_context_is_rejected():
    target = random_model(0, vocab_size=16)                # context 64
    draft = random_model(1, vocab_size=16, max_seq_len=16)
    with pytest.raises(ValueError, match="context is 16"):
        speculative_decode(target, draft, [1, 2, 3, 4, 5], 12, gamma=2)   # 5 + 12 > 16
    tokens, _ = speculative_decode(target, draft, [1, 2], 12, gamma=2)   # well inside both contexts
    assert tokens.numel() == 12


def test_prompt_plus_max_new_tokens_equal_to_the_context_is_allowed():
    """The issue's rule: refuse only prompt + max_new_tokens BEYOND a context, as generate does."""
    target = random_model(0, vocab_size=16, max_seq_len=16)
    draft = perturbed_copy(target, 0.3)
    expected = plain_decode(target, [1, 2], 14, temperature=0)                  # 2 + 14 = 16: generate accepts
    try:
        tokens, _ = speculative_decode(target, draft, [1, 2], 14, gamma=2, temperature=0)
    except ValueError as error:
        pytest.fail("prompt + max_new_tokens = 16 = the context, which generate accepts, must be accepted "
                    f"by SpeculativeDecoder.generate too (the last blocks draft fewer tokens): {error}")
    assert tokens.tolist() == expected.tolist()


@pytest.mark.parametrize("kwargs, message", [(dict(temperature=-0.5), "temperature"),
                                             (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
                                             (dict(max_new_tokens=70), "context")])
def test_generate_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plain_decode(random_model(0, vocab_size=16), **{**dict(prompt_ids=[1, 2], max_new_tokens=5), **kwargs})


# ----------------------------------------------------------------------------------------------
# gamma="auto": the choice from measured costs (PAPER.md 5.5), and what the decoder does with it
# ----------------------------------------------------------------------------------------------

def test_expected_tokens_by_hand():
    assert expected_tokens([0.5, 0.5, 0.5], 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens([0.9, 0.5, 0.1], 3) == pytest.approx(1 + 0.9 + 0.45 + 0.045)
    assert expected_tokens([0.9, 0.5], 0) == 1.0
    for alpha in (0.3, 0.8):                 # constant alpha: PAPER.md 5.2's formula
        assert expected_tokens([alpha] * 4, 4) == pytest.approx(predicted_block_efficiency(alpha, 4))


def test_choose_gamma_on_synthetic_costs():
    costs = {"plain": 1.0, "block": {1: 1.3, 2: 1.5, 3: 1.7, 4: 1.9}}
    # alpha 0.8: tokens per unit of time 1.8/1.3 = 1.38, 2.44/1.5 = 1.63, 2.952/1.7 = 1.74, 3.3616/1.9 = 1.77
    assert choose_gamma([0.8] * 4, costs) == 4
    # alpha 0.6: 1.6/1.3 = 1.23, 1.96/1.5 = 1.31, 2.176/1.7 = 1.28, 2.3056/1.9 = 1.21
    assert choose_gamma([0.6] * 4, costs) == 2
    # per position: a sure first token, then nothing: gamma 1 (2/1.3 = 1.54 beats 2/1.5 = 1.33)
    assert choose_gamma([1.0, 0.0, 0.0, 0.0], costs) == 1
    # alpha 0.2: 1.2/1.3 = 0.92 < 1 plain token per unit: plain decoding
    assert choose_gamma([0.2] * 4, costs) == 0
    assert choose_gamma([0.9] * 4, {"plain": 1.0, "block": {1: 3.0, 2: 3.5}}) == 0   # a draft too slow
    # In a loop where blocks cost 1.5 times their time alone, relative to a plain step: at alpha
    # 0.6 the best, 1.96 / 2.25 = 0.87, loses
    assert choose_gamma([0.6] * 4, {**costs, "loop": {"speed": 1.0, "block": 1.5}}) == 0
    assert choose_gamma([0.6] * 4, {**costs, "loop": {"speed": 1.5, "block": 1.0}}) == 2   # a slower machine
    # Its margin over plain decoding: 1.31 plain steps' tokens per unit of time at gamma 2 (above);
    # with blocks at 1/1.25 of their time alone relative to a plain step, 1.31 * 1.25 = 1.63,
    # whatever the machine's speed
    assert predicted_gain([0.6] * 4, costs, 2) == pytest.approx(1.96 / 1.5)
    for speed in (0.5, 1.0, 1.5):
        assert predicted_gain([0.6] * 4, {**costs, "loop": {"speed": speed, "block": 0.8}}, 2) == pytest.approx(1.96 / 1.2)
    tie = {"plain": 1.0, "block": {1: 0.75, 2: 0.875}}              # 1.5 / 0.75 = 1.75 / 0.875
    assert choose_gamma([0.5, 0.5], tie) == 1                         # of gammas alike, the smaller
    # A margin: the best block must beat plain decoding by more than it (gamma 2's 1.307 above)
    assert choose_gamma([0.6] * 4, costs, margin=1.3) == 2
    assert choose_gamma([0.6] * 4, costs, margin=1.31) == 0
    assert choose_gamma([0.8] * 4, costs, margin=1.31) == 4          # 1.77: the margin picks no other gamma


def test_auto_gamma_runs_a_block_only_where_it_beats_plain_by_the_margin(monkeypatch):
    """A block predicted to gain less than block_margin is inside the prediction's error: auto
    decodes plainly. With a margin of 1 the predicted speed alone decides, and the block runs."""
    target = random_model(0, vocab_size=32)
    prompt = [3, 1, 4]
    decoder = SpeculativeDecoder(target, copy.deepcopy(target), decoder_slots(target, target, [prompt], 12, 2))
    decoder.costs[((0.0, None, None), "sample")] = {"plain": 1.0, "block": {1: 1.0, 2: 1.0}}
    decoder.cost_update = 0
    monkeypatch.setattr(speculative_module, "predicted_gain", lambda alphas, costs, gamma: 1.03 + gamma / 1000)
    assert decoder.block_margin == 1.05
    assert set(decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"]) == {0}
    decoder.block_margin = 1.0
    assert set(decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"]) == {2}


def test_update_cost_by_hand():
    costs = {"plain": 1.0, "block": {1: 2.0, 2: 4.0}, "loop": {"speed": 1.0, "block": 1.0},
             "timed": {"plain": 0, "block": 0}}
    update_cost(costs, 1, 3.0, 0.25)       # the first timing (w = 1/2): a block at x = 3 / 2 = 1.5
    r = 1 + 0.5 / 4 * (1.5 / 1 - 1)         # its own factor, a quarter as fast, against the speed 1
    speed = 1 + 0.5 * (1.5 / r - 1)         # the speed: the mean of 1 and what is left of x
    assert costs["loop"] == pytest.approx({"speed": speed, "block": r})
    update_cost(costs, 0, 0.6, 0.25)       # the second (w = 1/3), a plain step: the speed alone
    speed += (0.6 - speed) / 3
    assert costs["loop"] == pytest.approx({"speed": speed, "block": r})
    assert costs["timed"] == {"plain": 1, "block": 1}
    assert costs["plain"] == 1.0 and costs["block"] == {1: 2.0, 2: 4.0}            # the costs timed alone stay
    assert [loop_cost(costs, g) for g in (0, 1, 2)] == pytest.approx([speed, 2 * speed * r, 4 * speed * r])
    update_cost(costs, 2, 400.0, 0.25)     # a pause (w = 1/4) counts as twice each factor
    r, speed = r * (1 + 1 / 16), speed * (1 + 1 / 4)
    assert costs["loop"] == pytest.approx({"speed": speed, "block": r})
    for _ in range(20):                    # past 1 / weight timings the weight stays 1/4: a running average
        update_cost(costs, 0, 1.0, 0.25)
    assert costs["loop"] == pytest.approx({"speed": 1 + (speed - 1) * 0.75 ** 20, "block": r})  # r: no block ran
    update_cost(costs, 1, 50.0, 0)         # weight 0 keeps the costs
    assert costs["timed"] == {"plain": 21, "block": 2}
    update_cost(bare := {"plain": 1.0, "block": {1: 2.0}}, 0, 1.5, 0.25)    # costs written by hand: factors of 1
    assert bare["loop"] == {"speed": 1.25, "block": 1.0} and bare["timed"] == {"plain": 1, "block": 0}
    assert loop_cost({"plain": 1.0, "block": {1: 2.0}}, 1) == 2.0


def test_a_drift_of_the_machines_speed_prices_blocks_and_plain_steps_alike():
    """A machine that slows by 30% while auto decodes plainly (a CPU's clocks, a neighbour's
    load) makes its blocks dearer too: the block that lost to a plain step at the measured costs
    still loses, though only plain steps were timed. The blocks' own factor moves only where
    blocks and plain steps are timed side by side: blocks 20% dearer than timed alone, relative
    to the plain steps around them, come to be priced so."""
    costs = {"plain": 1.0, "block": {1: 1.5}, "loop": {"speed": 1.0, "block": 1.0},
             "timed": {"plain": 0, "block": 0}}
    alphas = [0.45]                                              # E(1) = 1.45 for 1.5 plain steps: 0.97
    assert choose_gamma(alphas, costs, margin=1.05) == 0
    for _ in range(30):
        update_cost(costs, 0, 1.3, 1 / 8)                        # plain steps at 1.3 their time alone
    assert costs["loop"]["speed"] == pytest.approx(1.3, abs=0.01)
    assert predicted_gain(alphas, costs, 1) == pytest.approx(1.45 / 1.5)
    assert choose_gamma(alphas, costs, margin=1.05) == 0
    for _ in range(200):                                         # side by side: x = 1.3 and 1.2 x 1.3
        update_cost(costs, 0, 1.3, 1 / 8)
        update_cost(costs, 1, 1.5 * 1.2 * 1.3, 1 / 8)
    assert costs["loop"]["block"] == pytest.approx(1.2, abs=0.02)
    assert costs["loop"]["speed"] == pytest.approx(1.3, abs=0.02)


def test_auto_gamma_learns_the_loops_costs():
    """Costs far off what the loop takes (seconds, where a tiny model's step takes about a
    millisecond) move toward the loop's timings: the blocks' factor falls at every block, and with
    it the cost of every gamma, run or not."""
    target = random_model(0, vocab_size=32)
    prompt = [3, 1, 4]
    decoder = SpeculativeDecoder(target, copy.deepcopy(target), decoder_slots(target, target, [prompt], 20, 2))
    decoder.costs[((0.0, None, None), "sample")] = costs = {"plain": 10.0, "block": {1: 1.0, 2: 1.0}}
    tokens, stats = decoder.generate(prompt, 20, "auto", temperature=0)
    assert torch.equal(tokens, plain_decode(target, prompt, 20, temperature=0))
    assert set(stats["drafted_per_block"]) == {2}                # gamma 2: more tokens for the same cost
    n = len(stats["blocks"])
    assert costs["timed"] == {"plain": 0, "block": n - 1}        # every block but the first was timed
    # The k-th timing moves the speed max(1/8, 1/(k + 1)) of the way to about 1/1000 over the
    # blocks' own factor, which falls too, more slowly: a block's price falls at least as fast.
    left = math.prod(1 - max(1 / 8, 1 / (k + 1)) for k in range(1, n))
    assert costs["loop"]["block"] < 1
    assert costs["loop"]["speed"] * costs["loop"]["block"] < left + 0.05
    assert loop_cost(costs, 1) == loop_cost(costs, 2) == pytest.approx(costs["loop"]["speed"] * costs["loop"]["block"])
    assert loop_cost(costs, 0) == pytest.approx(10 * costs["loop"]["speed"])   # plain steps: the machine's speed


def test_auto_gamma_leaves_what_a_call_pays_for_its_prompt_out_of_its_costs(monkeypatch):
    """The first iteration of a call waits for the prompt's prefill too (start() launches it on a
    GPU without waiting), and the first block catches the draft up on the prompt: counted as a
    step's cost, either would price the prompt into a step, at every call. Every other iteration
    is counted, plain steps too, and a block that catches the draft up on plain steps alone."""
    target = random_model(0, vocab_size=32)
    prompt = [3, 1, 4]
    decoder = SpeculativeDecoder(target, perturbed_copy(target, 0.5), decoder_slots(target, target, [prompt], 20, 2))
    decoder.costs[((1.0, None, None), "sample")] = {"plain": 1.0, "block": {1: 1.6, 2: 1.8}}
    counted = []
    monkeypatch.setattr(speculative_module, "update_cost", lambda costs, gamma, seconds, weight: counted.append(gamma))
    for first, untimed in ((2, [0]), (0, [0, 2])):      # a block first; a plain step first, then the block at 2
        scheduled_gammas(monkeypatch, [first, 0, 1, 0, 2])
        counted.clear()
        stats = decoder.generate(prompt, 20, "auto", temperature=1.0, generator=torch.Generator().manual_seed(0))[1]
        drafted = stats["drafted_per_block"]
        assert drafted[:5] == [first, 0, 1, 0, 2]
        assert counted == [gamma for i, gamma in enumerate(drafted) if i not in untimed]


def test_acceptance_counts_by_hand():
    counts = AcceptanceCounts()
    assert counts.alphas(3) == [0.5, 0.5, 0.5]                  # nothing counted: the prior
    counts.add(2, 3)      # positions 1, 2 accepted, 3 rejected
    counts.add(0, 3)      # position 1 rejected
    counts.add(1, 1)      # a block of one token, accepted
    assert (counts.tested, counts.accepted) == ([3, 1, 1], [2, 1, 0])
    overall = (3 + 1) / (5 + 2)
    m = AcceptanceCounts.PRIOR_TESTS
    assert counts.alphas(4) == pytest.approx([(2 + m * overall) / (3 + m), (1 + m * overall) / (1 + m),
                                              (0 + m * overall) / (1 + m), overall])
    # Optimistic: each plus sqrt(a (1 - a) / (all 5 tests + m)).
    assert counts.optimistic_alphas(4) == pytest.approx([a + math.sqrt(a * (1 - a) / (5 + m)) for a in counts.alphas(4)])


def test_the_decoders_do_all_their_sampling_through_their_sampler():
    """Every sample_probs, race, draw, verify and verify_argmax of a step goes through the decoder's
    Sampler, so that compiling the Sampler compiles all of a step's sampling."""
    from speculative import Sampler
    calls = collections.Counter()
    counting = Sampler()
    for name in ("probs", "race", "draw", "verify", "verify_argmax"):
        function = getattr(counting, name)
        setattr(counting, name, lambda *args, name=name, function=function: calls.update([name]) or function(*args))
    target = random_model(0, vocab_size=32)
    speculative, plain = SpeculativeDecoder(target, perturbed_copy(target, 0.5), 48), Decoder(target, 1, 48)
    speculative.sampler = plain.sampler = counting
    speculative.generate([3, 1, 4], 1, 3, 1.0)             # one block: 3 draft draws, q and p, the rule
    assert calls == {"draw": 3, "probs": 2, "verify": 1}
    calls.clear()
    speculative.generate([3, 1, 4], 1, 3, 1.0, draft_mode="argmax")    # the target's draws inside the rule
    assert calls == {"verify_argmax": 1}
    calls.clear()
    speculative.generate([3, 1, 4], 1, 3, 1.0, top_p=0.9)   # top-p: each q_i made to draw x_i, kept for the rule
    assert calls == {"probs": 4, "race": 3, "verify": 1}
    calls.clear()
    plain.generate([[3, 1, 4]], 2, 1.0)
    assert calls == {"draw": 2}


def test_generate_chooses_gamma_from_the_optimistic_alphas(monkeypatch):
    """The loop hands choose_gamma the optimistic estimates: with nothing counted yet, 1/2 plus
    its standard error (0.75 each), not the bare 1/2."""
    target = random_model(0, vocab_size=32)
    decoder = SpeculativeDecoder(target, perturbed_copy(target, 0.5), 48)
    decoder.costs[((1.0, None, None), "sample")] = {"plain": 1.0, "block": {1: 1.3, 2: 1.5}}
    decoder.cost_update = 0
    seen, choose = [], speculative_module.choose_gamma
    monkeypatch.setattr(speculative_module, "choose_gamma",
                        lambda alphas, costs, margin: seen.append(alphas) or choose(alphas, costs, margin))
    decoder.generate([3, 1, 4], 10, "auto", 1.0, generator=torch.Generator().manual_seed(0))
    assert seen[0] == pytest.approx([0.75, 0.75]) == AcceptanceCounts().optimistic_alphas(2)


@pytest.mark.parametrize("run_ahead", [0, 1])
def test_auto_gamma_chooses_while_the_step_before_runs(monkeypatch, run_ahead):
    """Each choice after the first is made right after an iteration's launch, while a GPU would
    still be running it, not in the gap between a read and the next launch where the GPU idles:
    choose, run, choose, read, run, choose, read, ... for plain steps and blocks alike. With
    run_ahead 1 (a GPU's default: fast_decode.ReadLater) the loop launches an iteration before it
    reads the one before, so the GPU has the next one queued while the host reads: choose, run,
    choose, run, choose, read, run, choose, read, ..., read; and none past max_new_tokens: only an
    iteration that could not end the call is followed by one unread."""
    target = random_model(0, vocab_size=32)
    decoder = SpeculativeDecoder(target, perturbed_copy(target, 0.5), 48)
    decoder.steps.run_ahead = run_ahead
    decoder.costs[((1.0, None, None), "sample")] = {"plain": 1.0, "block": {1: 1.3, 2: 1.5}}
    scheduled_gammas(monkeypatch, [2, 0, 0, 1, 0, 2])
    events, choose, run = [], speculative_module.choose_gamma, decoder.steps.run

    class Result:                            # a step's result, as the host reads it
        def __init__(self, result):
            self.result = result

        def tolist(self):
            events.append("read")
            return self.result.tolist()
    monkeypatch.setattr(speculative_module, "choose_gamma",
                        lambda alphas, costs, margin: events.append("choose") or choose(alphas, costs, margin))
    decoder.steps.run = lambda key, step: events.append("run") or Result(run(key, step))
    stats = decoder.generate([3, 1, 4], 10, "auto", 1.0, generator=torch.Generator().manual_seed(0))[1]
    n = len(stats["blocks"])
    assert stats["drafted_per_block"][:6] == [2, 0, 0, 1, 0, 2]                 # plain steps and blocks
    if run_ahead:
        assert events == ["choose", "run", "choose"] + ["run", "choose", "read"] * (n - 1) + ["read"]
    else:
        assert events == ["choose"] + ["run", "choose", "read"] * n
    assert sum(n + 1 for _, n, _ in stats["blocks"][:-1]) < 10             # no iteration past max_new_tokens


@pytest.mark.parametrize("run_ahead", [0, 1])
def test_the_loop_times_an_iteration_from_its_launch_or_the_read_before(monkeypatch, run_ahead):
    """update_cost gets the time an iteration held the GPU: from its launch, or, when it was
    launched before the iteration ahead of it was read (run_ahead 1), from that read. A clock
    that moves only while the host waits for a result, by 1 per iteration: every window is 1,
    where timing a queued iteration from its launch would count the wait for the one before."""
    clock = [0.0]
    monkeypatch.setattr(speculative_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    windows = []
    monkeypatch.setattr(speculative_module, "update_cost",
                        lambda costs, gamma, seconds, weight: windows.append(seconds))
    target = random_model(0, vocab_size=32)
    decoder = SpeculativeDecoder(target, perturbed_copy(target, 0.5), 48)
    decoder.steps.run_ahead = run_ahead
    decoder.costs[((1.0, None, None), "sample")] = {"plain": 1.0, "block": {1: 1.3, 2: 1.5}}
    scheduled_gammas(monkeypatch, [2, 0, 0, 1, 0, 2])
    run = decoder.steps.run

    class Result:                            # the host waits 1 for each result
        def __init__(self, result):
            self.result = result

        def tolist(self):
            clock[0] += 1.0
            return self.result.tolist()
    decoder.steps.run = lambda key, step: Result(run(key, step))
    stats = decoder.generate([3, 1, 4], 10, "auto", 1.0, generator=torch.Generator().manual_seed(0))[1]
    assert len(windows) == len(stats["blocks"]) - 1         # all but the first: it pays for the prompt
    assert windows == [1.0] * len(windows)


def test_reading_each_iteration_late_changes_no_token(monkeypatch):
    """Run ahead (run_ahead 1) on a CPU: the same tokens and blocks as reading every iteration
    before the next, for fixed gammas, argmax drafting and gamma "auto" with plain steps and the
    draft's catch-up between blocks: nothing an iteration does depends on the one not read yet."""
    target = random_model(0, vocab_size=32)
    draft = perturbed_copy(target, 0.3)
    prompts = [[1, 5, 9], [1, 7, 3, 2, 8, 4, 6], [1, 2], [3], [1] + [3, 4] * 9]
    for mode, auto in (("sample", False), ("argmax", False), ("sample", True)):
        ahead = SpeculativeDecoder(target, draft, 48)
        ahead.steps.run_ahead = 1
        assert_decoders_agree(SpeculativeDecoder(target, draft, 48), ahead, prompts, mode, auto, monkeypatch)


@pytest.mark.parametrize("gamma", [3, 5])
def test_reading_late_at_the_end_of_the_context_drafts_what_reading_first_drafts(gamma):
    """Near the end of a context a block drafts fewer than gamma tokens; running ahead there would
    size a block from a length it has not read, so the loop reads first: the same blocks."""
    target = random_model(0, vocab_size=32, max_seq_len=16)
    draft = perturbed_copy(target, 0.3)
    prompt = [1, 5, 9, 2]
    runs = []
    for run_ahead in (0, 1):
        decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], 12, gamma))
        decoder.steps.run_ahead = run_ahead
        runs.append([decoder.generate(prompt, 12, gamma, temperature, generator=torch.Generator().manual_seed(5))
                     for temperature in (0.0, 1.0)])
    for (expected, expected_stats), (tokens, stats) in zip(*runs):
        assert tokens.tolist() == expected.tolist() and stats["blocks"] == expected_stats["blocks"]
    assert min(len(drafted) for drafted, _, _ in runs[1][0][1]["blocks"]) < gamma      # the context cut a block


@pytest.mark.parametrize("gamma", [1, 3])
def test_running_ahead_past_a_stop_token_loses_one_iteration_and_no_token(gamma):
    target, draft = greedy_pair()
    prompt = [5, 9, 2, 7, 30]
    greedy = plain_decode(target, prompt, 16, temperature=0).tolist()
    stop = greedy.index(greedy[5])
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], 16, gamma))
    decoder.steps.run_ahead = 1
    calls = []
    target.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[1]))
    tokens, stats = decoder.generate(prompt, 16, gamma, temperature=0, stop_ids={greedy[5]})
    assert tokens.tolist() == greedy[: stop + 1]
    assert calls[1:] == [gamma + 1] * (len(stats["accepted_per_block"]) + 1)   # after the prefill: one block lost


def test_one_early_rejection_does_not_stop_auto_gamma_from_trying_blocks():
    """A plain step tests no draft token: after one rejected block, the bare estimate (alpha_1 =
    (0 + 4/3) / 5 = 0.27) would choose plain steps for good where a block costs 1.3 plain steps;
    the optimistic one (0.27 + sqrt(0.27 * 0.73 / 5) = 0.46) tries another block. After ten
    rejections it, too, gives up."""
    costs = {"plain": 1.0, "block": {1: 1.3, 2: 1.5}}
    counts = AcceptanceCounts()
    counts.add(0, 1)
    assert choose_gamma(counts.alphas(2), costs) == 0
    assert choose_gamma(counts.optimistic_alphas(2), costs) > 0
    for _ in range(9):
        counts.add(0, 1)
    assert choose_gamma(counts.optimistic_alphas(2), costs) == 0


def scheduled_gammas(monkeypatch, schedule: list[int]):
    """Make gamma="auto" follow `schedule` (then its last value), whatever the costs say (the
    draft's catch-up too)."""
    chosen = iter(schedule)
    monkeypatch.setattr(speculative_module, "choose_gamma", lambda alphas, costs, margin: next(chosen, schedule[-1]))
    monkeypatch.setattr(speculative_module, "pays_for_catch_up", lambda gain, costs, behind, tokens_left: True)


def test_auto_gamma_times_a_plain_step_after_a_run_of_blocks(monkeypatch):
    """In a run of blocks the machine's speed follows the blocks' timings, so a block priced too
    low relative to a plain step would pass for a slower machine: after plain_check_every blocks
    in a row, auto runs a plain step whatever choose_gamma says -- counting across calls, never
    as a call's first (untimed) iteration -- and times it (update_cost)."""
    target = random_model(0, vocab_size=32)
    prompt = [3, 1, 4]
    # The draft is the target at T = 0: every block accepts both its tokens, 3 tokens a block.
    decoder = SpeculativeDecoder(target, copy.deepcopy(target), decoder_slots(target, target, [prompt], 12, 2))
    decoder.costs[((0.0, None, None), "sample")] = costs = {"plain": 10.0, "block": {1: 1.0, 2: 1.0}}
    decoder.plain_check_every = 4
    decoder.plain_check_margin = math.inf          # every block close to plain (the margin's own test is next)
    scheduled_gammas(monkeypatch, [2])                             # choose_gamma always says 2
    calls = [decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"] for _ in range(3)]
    assert calls == [[2, 2, 2, 2],         # 4 blocks in a row as the call ends: the count goes on
                     [2, 0, 2, 2, 2],      # the check, after the first iteration (which is not timed)
                     [2, 0, 2, 2, 2]]      # 3 blocks, then 1 into this call: the check again
    assert costs["timed"]["plain"] == 2                            # each check timed
    key = ((0.0, None, None), "sample")
    decoder.generate(prompt, 12, 2, 0.0)                           # a fixed gamma: blocks the check does not count
    assert decoder.blocks_since_plain[key] == 3
    speed = costs["loop"]["speed"]
    assert decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"] == [2, 0, 2, 2, 2]
    assert costs["timed"]["plain"] == 3 and costs["loop"]["speed"] != speed
    decoder.plain_check_every = 0                                  # 0: never
    assert 0 not in decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"]


def test_the_plain_check_runs_only_where_plain_decoding_could_win(monkeypatch):
    """The check is paid for only when the chosen block is predicted to beat a plain step by less
    than plain_check_margin, which a block priced too low by that factor would explain -- priced
    at no less, relative to a plain step, than timed alone, since a block factor that the loop
    lowered is what the check exists to correct. The machine's speed does not enter it."""
    target = random_model(0, vocab_size=32)
    prompt = [3, 1, 4]
    decoder = SpeculativeDecoder(target, copy.deepcopy(target), decoder_slots(target, target, [prompt], 12, 2))
    decoder.costs[((0.0, None, None), "sample")] = costs = {"plain": 1.0, "block": {1: 1.0, 2: 1.0}}
    decoder.plain_check_every, decoder.plain_check_margin, decoder.cost_update = 2, 1.25, 0
    scheduled_gammas(monkeypatch, [2])
    gain = 1.25
    monkeypatch.setattr(speculative_module, "predicted_gain", lambda alphas, costs, gamma: gain)
    assert decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"] == [2, 2, 2, 2]   # at the margin: none
    gain = 1.24                                  # below it: due at once, then after every 2 blocks
    assert decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"] == [2, 0, 2, 2, 0, 2]
    gain, costs["loop"] = 1.5, {"speed": 1.0, "block": 0.8}        # 1.5 x 0.8 = 1.2: below it again
    assert 0 in decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"]
    gain, costs["loop"] = 1.3, {"speed": 3.0, "block": 1.0}        # the speed is no part of it: 1.3
    assert 0 not in decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"]
    gain, costs["loop"] = 1.2, {"speed": 1.0, "block": 1.25}       # a factor above 1 stays in the gain: 1.2
    assert 0 in decoder.generate(prompt, 12, "auto", 0.0)[1]["drafted_per_block"]


def test_a_call_of_plain_steps_only_never_runs_the_draft(monkeypatch):
    """The draft is caught up on the prompt before its first block, not at the start: gamma
    "auto" choosing plain steps throughout pays for no draft pass at all."""
    target = random_model(0, vocab_size=32)
    draft = perturbed_copy(target, 0.5)
    prompt = [3, 1, 4, 1, 5, 9]
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], 10, 2))
    draft_passes = []
    draft.register_forward_pre_hook(lambda module, args: draft_passes.append(args[0].shape[1]))
    costs = decoder.measure_costs(prompt, 0.0, max_gamma=2, repeats=1)
    # measure_costs times blocks, and the draft's prefill (its catch-up) on the prompt but its newest 2 tokens
    # (untimed, then timed) and on half of those: a line, fixed + per token
    n = len(prompt) - 2
    assert draft_passes[:3] == [n, n // 2, n] and min(costs["catch_up"].values()) >= 0 < catch_up_cost(costs, n)
    draft_passes.clear()
    scheduled_gammas(monkeypatch, [0])
    tokens, stats = decoder.generate(prompt, 10, "auto", temperature=0)
    assert stats["drafted_per_block"] == [0] * 10 and draft_passes == []
    assert torch.equal(tokens, plain_decode(target, prompt, 10, temperature=0))
    scheduled_gammas(monkeypatch, [0, 0, 2])    # 2 plain steps, then blocks: first a catch-up on all but the
    decoder.generate(prompt, 6, "auto", temperature=0)                     # newest 2 of the prompt and 2 tokens
    assert draft_passes[:3] == [len(prompt) + 2 - 2, 2, 1] and len(draft_passes) > 3


def test_measure_costs_times_the_steps_in_rounds_at_the_prompts_position(monkeypatch):
    """Each step once untimed, then rounds of one plain step and one block of each gamma, every
    run from the prompt's position: a machine's drift then falls on all of them alike. On a clock
    that each step moves by its own seconds, each median is its own step's."""
    target = random_model(0, vocab_size=32)
    prompt = [3, 1, 4, 1, 5]
    draft = perturbed_copy(target, 0.5)
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], 4, 2))
    ran, run, clock, seconds = [], decoder.steps.run, [0.0], {"plain": 1.0, 1: 2.0, 2: 3.0}

    def timed_run(key, step):
        ran.append((key[0], decoder.length.item()))
        clock[0] += seconds[key[0]]
        return run(key, step)
    decoder.steps.run = timed_run
    monkeypatch.setattr(speculative_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    costs = decoder.measure_costs(prompt, 1.0, max_gamma=2, repeats=3)
    one_of_each = [("plain", len(prompt) + 1), (1, len(prompt) + 1), (2, len(prompt) + 1)]
    assert ran == one_of_each * 4                        # untimed, then 3 timed rounds
    assert costs["plain"] == 1.0 and costs["block"] == {1: 2.0, 2: 3.0}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("run_ahead", [0, 1])
def test_auto_gamma_with_plain_steps_between_blocks_is_exact(monkeypatch, temperature, run_ahead):
    """gamma 0 is a plain step of the target alone; the draft falls behind and is caught up
    before the next block. With a draft that IS the target, a draft whose cache had missed those
    tokens (or held a wrong slot) would propose other tokens: every block must accept all it
    drafts -- at T = 1 too, where the draft samples from its whole distribution and any cache
    error shows. At T = 0 the output is the target's greedy decoding. run_ahead 1: a block
    launched while the plain step before it is not read yet catches the draft up on its token."""
    target = random_model(0, vocab_size=32)
    draft = copy.deepcopy(target)
    prompt = [5, 9, 2, 7]
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], 30, 3))
    decoder.steps.run_ahead = run_ahead
    decoder.measure_costs(prompt, temperature, max_gamma=3, repeats=1)
    scheduled_gammas(monkeypatch, [2, 0, 0, 3, 0, 1, 0, 0, 0, 2, 3])
    tokens, stats = decoder.generate(prompt, 30, "auto", temperature=temperature,
                                     generator=torch.Generator().manual_seed(0))
    if temperature == 0:
        assert torch.equal(tokens, plain_decode(target, prompt, 30, temperature=0))
    drafted = stats["drafted_per_block"]
    assert 0 in drafted and 3 in drafted
    assert stats["accepted_per_block"] == drafted                # every drafted token accepted


def test_auto_gamma_switching_to_plain_steps_samples_the_target_joint(monkeypatch):
    """Plain steps and blocks mixed, under a temperature and top-p: a plain step that dropped
    the sampling settings (or sampled the draft) would show against the joint without them."""
    vocab_size, prompt, n_tokens, n_runs, sampling = 4, [1, 2], 3, 600, dict(temperature=0.8, top_p=0.8)
    target = random_model(0, vocab_size=vocab_size, **TINY)
    draft = perturbed_copy(target, noise=0.5)
    target_joint = exact_joint(target, prompt, n_tokens, **sampling)
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], n_tokens, 2))
    decoder.measure_costs(prompt, 0.8, top_p=0.8, max_gamma=2, repeats=1)
    generator, counts = torch.Generator().manual_seed(0), torch.zeros(vocab_size ** n_tokens)
    for run in range(n_runs):
        scheduled_gammas(monkeypatch, [[0, 2], [1, 0, 1], [2]][run % 3])
        tokens, _ = decoder.generate(prompt, n_tokens, "auto", **sampling, generator=generator)
        counts[sum(int(t) * vocab_size ** (n_tokens - 1 - i) for i, t in enumerate(tokens))] += 1
    p_target = chi_square_p_value(counts, target_joint)
    assert p_target > SIGNIFICANCE, f"auto gamma does not follow the target: p={p_target:.2g}"
    without_top_p = exact_joint(target, prompt, n_tokens, temperature=0.8)
    assert chi_square_p_value(counts, without_top_p) < SIGNIFICANCE, "no power: the joint without top-p was not rejected"


def test_pays_for_catch_up_by_hand():
    """Blocks at a gain of 1.5 save a third of a plain step per token: over 10 tokens 3.33 plain
    steps, more than a catch-up on 30 tokens at 0.1 a token (3.0), less than one on 34 (3.4)."""
    costs = {"plain": 1.0, "block": {1: 1.0}, "catch_up": {"fixed": 0.0, "per_token": 0.1}}
    assert predicted_gain([0.5], costs, 1) == 1.5                  # alpha 1/2, a block priced as a plain step
    assert pays_for_catch_up(1.5, costs, behind=30, tokens_left=10)
    assert not pays_for_catch_up(1.5, costs, behind=34, tokens_left=10)
    with_fixed = {**costs, "catch_up": {"fixed": 0.5, "per_token": 0.1}}    # 0.5 + 30 x 0.1 = 3.5 > 3.33
    assert catch_up_cost(with_fixed, 30) == pytest.approx(3.5)
    assert not pays_for_catch_up(1.5, with_fixed, behind=30, tokens_left=10)
    assert pays_for_catch_up(1.5, {"plain": 1.0, "block": {1: 1.0}}, behind=10**6, tokens_left=1)  # unmeasured: free
    # In the loop's prices: a machine twice as slow makes the plain steps saved and the catch-up
    # twice as dear alike
    slower = {**costs, "loop": {"speed": 2.0, "block": 1.0}}
    assert catch_up_cost(slower, 30) == pytest.approx(6.0)
    assert pays_for_catch_up(1.5, slower, behind=30, tokens_left=10)
    assert not pays_for_catch_up(1.5, slower, behind=34, tokens_left=10)


def test_expected_tokens_left_by_hand():
    assert expected_tokens_left([], 0, 64) == 64                          # no call yet: max_new_tokens
    assert expected_tokens_left([10, 20, math.inf], 0, 64) == (10 + 20 + 64) / 3
    assert expected_tokens_left([10, 20, math.inf], 15, 64) == (5 + 49) / 2   # the answers past 15 tokens
    assert expected_tokens_left([10, 20], 25, 64) == 39                   # longer than any: max_new_tokens
    assert expected_tokens_left([100], 0, 64) == 64                       # capped by this call's max_new_tokens


def test_auto_gamma_prices_the_catch_up_against_the_answers_so_far():
    """Blocks that earn the draft's catch-up on the prompt back over the 12 tokens a call allows
    do not over the 3 that the answers before stopped after: the next call decodes plainly, and
    its draft never runs. An answer cut by max_new_tokens says nothing of where it would stop."""
    target = random_model(0, vocab_size=32)
    draft = copy.deepcopy(target)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], 12, 2))
    decoder.cost_update = 0
    # As in the test below: a gain of 1.54 saves 4.22 plain steps over 12 tokens, 1.05 over 3,
    # against a catch-up of 3.9.
    decoder.costs[((0.0, None, None), "sample")] = {"plain": 1.0, "block": {1: 1.2, 2: 1.5},
                                                    "catch_up": {"fixed": 0.0, "per_token": 0.65}}
    stop = {plain_decode(target, prompt, 12, temperature=0)[2].item()}
    key = ((0.0, None, None), "sample")
    decoder.generate(prompt, 12, 2, temperature=0)                       # no stop token: math.inf
    assert decoder.answer_lengths[key] == [math.inf]
    assert decoder.generate(prompt, 12, "auto", temperature=0, stop_ids=stop)[1]["drafted_per_block"][0] == 2
    assert decoder.answer_lengths[key][-1] <= 3                           # it stopped at the stop token
    draft_passes = []
    draft.register_forward_pre_hook(lambda module, args: draft_passes.append(args[0].shape[1]))
    decoder.answer_lengths[key] = [3]
    tokens, stats = decoder.generate(prompt, 12, "auto", temperature=0, stop_ids=stop)
    assert set(stats["drafted_per_block"]) == {0} and draft_passes == []
    decoder.answer_lengths[key] = [math.inf]                              # cut by max_new_tokens: 12 left
    assert decoder.generate(prompt, 12, "auto", temperature=0, stop_ids=stop)[1]["drafted_per_block"][0] == 2


@pytest.mark.parametrize("prompt_length, blocks", [(8, True), (9, False)])
def test_auto_gamma_keeps_plain_steps_where_blocks_cannot_earn_the_drafts_catch_up(prompt_length, blocks):
    """A prompt the draft has not seen costs it a prefill of all but its newest 2 tokens before
    the first block: where the tokens left cannot earn it back, auto decodes plainly, and the
    draft never runs."""
    target = random_model(0, vocab_size=32)
    draft = copy.deepcopy(target)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5][:prompt_length]
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], 12, 2))
    decoder.cost_update = 0
    # alpha 3/4 (the prior, optimistic): E(2) = 2.31 tokens for 1.5 plain steps, a gain of 1.54;
    # 12 tokens save 12 (1 - 1 / 1.54) = 4.22 plain steps, against 6 x 0.65 = 3.9 (a prompt of 8)
    # or 7 x 0.65 = 4.55 (of 9)
    decoder.costs[((0.0, None, None), "sample")] = {"plain": 1.0, "block": {1: 1.2, 2: 1.5},
                                                    "catch_up": {"fixed": 0.0, "per_token": 0.65}}
    draft_passes = []
    draft.register_forward_pre_hook(lambda module, args: draft_passes.append(args[0].shape[1]))
    tokens, stats = decoder.generate(prompt, 12, "auto", temperature=0)
    assert torch.equal(tokens, plain_decode(target, prompt, 12, temperature=0))
    if blocks:
        assert stats["drafted_per_block"][0] == 2 and draft_passes[0] == prompt_length - 2
    else:
        assert stats["drafted_per_block"] == [0] * 12 and draft_passes == []


def test_auto_gamma_weighs_the_catch_up_after_plain_steps(monkeypatch):
    """After plain steps the draft is behind by the prompt and those steps' tokens: the rule is
    asked with all of them, and the tokens still to make."""
    target = random_model(0, vocab_size=32)
    prompt = [3, 1, 4, 1, 5]
    decoder = SpeculativeDecoder(target, copy.deepcopy(target), decoder_slots(target, target, [prompt], 10, 2))
    decoder.costs[((0.0, None, None), "sample")] = {"plain": 1.0, "block": {1: 1.0, 2: 1.0}}
    chosen = iter([0, 0, 2])
    monkeypatch.setattr(speculative_module, "choose_gamma", lambda alphas, costs, margin: next(chosen, 2))
    asked = []
    monkeypatch.setattr(speculative_module, "pays_for_catch_up",
                        lambda gain, costs, behind, tokens_left: asked.append((behind, tokens_left)) or True)
    stats = decoder.generate(prompt, 10, "auto", temperature=0)[1]
    assert stats["drafted_per_block"][:3] == [0, 0, 2]
    assert asked == [(len(prompt) - 2 + 2, 10 - 2)]          # once: every later block starts caught up


def test_auto_gamma_falls_back_to_plain_decoding_when_no_block_pays():
    target = random_model(0, vocab_size=32)
    draft = perturbed_copy(target, noise=3.0)                    # a draft that is seldom right
    prompt = [3, 1, 4]
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], 40, 4))
    costs = decoder.measure_costs(prompt, 0.0, max_gamma=4, repeats=1)
    assert set(costs["block"]) == {1, 2, 3, 4} and min(costs["block"].values()) > 0 < costs["plain"]
    assert catch_up_cost(costs, len(prompt)) > 0
    # A block of gamma 1 pays at the prior's alpha of 1/2 (1.5 tokens for 1.3 plain steps), and
    # stops paying once alpha is below 0.3.
    decoder.costs[((0.0, None, None), "sample")] = {"plain": 1.0, "block": {g: 1.1 + 0.2 * g for g in range(1, 5)}}
    decoder.cost_update = 0                      # these costs, not the loop's timings (update_cost)
    tokens, stats = decoder.generate(prompt, 40, "auto", temperature=0)
    assert torch.equal(tokens, plain_decode(target, prompt, 40, temperature=0))
    # Blocks until the counts show alpha too low for any gamma to pay, then plain steps only.
    drafted = stats["drafted_per_block"]
    assert drafted[0] > 0 and drafted[-10:] == [0] * 10
    with pytest.raises(ValueError, match="measure_costs"):
        SpeculativeDecoder(target, draft, 64).generate(prompt, 5, "auto", temperature=1.0)


def assert_decoders_agree(reference: SpeculativeDecoder, other: SpeculativeDecoder, prompts: list[list[int]],
                          draft_mode: str, auto: bool, monkeypatch) -> None:
    """Both decoders, on the same random numbers, give the same tokens and the same blocks for
    every prompt at T = 0 and 1; with auto, gamma "auto" follows one schedule of blocks and
    plain steps (0s) in both, so that the draft's catch-up after plain steps is exercised."""
    device = reference.target.device
    for decoder in (reference, other):
        decoder.measure_costs(prompts[1], 1.0, draft_mode=draft_mode, max_gamma=3, repeats=1)
        decoder.measure_costs(prompts[1], 0.0, max_gamma=3, repeats=1)
    for prompt in prompts:
        for temperature in (0.0, 1.0):
            runs = []
            for decoder in (reference, other):
                scheduled_gammas(monkeypatch, [2, 0, 0, 3, 0, 1, 3, 0, 2])
                runs.append(decoder.generate(prompt, 12, "auto" if auto else 3, temperature,
                                             generator=torch.Generator(device).manual_seed(11), draft_mode=draft_mode))
            (expected, stats_expected), (tokens, stats) = runs
            assert tokens.tolist() == expected.tolist(), (draft_mode, auto, prompt, temperature)
            assert stats["blocks"] == stats_expected["blocks"]


def test_the_compiled_draw_is_specialised_once():
    """A plain step and every draft step hand the compiled draw a (1, V) row of the same stride
    (block's [0, -1:]): torch.compile specialises on strides, and a second one would recompile
    draw into one kernel generic in the stride, which every later draw would run."""
    import torch._dynamo
    from speculative import Sampler
    compiled = []

    def counting_backend(graph, example_inputs):   # the "eager" backend, counting what it compiles
        compiled.append(graph)
        return graph.forward

    torch._dynamo.reset()          # compiled entries and stride histories are kept per function
    try:
        target = random_model(0, vocab_size=32)
        decoder = SpeculativeDecoder(target, perturbed_copy(target, 0.3), 48)
        decoder.sampler = Sampler()
        decoder.sampler.draw = torch.compile(draw, fullgraph=True, backend=counting_backend)
        decoder.measure_costs([1, 5, 9, 2], temperature=1.0, max_gamma=3)     # a plain step, blocks of 1..3
        decoder.generate([1, 7, 3], 12, 2, 1.0, generator=torch.Generator().manual_seed(0))
        assert len(compiled) == 1
    finally:
        torch._dynamo.reset()


def test_chunked_prefill_compiled_blocks_and_catch_up_give_the_eager_tokens(monkeypatch):
    """The CPU-visible part of tests/test_gpu.py's recorded decoders: compiled blocks and compiled
    sampling (the "eager" backend traces as inductor does, and fullgraph=True fails at any break),
    prefills in chunks of 8 slots (what a recording replays), the draft caught up after plain
    steps of gamma "auto", argmax drafting and a shortlist head give the same tokens and blocks as
    the plain eager decoder, on the same random numbers."""
    import torch._dynamo
    from fast_decode import compile_blocks
    from speculative import Sampler
    prompts = [[1, 5, 9], [1, 7, 3, 2, 8, 4, 6], [3], [1] + [3, 4] * 9]
    shortlist = list(range(0, 32, 2))

    def pair(compiled: bool, short: bool):
        target, draft = random_model(0, vocab_size=32), perturbed_copy(random_model(0, vocab_size=32), 0.3)
        if short:
            shortlist_head(draft, shortlist)
        if compiled:
            for model in (target, draft):
                compile_blocks(model, backend="eager")
        return target, draft

    traced = []

    def tracing_backend(graph, example_inputs):    # the "eager" backend, recording what it was given
        traced.append(graph)
        return graph.forward

    try:
        for mode, auto, short in (("argmax", False, False), ("sample", True, False), ("sample", False, True)):
            fast = SpeculativeDecoder(*pair(True, short), 48)
            fast.steps.prefill_chunk = 8
            fast.sampler = Sampler(tracing_backend)
            traced.clear()
            assert_decoders_agree(SpeculativeDecoder(*pair(False, short), 48), fast, prompts, mode, auto, monkeypatch)
            assert traced, "the blocks did not run the sampler's compiled functions"
        # plain decoding's compiled sampling, with top-k and top-p (a sort) in the traced function
        target = pair(False, False)[0]
        plain, fast_plain = Decoder(target, len(prompts), 48), Decoder(target, len(prompts), 48)
        fast_plain.sampler = Sampler(tracing_backend)
        traced.clear()
        runs = [decoder.generate(prompts, 10, 0.8, 5, 0.9, generator=torch.Generator().manual_seed(2))
                for decoder in (plain, fast_plain)]
        assert runs[0] == runs[1]
        assert traced, "plain decoding did not run the sampler's compiled functions"
        # compile_sampling, the decode paths' option, gives a decoder compiled functions; off, the functions themselves
        for decoder in (SpeculativeDecoder(target, target, 48, compile_sampling=True),
                        Decoder(target, 1, 48, compile_sampling=True)):
            assert decoder.sampler is not speculative_module.EAGER and decoder.sampler.probs is not sample_probs
        assert SpeculativeDecoder(target, target, 48).sampler is Decoder(target, 1, 48).sampler is speculative_module.EAGER
    finally:
        torch._dynamo.reset()
