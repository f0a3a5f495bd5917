"""Why few-row-matmuls changed on 2026-12-04 (BENCHMARKS.md section 0f), on this CPU in float32:

  (a) the bare products of SmolLM2's 30 blocks (wq, wk, wv, wo, w1, w3, w2 at their shapes) and its
      49,152 x 576 head, random weights streamed from memory (far more bytes than the L3 holds),
      with C columns as W x^T (x row-major, x^T a transposed view); C = 1 is the library's
      matrix-vector product;
  (b) the same with x^T stored column by column (what the old FewRowLinear handed the next layer);
  (c) one cached pass of the real SmolLM2 (GGUF) of T tokens on few-row-matmuls: 1-row products
      the library's way and as two rows; and with FewRowLinear's output left as the transposed
      view (the code before this change) against made contiguous (now).
Medians after warm-ups, this machine's threads.

    PYTHONPATH=. python results/smollm2-gpu-2026-12-04b/cpu/few_row_costs.py > results/smollm2-gpu-2026-12-04b/cpu/few_row_costs.txt
"""
import sys
import time

import torch

sys.path.insert(0, "results/smollm2-cpu-2026-12-02")
import fast_decode                                                   # noqa: E402
from checkpoints import load_model                                  # noqa: E402
from step_costs import GGUF, pass_ms                                # noqa: E402

torch.manual_seed(0)
SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
weights = [torch.randn(*shape) for _ in range(30) for shape in SHAPES] + [torch.randn(49152, 576)]


def all_products_ms(columns: int, column_major: bool) -> float:
    inputs = {k: torch.randn(columns, k) for k in (576, 1536)}               # (C, in), row-major
    if column_major:
        inputs = {k: x.T.contiguous().T for k, x in inputs.items()}          # same values, x^T contiguous
    times = []
    for _ in range(10):
        started = time.perf_counter()
        for w in weights:
            w @ inputs[w.shape[1]].T
        times.append(time.perf_counter() - started)
    return sorted(times[2:])[4] * 1e3


print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
print("(a) all 211 products, x^T a transposed view: " +
      ", ".join(f"{c} col {all_products_ms(c, False):.1f} ms" for c in range(1, 9)))
print("(b) all 211 products, x^T stored column by column: " +
      ", ".join(f"{c} col {all_products_ms(c, True):.1f} ms" for c in (2, 4)))

model = load_model(GGUF, "cpu", torch.float32)
fast_decode.few_row_matmuls(model, one_row_as_two=False)
linears = [m for m in model.modules() if isinstance(m, fast_decode.FewRowLinear)]
for as_two in (False, True):
    for m in linears:
        m.one_row_as_two = as_two
    print(f"(c) SmolLM2, 1 token, one row {'as two' if as_two else 'the library way'}: {pass_ms(model, 1):.1f} ms")
contiguous = fast_decode.FewRowLinear.forward


def transposed_view_forward(self, x):      # FewRowLinear.forward before 2026-12-04b, for T >= 2
    rows = x.numel() // x.shape[-1]
    if rows == 1 or rows > self.FEW_ROWS:
        return torch.nn.Linear.forward(self, x)
    flat = x.reshape(rows, x.shape[-1])
    return (self.weight @ flat.T).T.reshape(*x.shape[:-1], self.out_features)


for name, forward in (("transposed view (before)", transposed_view_forward), ("contiguous (now)", contiguous)):
    fast_decode.FewRowLinear.forward = forward
    print(f"(c) SmolLM2, output {name}: " + ", ".join(f"T={t} {pass_ms(model, t):.1f} ms" for t in (2, 3, 4, 5)))
