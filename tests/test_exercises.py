"""Checks for the exercises of docs/exercises.md that the rest of the suite does not already check.

A student's answer goes in the functions marked ANSWER below: each holds the solution, so delete
its body first (or cover it up) and write your own. The expected values are typed by hand (the
derivation is in the comment next to them) or read from a committed results/ file, never
computed with the code under test.
"""

import os
import re

import pytest
import torch

from losses import LOSSES, tvd
from speculative import choose_gamma, expected_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def logit_gradient(name: str, draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """d LOSSES[name] / d draft_logits on rows (N, V), by autograd, times N: the gradient of one
    position's loss (the losses average over positions)."""
    draft = draft_logits[None].clone().requires_grad_(True)               # (1, N, V)
    tokens = torch.zeros(draft.shape[:2], dtype=torch.long)
    LOSSES[name](draft, target_logits[None], tokens, None).backward()
    return draft.grad[0] * draft.shape[1]


def random_rows(seed: int, n: int = 12, vocab: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, vocab, generator=generator), 2 * torch.randn(n, vocab, generator=generator)


# ----------------------------------------------------------------------------------------------
# Exercise 2: TVD's gradient with respect to the draft's logits (PAPER.md 3.3)
# ----------------------------------------------------------------------------------------------

def tvd_gradient(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """ANSWER: d TVD(p, softmax(z)) / dz for rows p, q (..., V), q = softmax(z)."""
    r = (p > q).to(q.dtype)                                    # the reward: tokens q under-estimates
    return -q * (r - (q * r).sum(-1, keepdim=True))            # -q * (r - E_q[r])


def test_tvd_gradient_by_hand():
    # p = (1/2, 1/2), q = (1/4, 3/4): r = (1, 0), E_q[r] = 1/4, -q (r - 1/4) = (-3/16, 3/16)
    p, q = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64)
    torch.testing.assert_close(tvd_gradient(p, q), torch.tensor([-3 / 16, 3 / 16], dtype=torch.float64))
    # p = (.5, .3, .2), q = (.2, .2, .6): r = (1, 1, 0), E_q[r] = .4, -q (r - .4) = (-.12, -.12, .24)
    p, q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    torch.testing.assert_close(tvd_gradient(p, q), torch.tensor([-0.12, -0.12, 0.24], dtype=torch.float64))
    # and autograd through losses.tvd agrees with the first hand value
    draft, target = torch.tensor([[0.25, 0.75]]).log(), torch.tensor([[0.5, 0.5]]).log()
    torch.testing.assert_close(logit_gradient("tvd", draft, target), torch.tensor([[-3 / 16, 3 / 16]]))


def test_tvd_gradient_matches_autograd_on_random_logits():
    assert LOSSES["tvd"] is tvd
    for seed in range(3):
        draft, target = random_rows(seed)
        p, q = torch.softmax(target.double(), -1), torch.softmax(draft.double(), -1)
        torch.testing.assert_close(tvd_gradient(p, q).float(), logit_gradient("tvd", draft, target),
                                   atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Exercise 4: which gamma, on measured step costs (PAPER.md 5.5)
# ----------------------------------------------------------------------------------------------

# ms of one cached pass, results/smollm2-cpu/step_costs.txt, the few-row-matmuls lines:
# SmolLM2 over 1..7 tokens 21.4 22.2 26.4 24.2 32.2 37.2 43.2; the cut draft over 1 / 2 tokens 4.8 / 5.8.
# A block of gamma: the draft's first step over 2 tokens, gamma - 1 steps over 1, one target pass
# over gamma + 1 tokens (sampling and glue left out): 5.8 + 4.8 (gamma - 1) + target[gamma + 1].
MEASURED_CPU_COSTS = {"plain": 21.4, "block": {1: 5.8 + 22.2, 2: 10.6 + 26.4, 3: 15.4 + 24.2,
                                               4: 20.2 + 32.2, 5: 25.0 + 37.2, 6: 29.8 + 43.2}}


def test_choose_gamma_on_the_measured_cpu_costs():
    # 1 / 21.4 = 0.0467 tokens per ms for plain decoding; blocks of 28.0 37.0 39.6 52.4 62.2 73.0 ms.
    # alpha 0.8: E = 1.8 2.44 2.952 3.3616 3.6893 3.9514 -> per ms .0643 .0659 .0745 .0642 .0593 .0541
    assert choose_gamma([0.8] * 6, MEASURED_CPU_COSTS) == 3
    # alpha 1: E = 2 .. 7 -> .0714 .0811 .1010 .0954 .0965 .0959: the cheap 4-token pass still wins
    assert choose_gamma([1.0] * 6, MEASURED_CPU_COSTS) == 3
    # alpha 0.25: the best block, gamma 1, makes 1.25 / 28.0 = .0446 < .0467: plain steps
    assert choose_gamma([0.25] * 6, MEASURED_CPU_COSTS) == 0
    # alpha_k = .9 .9 .1 .1 .1 .1: E = 1.9 2.71 2.791 2.7991 ... -> .0679 .0732 .0705 .0534 ...
    assert choose_gamma([0.9, 0.9, 0.1, 0.1, 0.1, 0.1], MEASURED_CPU_COSTS) == 2
    # the same E by hand: 1 + .9 + .81 + .081
    assert expected_tokens([0.9, 0.9, 0.1, 0.1], 3) == pytest.approx(2.791)


# ----------------------------------------------------------------------------------------------
# Exercise 5: a loss of your own in losses.LOSSES, and its gradient on the logits
# ----------------------------------------------------------------------------------------------

# ANSWER: name in losses.LOSSES -> its gradient with respect to the draft's logits at one position,
# as a function of the rows p, q (N, V). "kld" is the worked example (PAPER.md 3.1). For a loss
# that mixes positions (lk_hybrid's lambda is a mean over them) this form does not apply.
GRADIENTS = {
    "kld": lambda p, q: q - p,
}


@pytest.mark.parametrize("name", sorted(GRADIENTS))
def test_gradient_of_a_registered_loss(name):
    assert name in LOSSES, f"add {name!r} to losses.LOSSES"
    for seed in range(3):
        draft, target = random_rows(10 + seed)
        p, q = torch.softmax(target.double(), -1), torch.softmax(draft.double(), -1)
        torch.testing.assert_close(GRADIENTS[name](p, q).float(), logit_gradient(name, draft, target),
                                   atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Exercise 6: a measured speed-up from measured step costs
# ----------------------------------------------------------------------------------------------

def speedup_from_step_costs(tokens_per_block: float, plain_ms_per_token: float, block_ms: float) -> float:
    """ANSWER: speculative over plain tokens per second, from what one block makes and costs."""
    return tokens_per_block * plain_ms_per_token / block_ms


def test_speedup_from_step_costs_by_hand():
    assert speedup_from_step_costs(2.0, 1.0, 2.0) == pytest.approx(1.0)        # tau = c: break-even
    assert speedup_from_step_costs(3.0, 10.0, 15.0) == pytest.approx(2.0)      # tau = 2c: twice as fast


def test_speedup_from_step_costs_reproduces_the_measured_cpu_rows():
    """results/smollm2-cpu/block_costs.txt prints, per gamma, the plain ms per token, the ms per
    block, the tokens per block and the speed-up it measured; the formula must give the same
    speed-up from the other three (to the file's rounding)."""
    with open(os.path.join(ROOT, "results", "smollm2-cpu", "block_costs.txt"), encoding="utf-8") as f:
        rows = re.findall(r"gamma (\d+): plain ([\d.]+) ms per token .*?speculative ([\d.]+) ms per block "
                          r"\(\d+ blocks, ([\d.]+) tokens each\); speed-up ([\d.]+)x", f.read())
    assert [int(row[0]) for row in rows] == [3, 4]
    for _, plain_ms, block_ms, tokens, measured in rows:
        predicted = speedup_from_step_costs(float(tokens), float(plain_ms), float(block_ms))
        assert predicted == pytest.approx(float(measured), abs=0.01)
