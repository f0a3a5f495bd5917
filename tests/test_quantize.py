"""Tests of quantize.py: the weight-only quantized decode paths (bf16-weights, int8-weights).

A quantized model is another model; what must hold is that (1) each product computes x W^T for
the weight the layer now stores, rounded as the scheme says, and (2) speculative decoding with a
quantized target is exactly lossless with respect to THAT target: by chi-square against the
quantized target's own exact joint distribution, with the power to reject the draft's."""

import copy

import pytest
import torch
import torch.nn as nn

import fast_decode
from quantize import QuantizedLinear, quantize_weights
from test_speculative import (SIGNIFICANCE, TINY, chi_square_p_value, exact_joint, perturbed_copy, plain_decode,
                              random_model, speculative_decode)

PATHS = ["bf16-weights", "int8-weights"]


@pytest.mark.parametrize("scheme", ["bfloat16", "int8"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (2, 3), (6,)])
def test_a_quantized_product_is_x_times_the_stored_weight(scheme, shape):
    """forward(x) = x W^T with W the dequantized weight, up to rounding x to bfloat16 for the
    product (an input's relative error 2^-9): compared with float64 arithmetic."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=False)
    quantized = QuantizedLinear(linear, scheme)
    x = torch.randn(*shape, 64)
    out = quantized(x)
    assert out.shape == (*shape, 48) and out.dtype == torch.float32
    weight = quantized.dequantized().double()
    exact = x.double() @ weight.T
    bound = 2 ** -8 * (x.double().abs() @ weight.abs().T) + 1e-6           # bf16 input rounding, bf16 output
    assert torch.all((out.double() - exact).abs() <= bound)


def test_bf16_weights_are_the_weights_rounded_to_bfloat16():
    """The bf16 scheme's weight is each float32 weight rounded to bfloat16, in place: a
    scrambled or transposed copy would multiply by the right numbers in the wrong places."""
    torch.manual_seed(2)
    linear = nn.Linear(32, 16, bias=False)
    quantized = QuantizedLinear(linear, "bfloat16")
    assert torch.equal(quantized.dequantized(), linear.weight.detach().bfloat16().float())
    x = torch.randn(3, 32)
    assert torch.allclose(quantized(x), linear(x).detach(), rtol=0.02, atol=0.02)   # close to float32's product


def test_int8_rounds_each_weight_to_its_rows_step():
    """int8: w = s[o] q, s[o] = max |w[o]| / 127 rounded up to a bfloat16: each weight within half
    a step of its row's scale, the row's largest weight at 126 or 127 steps."""
    torch.manual_seed(1)
    linear = nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        linear.weight[3] *= 100                                             # one row of another range
    quantized = QuantizedLinear(linear, "int8")
    scales = quantized.scales.float()                                       # bf16, at least max |w| / 127
    assert torch.all(scales * 127 >= linear.weight.abs().amax(1))
    assert torch.all(scales <= linear.weight.abs().amax(1) / 127 * (1 + 2 ** -7))
    error = (quantized.dequantized() - linear.weight).abs()
    assert quantized.weight.dtype == torch.int8 and quantized.weight.abs().amax(1).ge(126).all()
    assert torch.all(error <= scales[:, None] * 0.5 + 1e-7)
    assert error[0].max() < error[3].max() / 10                             # per row, not per matrix


@pytest.mark.parametrize("path", PATHS)
def test_quantize_weights_replaces_the_blocks_linears_and_keeps_the_embedding_and_head(path):
    """The blocks' 7 projections each, quantized; the embedding and the LM head float32 (the head
    as few-row products): the logits that decide every token are not rounded to bfloat16."""
    model = random_model(0, vocab_size=32)
    embedding, head = model.tok_embeddings.weight.clone(), model.output.weight.clone()
    # a CPU path: no recorded steps, and the decoders keep their sampling eager
    assert fast_decode.apply_decode_path([model], path) == {"graphs": False, "compile_sampling": False}
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 7 * model.config.n_layers
    assert not any(type(m) is nn.Linear for m in model.layers.modules())
    assert type(model.output) is fast_decode.FewRowLinear and torch.equal(model.output.weight, head)
    assert model.tok_embeddings.weight.dtype == torch.float32 and torch.equal(model.tok_embeddings.weight, embedding)
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_weights(random_model(0), "int4")


@pytest.mark.parametrize("path", PATHS)
def test_speculative_decoding_is_lossless_for_the_quantized_target(path):
    """The target IS its quantized self: the samples follow its exact joint (computed from the
    quantized model's own logits), not the draft's."""
    vocab_size, gamma, prompt, sampling, n_tokens, n_runs = 6, 2, [2, 5], dict(temperature=1.0, top_p=0.9), 3, 600
    target = random_model(0, vocab_size=vocab_size, **TINY)
    draft = perturbed_copy(target, noise=0.5)
    fast_decode.apply_decode_path([target, draft], path)
    target_joint = exact_joint(target, prompt, n_tokens, **sampling)
    draft_joint = exact_joint(draft, prompt, n_tokens, **sampling)
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(vocab_size ** n_tokens)
    for _ in range(n_runs):
        tokens, _ = speculative_decode(target, draft, prompt, n_tokens, gamma, **sampling, generator=generator)
        counts[sum(int(t) * vocab_size ** (n_tokens - 1 - i) for i, t in enumerate(tokens))] += 1
    p_target = chi_square_p_value(counts, target_joint)
    assert p_target > SIGNIFICANCE, f"speculative samples do not follow the quantized target: p={p_target:.2g}"
    assert chi_square_p_value(counts, draft_joint) < SIGNIFICANCE, "no power: the draft's joint was not rejected"


@pytest.mark.parametrize("path", PATHS)
def test_greedy_speculative_decoding_is_the_quantized_targets_greedy_decoding(path):
    target = random_model(0, vocab_size=32)
    draft = perturbed_copy(target, noise=0.3)
    fast_decode.apply_decode_path([target, draft], path)
    for gamma in (1, 3):
        tokens, _ = speculative_decode(target, draft, [5, 9, 2], 24, gamma, temperature=0)
        assert torch.equal(tokens, plain_decode(target, [5, 9, 2], 24, temperature=0))


def test_quantized_paths_are_for_a_cpu():
    model = copy.deepcopy(random_model(0)).to("meta")
    with pytest.raises(ValueError, match="is for a CPU"):
        fast_decode.apply_decode_path([model], "bf16-weights")
