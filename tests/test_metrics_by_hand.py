"""speculative.block_stats on counts where every candidate formula gives a different number
(issue 38: the earlier hand test used numbers for which the right tau and "kept tokens per block"
coincided). Every expected value is typed by hand from PAPER.md section 5's definitions."""

import json
import os

import pytest

from speculative import block_stats

# Four blocks of a run that drafted 3, 2, 4 and 2 tokens (short blocks near a context's end) and
# accepted 3 (all), 0, 1 and 2 (all). A stop token in the last block cut the output to 8 tokens.
ACCEPTED, DRAFTED, N_TOKENS = [3, 0, 1, 2], [3, 2, 4, 2], 8
#   tau   = mean over blocks of (accepted + 1) = (4 + 1 + 2 + 3) / 4        = 2.5
#   kept tokens per block = 8 / 4                                             = 2.0   (not tau)
#   tests = 3 (fully accepted) + 1 (rejected at 1) + 2 (rejected at 2) + 2 (fully accepted) = 8
#   alpha = accepted / tests = 6 / 8                                          = 0.75
#   accepted / drafted = 6 / 11 = 0.545, accepted / (blocks x max gamma) = 6 / 16 = 0.375 (not alpha)


def test_block_efficiency_is_the_mean_of_accepted_plus_one_not_kept_tokens_per_block():
    """Guards tau against "new tokens / blocks", which undercounts a block whose tokens were cut
    by a stop token (tau measures the blocks, PAPER.md 5.1)."""
    stats = block_stats(ACCEPTED, DRAFTED, N_TOKENS, seconds=2.0)
    assert stats["block_efficiency"] == pytest.approx(2.5)
    assert stats["new_tokens"] == 8


def test_acceptance_rate_counts_the_tests_made_not_the_tokens_drafted():
    """Guards alpha against accepted / drafted (tokens after a rejection were never tested) and
    against counting a fully accepted block as gamma + 1 tests."""
    stats = block_stats(ACCEPTED, DRAFTED, N_TOKENS, seconds=2.0)
    assert stats["accept_tests"] == 8
    assert stats["acceptance_rate"] == pytest.approx(0.75)


def test_call_counts_by_hand():
    """Guards the cost counts: one target call per block, one draft call per drafted token."""
    stats = block_stats(ACCEPTED, DRAFTED, N_TOKENS, seconds=2.0)
    assert (stats["target_calls"], stats["draft_calls"]) == (4, 11)
    assert (stats["accepted_per_block"], stats["drafted_per_block"]) == (ACCEPTED, DRAFTED)
    assert stats["seconds"] == 2.0


def test_per_position_tests_and_acceptances_by_hand():
    """Guards alpha_k's counts (PAPER.md 5.2): position k is tested by the blocks that drafted at
    least k tokens and accepted the first k - 1; the counts must add up to the totals above.
      k=1: tested by all 4 blocks, accepted by 3 (blocks 1, 3, 4)
      k=2: tested by blocks 1, 3, 4 (block 2 stopped at 1), accepted by blocks 1 and 4
      k=3: tested by block 1 alone (block 4 drafted 2), accepted by it
      k=4: no block drafted 4 tokens AND accepted the first 3 (block 3 drafted 4 but stopped at 2)"""
    stats = block_stats(ACCEPTED, DRAFTED, N_TOKENS, seconds=2.0)
    assert stats["tested_at"] == [4, 3, 1, 0]
    assert stats["accepted_at"] == [3, 2, 1, 0]


def test_evaluate_pools_tau_per_prompt_and_alpha_over_all_tests():
    """Guards evaluate.pool_runs (the numbers of every results row): tau is the mean over prompts
    of each prompt's tau (each prompt counts once), alpha is all accepted draft tokens over all
    tests of all prompts (not the mean of per-prompt alphas), alpha_k likewise per position.
      prompt A: blocks accepted [3, 0] of gamma 3 -> tau (4 + 1) / 2 = 2.5, tests 3 + 1 = 4, accepted 3
      prompt B: blocks accepted [1, 1, 2, 0] of gamma 3 -> tau (2 + 2 + 3 + 1) / 4 = 2.0,
                tests 2 + 2 + 3 + 1 = 8, accepted 4
      pooled tau = (2.5 + 2.0) / 2 = 2.25, NOT all tokens over all blocks (13 / 6 = 2.17);
      pooled alpha = (3 + 4) / (4 + 8) = 7 / 12 = 0.583, NOT the mean of 3/4 and 4/8 (0.625);
      alpha_1 = accepted at 1 (A: 1, B: 3) / tested at 1 (A: 2, B: 4) = 4 / 6,
      alpha_2 = (1 + 1) / (1 + 3) = 2 / 4, alpha_3 = (1 + 0) / (1 + 1) = 1 / 2;
      tokens/s = (5 + 8) new tokens / (1.0 + 3.0) s = 3.25; mean gamma 3."""
    from evaluate import pool_runs
    runs = [(5, block_stats([3, 0], [3, 3], 5, 1.0)), (8, block_stats([1, 1, 2, 0], [3, 3, 3, 3], 8, 3.0))]
    row = pool_runs(runs)
    assert row["block_efficiency"] == pytest.approx(2.25)
    assert row["ci95"] == pytest.approx(1.96 * (0.125 ** 0.5) / (2 ** 0.5))     # sample std of 2.5, 2.0
    assert row["acceptance_rate"] == pytest.approx(7 / 12)
    assert row["alpha_per_position"] == pytest.approx([4 / 6, 2 / 4, 1 / 2])
    assert row["tests_per_position"] == [6, 4, 2]
    assert row["tokens_per_s"] == pytest.approx(3.25)
    assert row["mean_gamma"] == 3


def run_auto_prediction(path, monkeypatch) -> None:
    import runpy
    monkeypatch.setattr("sys.argv", ["auto_prediction.py", str(path)])
    runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "tools", "auto_prediction.py"), run_name="__main__")


def test_auto_prediction_by_hand(tmp_path, capsys, monkeypatch):
    """tools/auto_prediction.py on two cells typed by hand.
    T=1 (a plain step 1 ms, a block of 1 2 ms, of 2 2.5 ms, as the auto row's loop left them):
      gamma 1, alpha_1 0.6 over 100 tests, 1.1x: predicted (1 + 0.6) x 1 / 2 = 0.8, measured / predicted 1.375
      gamma 2, alphas 0.4, 0.5 over 100, 40 tests, 0.9x: predicted (1 + 0.4 + 0.2) / 2.5 = 0.64, ratio 1.40625
      auto's alpha_1 0.3 over 50 tests against the fixed rows' mean 0.5: -0.2
      pooled: alpha_1 (60 + 40) / 200 = 0.5, alpha_2 0.5 -> gamma 1 (1.5 / 2 = 0.75), 2 (1.75 / 2.5 = 0.7): plain
    T=0 (1 ms, 1.2 ms, 1.6 ms):
      gamma 1, alpha_1 0.9, 1.5x: predicted 1.9 / 1.2, ratio 0.947
      gamma 2, alphas 0.8 and none (no block reached position 2: NaN, read as 0), 1.2x: predicted 1.8 / 1.6, 1.067
      auto tested 10 first tokens, fewer than MIN_TESTS: no alpha_1 line at T=0
      pooled: alpha_1 (90 + 80) / 200 = 0.85, alpha_2 0 -> gamma 1 at 1.85 / 1.2 = 1.542
    Left out: the pretrained draft's cell, and T=0's argmax rows (copies of the sample rows)."""
    def cell(draft, temperature, mode, block_ms, rows):
        auto_costs = {"after": {"plain": 1.0, "block": dict(zip(("1", "2"), block_ms))}}
        return [{"draft": draft, "task": "t", "temperature": temperature, "draft_mode": mode, "gamma": gamma,
                 "alpha_per_position": alphas, "tests_per_position": tests, "speedup": speedup,
                 **({"mean_gamma": mean_gamma, "costs_ms": auto_costs} if gamma == "auto" else {})}
                for gamma, alphas, tests, speedup, mean_gamma in rows]
    t1 = [(1, [0.6], [100], 1.1, None), (2, [0.4, 0.5], [100, 40], 0.9, None), ("auto", [0.3], [50], 0.95, 1.5)]
    t0 = [(1, [0.9], [100], 1.5, None), (2, [0.8, float("nan")], [100, 0], 1.2, None), ("auto", [0.9], [10], 1.4, 1.0)]
    rows = (cell("d", 1.0, "sample", (2.0, 2.5), t1) + cell("d", 0.0, "sample", (1.2, 1.6), t0)
            + cell("d", 0.0, "argmax", (1.2, 1.6), [(g, a, n, 9.0, m) for g, a, n, _, m in t0])
            + cell("pretrained", 1.0, "sample", (2.0, 2.5), [(1, [0.1], [100], 0.5, None), ("auto", [], [], 1.0, 0.0)]))
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": rows}))
    run_auto_prediction(path, monkeypatch)
    assert capsys.readouterr().out.splitlines() == [
        "1. T=0: measured / predicted over 2 fixed-gamma rows: median 1.007, min 0.947, max 1.067",
        "1. T=1: measured / predicted over 2 fixed-gamma rows: median 1.391, min 1.375, max 1.406",
        "2. T=1: auto's alpha_1 minus its cell's fixed gammas' mean over 1 cells: mean -0.200, min -0.200, max -0.200",
        "3. gamma auto, per cell:",
        "   d t T=0 sample: 1.400x at mean gamma 1.00; the rule on the pooled acceptance: gamma 1 at 1.542x",
        "   d t T=1 sample: 0.950x at mean gamma 1.50; the rule on the pooled acceptance: plain (the best block at "
        "0.750x)"]
    path.write_text(json.dumps({"results": [r for r in rows if r["gamma"] == "auto"]}))
    with pytest.raises(SystemExit, match="no cell with both gamma auto"):
        run_auto_prediction(path, monkeypatch)
    with pytest.raises(SystemExit, match="cannot read"):
        run_auto_prediction(tmp_path / "missing.json", monkeypatch)
