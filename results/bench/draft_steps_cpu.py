"""CPU cost of one cached 1-token step of each SmolLM2 draft shape (random float32 weights,
64 tokens in the cache), on the decode paths 'eager' and 'few-row-matmuls', measured twice each
in one process: the two from-scratch presets and the 4-block cut (full 49,152-token head).
The .txt beside it holds three runs of this command (2026-12-06, a 2-core AMD EPYC of CPU family
25, lscpu in draft_steps_cpu_lscpu.txt); they spread by up to 2x on this shared machine.
README's draft table quotes it.

    for run in 1 2 3; do PYTHONPATH=. python results/bench/draft_steps_cpu.py; done | tee results/bench/draft_steps_cpu.txt
"""
import sys
from dataclasses import replace

import torch

sys.path.insert(0, "results/smollm2-cpu-2026-12-02")
from step_costs import pass_ms  # noqa: E402  (median of 15 timed passes after 3 warm-ups)

from fast_decode import apply_decode_path  # noqa: E402
from model import Llama, count_params, get_config  # noqa: E402

print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for path in ("eager", "few-row-matmuls"):
    for name in ("smollm2-draft-2l", "smollm2-draft-4l", "cut:4"):
        torch.manual_seed(0)
        config = replace(get_config("smollm2-135m"), n_layers=4) if name == "cut:4" else get_config(name)
        model = Llama(config).eval()
        apply_decode_path([model], path)
        print(f"{path:>15} {name} ({count_params(model) / 1e6:.1f}M): 1-token step {pass_ms(model, 1):.1f} ms, "
              f"again {pass_ms(model, 1):.1f} ms")
