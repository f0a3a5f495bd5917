"""Is a 1-row product faster as a 2-row one on this CPU? The bare 49,152 x 576 head product is
(step_costs.txt: 12.97 ms for 1 row, 4.95 ms for 2 rows as (W x^T)^T); this times a whole cached
SmolLM2 target step (float32, few-row-matmuls, 64 tokens in the cache) with the library's 1-row
products, with the head's product computed as 2 rows (x twice) in the transposed form, and with
every linear layer's product computed so. Median of 21 steps after 3 warm-ups, twice each.

    PYTHONPATH=. python results/smollm2-cut4-2026-12-02/cpu/one_row_as_two.py
"""
import time

import torch

from checkpoints import load_model
from fast_decode import FewRowLinear, apply_decode_path

target = load_model("models/SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
apply_decode_path([target], "few-row-matmuls")
cache = target.new_cache(1, 600)
with torch.no_grad():
    target(torch.randint(0, 49152, (1, 64)), cache, torch.arange(64))


@torch.no_grad()
def step_ms(repeats: int = 21) -> float:
    times = []
    for _ in range(3 + repeats):
        start = time.perf_counter()
        target(torch.randint(0, 49152, (1, 1)), cache, torch.arange(64, 65))
        times.append(time.perf_counter() - start)
    return sorted(times[3:])[repeats // 2] * 1e3


def as_two_rows(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    twice = x.reshape(1, x.shape[-1]).expand(2, -1)                          # (2, in)
    return (weight @ twice.T)[:, :1].T.reshape(*x.shape[:-1], weight.shape[0])


class HeadAsTwoRows(torch.nn.Module):
    def forward(self, x):
        return as_two_rows(head.weight, x)


library_forward, head = FewRowLinear.forward, target.output
for attempt in range(2):
    library = step_ms()
    FewRowLinear.forward = lambda self, x: (as_two_rows(self.weight, x) if x.numel() == x.shape[-1]
                                            else library_forward(self, x))
    every_layer = step_ms()
    FewRowLinear.forward = library_forward
    target.output = HeadAsTwoRows()
    head_only = step_ms()
    target.output = head
    print(f"target step: library 1-row products {library:.1f} ms; head as 2 rows {head_only:.1f} ms; "
          f"every layer as 2 rows {every_layer:.1f} ms")
