"""
quantize.py: weight-only quantization, so that a CPU reads fewer bytes per decode step.

Why. Decoding one token reads every weight of the model once and does two FLOPs per weight
read: on a CPU the step's time follows the bytes it reads. float32 weights are 4 bytes each,
where llama.cpp reads SmolLM2's GGUF in its own 4- and 8-bit formats. Two weight-only schemes,
each a decode path (`--decode-path`), both keeping the activations in float32 between products:

  bf16-weights  every weight rounded to bfloat16 (2 bytes): float32's exponent with 8 bits of
                mantissa. The product runs in bfloat16 (float32 accumulation) where the CPU has
                the instructions for it (AVX-512 BF16, AMX); the input is rounded to bfloat16
                for the product, its output returned as float32.
  int8-weights  every weight an int8 times a float scale per output row: w[o, i] = s[o] q[o, i],
                s[o] = max_i |w[o, i]| / 127 (the scheme of gpt-fast's int8 weight-only mode),
                1 byte per weight; the product is torch's own int8 weight-only kernel.

Which one is faster depends on the CPU and its kernels: BENCHMARKS.md measures both against
float32 for the 1 to 6 rows a decode step or a verify pass multiplies (tools/cpu_costs.py).
With the products cheaper, the rest of a step -- dozens of small element-wise operations per
block, each a call of its own -- weighs more: the path compile+int8-weights also compiles every
block (fast_decode.compile_blocks; on a CPU torch.compile generates C++, so it needs a compiler).

What it changes. The quantized model is ANOTHER model: its next-token distribution differs from
the float32 one by the rounding of the weights. Speculative decoding stays exactly lossless with
respect to the model it runs: with the target quantized, the output is distributed as the
QUANTIZED target's own sampling (tests/test_quantize.py checks that by chi-square against the
quantized target's exact distribution), and README says how close that model is to float32's.
Only the blocks' projections are quantized. The embedding stays float32 (a step reads one row of
it, not all of it), and so does the LM head, taken as few-row products (fast_decode.FewRowLinear):
its logits decide every token, and in bfloat16 they come out in steps of 1/8 around 20, so that
the likeliest tokens tie, and a tie falls one way or the other with the number of tokens a pass
scores (the kernels accumulate in another order): greedy speculative decoding would then depend
on gamma at every tie. A float32 head removes those ties; the blocks' products still come back
rounded to bfloat16, differently for 1 and for gamma + 1 tokens, so a near-tie can still fall
either way (BENCHMARKS.md section 4 counts how often). For decoding only: training needs float32.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Llama

SCHEMES = ("bfloat16", "int8")


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) as int8 rows q (out, in) and a bfloat16 scale per row s (out,), w ~ s q.

    The row's largest magnitude maps to 127: the rounding error of a weight is at most half a
    step, s[o] / 2, relative to its row's range, not to the whole matrix's. The kernel takes
    bfloat16 scales: rounded UP to one, so that no weight needs more than 127 steps."""
    weight = weight.detach().float()
    largest = weight.abs().amax(dim=1).clamp(min=1e-30)                                # (out,)
    scales = (largest / 127).to(torch.bfloat16)
    scales = torch.where(scales.float() * 127 < largest, torch.nextafter(scales, scales.new_tensor(1e30)), scales)
    return (weight / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8), scales


def dequantize_rows(rows: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8_rows undone: w[o, i] = s[o] q[o, i], float32 (out, in)."""
    return rows.float() * scales.float()[:, None]


class QuantizedLinear(nn.Module):
    """A bias-free nn.Linear whose weight is stored in bfloat16, or as int8 with a scale per
    output row; forward(x) is x W^T for float32 x (..., in) -> (..., out), float32."""

    def __init__(self, linear: nn.Linear, scheme: str):
        super().__init__()
        weight = linear.weight.detach().float()                                   # (out, in)
        self.scheme, self.in_features, self.out_features = scheme, linear.in_features, linear.out_features
        if scheme == "bfloat16":
            self.register_buffer("weight", weight.to(torch.bfloat16))
        else:
            rows, scales = int8_rows(weight)
            self.register_buffer("weight", rows)
            self.register_buffer("scales", scales)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by, as float32 (out, in): what the model now IS."""
        if self.scheme == "bfloat16":
            return self.weight.float()
        return dequantize_rows(self.weight, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)                 # (rows, in)
        if self.scheme == "bfloat16":
            out = F.linear(flat, self.weight)
        else:
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
        return out.float().view(*x.shape[:-1], self.out_features)                   # (..., out)


def quantize_weights(model: Llama, scheme: str) -> Llama:
    """Replace every bias-free nn.Linear of the model's blocks by a QuantizedLinear, in place;
    the embedding and the LM head stay as they are (the module docstring says why)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; choose one of {SCHEMES}")
    if model.device.type != "cpu":
        raise ValueError("the weight-only quantized paths are for a CPU; on a GPU use --dtype bfloat16")
    for parent in list(model.layers.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.bias is None:
                setattr(parent, name, QuantizedLinear(child, scheme))
    return model
