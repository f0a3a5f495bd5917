"""How far gamma auto's prediction is from what an evaluation measured, per temperature.

    python tools/auto_prediction.py results/smollm2-gpu/cuts-h100/results.json

gamma "auto" runs a block where predicted_gain (speculative.py, PAPER.md 5.5) exceeds the decoder's
block_margin. From an evaluate.py results.json whose auto rows keep their costs (evaluate.py
writes them), this prints what makes a predicted gain come out otherwise on the clock:
1. the prediction with the acceptance known: each distilled fixed-gamma row's measured speed-up
   over the gain predicted from its own alpha_k and the step costs of its cell's auto row as the
   loop left them ("after"). What is left is the price of the steps, and what a call pays for its
   prompt: the target's prefill on both sides, the draft's catch-up on the speculative side. Those
   are paid once a call, not once a step, and pull a measured speed-up toward 1 (below a predicted
   gain above 1, above one below 1), the more so the longer the prompts are against the answers;
2. the luck of the text: the acceptance of the first draft token in the auto row against the mean
   of the fixed-gamma rows of the same cell (same draft, task, temperature, draft mode, prompts),
   over the auto rows that tested at least MIN_TESTS first tokens (one that decoded plainly tested
   few): auto decides on the acceptance counted so far, and writes a text of its own;
3. per distilled auto row: its speed-up and mean gamma, and what choose_gamma, with the decoder's
   margin, takes from the acceptance pooled over the cell's fixed-gamma rows and the costs as the
   loop left them, with its predicted gain: what the rule saw once the fixed gammas had run (it
   decides with optimistic estimates and the costs of the moment). The pooled acceptance reaches
   no further than the largest fixed gamma.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules

MIN_TESTS = 50
FIELDS = ("draft", "task", "temperature", "gamma", "alpha_per_position", "tests_per_position")


def load_cells(path: str) -> dict:
    """(draft, task, T, draft mode) -> its rows with a speed-up, the pretrained draft's left out,
    and at T=0 the argmax rows too (copies of the sample rows: the same rule there)."""
    from speculative import measured_draft_mode
    try:
        with open(path) as f:
            rows = json.load(f)["results"]
        rows = [r for r in rows if all(field in r for field in FIELDS) and "speedup" in r]
    except (OSError, ValueError, KeyError, TypeError) as error:
        sys.exit(f"error: cannot read {path} as an evaluate.py results.json ({error}); give the results.json "
                 "that evaluate.py --speedup wrote")
    cells = {}
    for r in rows:
        mode = r.get("draft_mode", "sample")
        if r["draft"] != "pretrained" and measured_draft_mode(r["temperature"], mode) == mode:
            cells.setdefault((r["draft"], r["task"], r["temperature"], mode), []).append(r)
    return cells


def alphas(row: dict) -> list[float]:
    """alpha_k of a row; a position that no block reached has no estimate (NaN): 0 there."""
    return [a if a == a else 0.0 for a in row["alpha_per_position"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="an evaluate.py results.json with gamma auto and fixed gammas")
    args = parser.parse_args()

    from speculative import BLOCK_MARGIN, choose_gamma, predicted_gain    # after the flags: --help needs no torch

    known, luck, autos = {}, {}, []
    for (draft, task, temperature, mode), cell in sorted(load_cells(args.results).items()):
        auto = next((r for r in cell if r["gamma"] == "auto" and "costs_ms" in r), None)
        fixed = [r for r in cell if r["gamma"] != "auto" and r["alpha_per_position"]]
        if auto is None or not fixed:
            continue
        after = auto["costs_ms"]["after"]                     # ms: the units cancel in every gain
        costs = {"plain": after["plain"], "block": {int(g): ms for g, ms in after["block"].items()}}
        for r in fixed:
            if r["gamma"] in costs["block"]:
                known.setdefault(temperature, []).append(r["speedup"] / predicted_gain(alphas(r), costs, r["gamma"]))
        if auto["tests_per_position"] and auto["tests_per_position"][0] >= MIN_TESTS:
            luck.setdefault(temperature, []).append(alphas(auto)[0] - statistics.mean(alphas(r)[0] for r in fixed))
        positions = range(max(costs["block"]))
        tests = [sum(r["tests_per_position"][k] for r in fixed if k < len(r["tests_per_position"])) for k in positions]
        pooled = [sum(alphas(r)[k] * r["tests_per_position"][k] for r in fixed if k < len(r["tests_per_position"]))
                  / tests[k] if tests[k] else 0.0 for k in positions]
        chosen = choose_gamma(pooled, costs, BLOCK_MARGIN)
        rule = (f"gamma {chosen} at {predicted_gain(pooled, costs, chosen):.3f}x" if chosen else
                f"plain (the best block at {max(predicted_gain(pooled, costs, g) for g in costs['block']):.3f}x)")
        autos.append(f"   {draft} {task} T={temperature:g} {mode}: {auto['speedup']:.3f}x at mean gamma "
                     f"{auto['mean_gamma']:.2f}; the rule on the pooled acceptance: {rule}")
    if not autos:
        sys.exit(f"error: {args.results} has no cell with both gamma auto (with its costs) and fixed gammas; "
                 "evaluate with --gammas 1,2,...,auto --speedup")

    for temperature, ratios in sorted(known.items()):
        print(f"1. T={temperature:g}: measured / predicted over {len(ratios)} fixed-gamma rows: median "
              f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    for temperature, gaps in sorted(luck.items()):
        print(f"2. T={temperature:g}: auto's alpha_1 minus its cell's fixed gammas' mean over {len(gaps)} cells: "
              f"mean {statistics.mean(gaps):+.3f}, min {min(gaps):+.3f}, max {max(gaps):+.3f}")
    print("3. gamma auto, per cell:")
    print("\n".join(autos))


if __name__ == "__main__":
    main()
