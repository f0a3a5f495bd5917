"""Sampling settings checked against references written here, never built with the project's own
sample_probs / sample / verify (issue 38).

  - sample_probs against distributions computed by hand: temperature first, then top-k, then
    top-p (PAPER.md 4.1), on logits where any other order gives another answer;
  - plain batched decoding (speculative.Decoder) with top-k AND top-p: a chi-square test against
    the joint distribution of the first two tokens, enumerated from the model's own logits and
    processed by `nucleus` below (a few lines of plain torch, float64);
  - speculative decoding with top-p at a temperature other than 1: the same test.
Each chi-square test also checks its power: the same samples must REJECT the joints that drop
top-k, top-p or both, i.e. the distributions a decoder that ignored a setting would sample.
"""

import copy
import math

import pytest
import torch

import speculative
from model import Llama, get_config

SIGNIFICANCE = 1e-3     # a correct decoder fails a chi-square test 1 time in 1000 seeds (the seeds are fixed)


# ----------------------------------------------------------------------------------------------
# The independent references
# ----------------------------------------------------------------------------------------------

def nucleus(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The processed distribution of one logits vector (V,), float64, written from the definition:
    softmax(logits / T); keep the top_k most likely; keep the smallest set of most likely tokens
    whose mass reaches top_p (a token stays while the mass strictly before it is < top_p)."""
    probs = torch.softmax(logits.double() / temperature, -1)
    order = torch.argsort(probs, descending=True)
    kept = probs[order]
    if top_k is not None:
        kept[top_k:] = 0
        kept = kept / kept.sum()
    if top_p is not None:
        before = kept.cumsum(0) - kept
        # float32 (the decoders) and float64 (here) must not disagree about a token on the border
        assert (before - top_p).abs().min() > 1e-4, "a token sits on the top-p border: pick other settings"
        kept[before >= top_p] = 0
        kept = kept / kept.sum()
    out = torch.zeros_like(probs)
    out[order] = kept
    return out


@torch.no_grad()
def joint_of_two(model: Llama, prompt: list[int], temperature, top_k, top_p) -> torch.Tensor:
    """P(first two new tokens = (a, b)), (V * V,) row-major: one full forward pass per prefix."""
    V = model.config.vocab_size
    first = nucleus(model(torch.tensor([prompt]))[0, -1], temperature, top_k, top_p)
    second = torch.stack([nucleus(model(torch.tensor([prompt + [a]]))[0, -1], temperature, top_k, top_p)
                          for a in range(V)])
    return (first[:, None] * second).flatten()


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic), X ~ chi-square(df), in closed form for integer df (Abramowitz & Stegun
    26.4.4-5): even df, exp(-h) sum_{k < df/2} h^k / k!; odd df, erfc(sqrt h) + exp(-h) sum_{k=1}^{(df-1)/2}
    h^(k-1/2) / Gamma(k + 1/2), with h = statistic / 2."""
    h = statistic / 2
    if df % 2 == 0:
        term = total = math.exp(-h)
        for k in range(1, df // 2):
            term *= h / k
            total += term
        return total
    total, term = math.erfc(math.sqrt(h)), math.exp(-h) * math.sqrt(h) / math.gamma(1.5)
    for k in range(1, (df - 1) // 2 + 1):
        total += term
        term *= h / (k + 0.5)
    return total


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test of counts against cell probabilities. A count in a cell of probability 0
    rejects outright; cells expecting fewer than 5 counts are pooled into one."""
    counts, expected = counts.double(), probs.double() * counts.sum()
    if (counts[expected == 0] > 0).any():
        return 0.0
    rare = (expected > 0) & (expected < 5)
    cells_counts = torch.cat([counts[expected >= 5], counts[rare].sum().view(1)])
    cells_expected = torch.cat([expected[expected >= 5], expected[rare].sum().view(1)])
    if cells_expected[-1] == 0:
        cells_counts, cells_expected = cells_counts[:-1], cells_expected[:-1]
    statistic = float(((cells_counts - cells_expected) ** 2 / cells_expected).sum())
    return chi2_sf(statistic, len(cells_expected) - 1)


@pytest.mark.parametrize("statistic, df, p_value", [      # from published chi-square tables
    (3.841458820694124, 1, 0.05), (2.365973884375338, 3, 0.5), (29.58829844507442, 10, 0.001),
    (16.26623619623813, 3, 0.001), (37.69729821835383, 15, 0.001)])
def test_chi2_sf_matches_tables(statistic, df, p_value):
    """Guards the helper itself: a wrong p-value would make every chi-square test below meaningless."""
    assert chi2_sf(statistic, df) == pytest.approx(p_value, rel=1e-6)


def random_model(seed: int, vocab_size: int) -> Llama:
    """A one-layer model with unit-scale random weights: sharp, context-dependent distributions."""
    torch.manual_seed(seed)
    model = Llama(get_config("test", vocab_size=vocab_size, n_layers=1, dim=16, n_heads=2, n_kv_heads=1,
                             ffn_dim=32, max_seq_len=16)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]))
    return model


# ----------------------------------------------------------------------------------------------
# sample_probs against hand-computed distributions
# ----------------------------------------------------------------------------------------------

def test_temperature_then_top_p_by_hand():
    """Guards the ORDER temperature -> top-p. probs [0.4, 0.3, 0.2, 0.1] at T = 0.5 become
    [.16, .09, .04, .01] / .30 = [.533, .3, .133, .033]: the 0.8-nucleus is {0, 1} (mass before
    token 2 is .833), so [.64, .36, 0, 0]. Top-p first would keep {0, 1, 2} (.4 + .3 < .8).
    At T = 2 the probs become sqrt([.4, .3, .2, .1]) / 1.9436 = [.325, .282, .230, .163]: the
    0.65-nucleus is {0, 1, 2} (mass before token 3 is .837, before token 2 .607); top-p first
    would keep {0, 1} (.4 + .3 >= .65)."""
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    sharp = speculative.sample_probs(logits, temperature=0.5, top_p=0.8)
    torch.testing.assert_close(sharp, torch.tensor([0.64, 0.36, 0.0, 0.0]))
    flat = speculative.sample_probs(logits, temperature=2.0, top_p=0.65)
    kept = torch.tensor([0.4, 0.3, 0.2]).sqrt()
    torch.testing.assert_close(flat, torch.cat([kept / kept.sum(), torch.zeros(1)]))


def test_temperature_then_top_k_then_top_p_by_hand():
    """Guards the whole chain T -> top-k -> top-p, on rows whose tokens are in scrambled order.
    probs [.35, .25, .2, .12, .08] at T = 0.5: squares [.1225, .0625, .04, .0144, .0064].
      top-k 4, top-p 0.7: top-k drops .0064; renormalised [.512, .261, .167, .060]; mass before
      token 2 is .773 >= .7, so the nucleus is {0, 1}: [.1225, .0625] / .185 = [.662, .338].
      (Top-p before T: top-k 4 at T=1 gives [.380, .272, .217, .130], nucleus {0, 1, 2}.)
      top-k 2, top-p 0.6: top-k leaves [.662, .338], whose 0.6-nucleus is token 0 alone: [1, 0...].
      (Top-p before top-k would keep {0, 1}: .498 < .6; top-p before T too: .583 < .6.)"""
    probs = torch.tensor([0.35, 0.25, 0.2, 0.12, 0.08])
    permutation = torch.tensor([3, 0, 4, 1, 2])                 # row 1 holds the same tokens elsewhere
    logits = torch.stack([probs.log(), probs.log()[permutation]])
    expected = torch.tensor([0.1225, 0.0625, 0.0, 0.0, 0.0]) / 0.185
    out = speculative.sample_probs(logits, temperature=0.5, top_k=4, top_p=0.7)
    torch.testing.assert_close(out, torch.stack([expected, expected[permutation]]))
    out = speculative.sample_probs(logits, temperature=0.5, top_k=2, top_p=0.6)
    one_hot = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(out, torch.stack([one_hot, one_hot[permutation]]))


def test_the_nucleus_reference_agrees_with_the_hand_values():
    """The chi-square tests below trust `nucleus`; it must give the hand values above too."""
    probs = torch.tensor([0.35, 0.25, 0.2, 0.12, 0.08])
    torch.testing.assert_close(nucleus(probs.log(), 0.5, 4, 0.7).float(),
                               torch.tensor([0.1225, 0.0625, 0.0, 0.0, 0.0]) / 0.185)
    torch.testing.assert_close(nucleus(probs.log(), 0.5, 2, 0.6).float(), torch.tensor([1.0, 0, 0, 0, 0]))
    torch.testing.assert_close(nucleus(torch.tensor([0.4, 0.3, 0.2, 0.1]).log(), 0.5, None, 0.8).float(),
                               torch.tensor([0.64, 0.36, 0.0, 0.0]))


# ----------------------------------------------------------------------------------------------
# The decoders' output distribution, by chi-square against the enumerated joint
# ----------------------------------------------------------------------------------------------

def assert_follows_and_has_power(counts: torch.Tensor, right: torch.Tensor, wrong: dict[str, torch.Tensor]):
    p_right = chi_square_p_value(counts, right)
    assert p_right > SIGNIFICANCE, f"the samples do not follow the enumerated joint: p={p_right:.2g}"
    for name, joint in wrong.items():
        assert not torch.allclose(joint, right), f"{name}: the fixture does not tell it apart"
        p_wrong = chi_square_p_value(counts, joint)
        assert p_wrong < SIGNIFICANCE, f"no power: the joint {name} was not rejected, p={p_wrong:.2g}"


def test_plain_batched_decoding_samples_top_k_and_top_p_together():
    """Guards decode_step's sampling settings (issue 38: dropping top-k and top-p in the plain
    decoder, the baseline and the distillation engine, passed every test). 12,000 rows of two
    tokens at T=0.8, top-k 4, top-p 0.75, against the joint enumerated with `nucleus`."""
    V, prompt, sampling = 6, [1, 4], (0.8, 4, 0.75)
    model = random_model(0, V)
    right = joint_of_two(model, prompt, *sampling)
    wrong = {"without top-k": joint_of_two(model, prompt, 0.8, None, 0.75),
             "without top-p": joint_of_two(model, prompt, 0.8, 4, None),
             "without either": joint_of_two(model, prompt, 0.8, None, None),
             "at temperature 1": joint_of_two(model, prompt, 1.0, 4, 0.75)}
    rows, calls = 2000, 6
    decoder = speculative.Decoder(model, rows, speculative.decoder_slots(model, None, [prompt], 2))
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(V * V)
    for _ in range(calls):
        for a, b in decoder.generate([prompt] * rows, 2, *sampling, stop_ids=(), generator=generator):
            counts[a * V + b] += 1
    assert counts.sum() == rows * calls
    assert_follows_and_has_power(counts, right, wrong)


def test_speculative_decoding_samples_top_p_at_a_temperature_other_than_1():
    """Guards the speculative path's sampling settings: with top-p 0.8 at T = 0.7 (both draft and
    target processed), 1,200 runs of two tokens against the TARGET's joint enumerated with
    `nucleus`; the draft (a perturbed copy) proposes, so rejections and residual draws occur."""
    V, prompt, gamma, sampling = 6, [1, 4], 2, (0.7, None, 0.8)
    target = random_model(0, V)
    draft = copy.deepcopy(target)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(0.5 * param.std() * torch.randn(param.shape, generator=generator))
    right = joint_of_two(target, prompt, *sampling)
    wrong = {"without top-p": joint_of_two(target, prompt, 0.7, None, None),
             "at temperature 1": joint_of_two(target, prompt, 1.0, None, 0.8),
             "of the draft": joint_of_two(draft, prompt, *sampling)}
    decoder = speculative.SpeculativeDecoder(target, draft, speculative.decoder_slots(target, draft, [prompt], 2, gamma))
    counts, accepted = torch.zeros(V * V), set()
    for _ in range(1200):
        tokens, stats = decoder.generate(prompt, 2, gamma, *sampling, stop_ids=(), generator=generator)
        a, b = tokens.tolist()
        counts[a * V + b] += 1
        accepted.update(stats["accepted_per_block"])
    assert accepted == {0, 1, 2}, "rejections at each position and full blocks must all occur"
    assert_follows_and_has_power(counts, right, wrong)
