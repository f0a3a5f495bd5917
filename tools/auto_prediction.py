"""How far gamma auto's prediction is from what an evaluation measured, per temperature.

    python tools/auto_prediction.py results/smollm2-gpu/cuts-h100/results.json

gamma "auto" runs a block where predicted_gain (speculative.py, PAPER.md 5.5) exceeds the decoder's
block_margin. Two things can make a predicted gain come out lower on the clock, and this prints both
from an evaluate.py results.json whose auto rows keep their costs (evaluate.py does since gamma auto):
1. the price: each distilled fixed-gamma row's measured speed-up over the gain predicted from its
   own alpha_k and the step costs of its cell's auto row as the loop left them ("after"), so that
   the acceptance is the row's own and only the prices are predicted;
2. the luck of the text: the acceptance of the first draft token in the auto row against the mean
   of the fixed-gamma rows of the same cell (same draft, task, temperature, draft mode, prompts):
   auto decides on the acceptance counted so far, and writes a text of its own.
Then, per distilled auto row: its speed-up, and the best gain predicted from the acceptance pooled
over its cell's fixed-gamma rows, which is what the rule saw once those rows had run.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="an evaluate.py results.json with gamma auto among its gammas")
    args = parser.parse_args()

    from speculative import measured_draft_mode, predicted_gain      # after the flags: --help needs no torch

    with open(args.results) as f:
        rows = [r for r in json.load(f)["results"] if r["draft"] != "pretrained" and "speedup" in r]
    if not any("costs_ms" in r for r in rows):
        sys.exit(f"error: {args.results} has no row of gamma auto with its costs and a speed-up; "
                 "evaluate with --gammas ...,auto --speedup first")
    cells = {}                                            # (draft, task, T, mode) -> its rows
    for r in rows:
        mode = r.get("draft_mode", "sample")
        if measured_draft_mode(r["temperature"], mode) == mode:    # at T=0 argmax rows copy the sample rows
            cells.setdefault((r["draft"], r["task"], r["temperature"], mode), []).append(r)

    def alphas(row) -> list[float]:              # a position no block reached has no estimate: 0 there
        return [a if a == a else 0.0 for a in row["alpha_per_position"]]

    price, luck, autos = {}, {}, []
    for (draft, task, temperature, mode), cell in sorted(cells.items()):
        auto = next((r for r in cell if r["gamma"] == "auto" and "costs_ms" in r), None)
        fixed = [r for r in cell if r["gamma"] != "auto"]
        if auto is None or not fixed:
            continue
        after = auto["costs_ms"]["after"]
        costs = {"plain": after["plain"], "block": {int(g): ms for g, ms in after["block"].items()}}
        for r in fixed:
            if r["gamma"] in costs["block"]:
                gain = predicted_gain(alphas(r), costs, r["gamma"])
                price.setdefault(temperature, []).append(r["speedup"] / gain)
        if auto["alpha_per_position"]:                    # auto ran blocks
            luck.setdefault(temperature, []).append(alphas(auto)[0] - statistics.mean(alphas(r)[0] for r in fixed))
        tested = [sum(r["tests_per_position"][k] for r in fixed if k < len(r["tests_per_position"]))
                  for k in range(max(costs["block"]))]
        pooled = [sum(alphas(r)[k] * r["tests_per_position"][k] for r in fixed if k < len(r["tests_per_position"])) / n
                  if n else 0.0 for k, n in enumerate(tested)]
        best = max(costs["block"], key=lambda g: predicted_gain(pooled, costs, g))
        autos.append(f"   {draft} {task} T={temperature:g} {mode}: {auto['speedup']:.3f}x at mean gamma "
                     f"{auto['mean_gamma']:.2f}; pooled acceptance predicts gamma {best} at "
                     f"{predicted_gain(pooled, costs, best):.3f}x")

    for temperature, ratios in sorted(price.items()):
        print(f"1. T={temperature:g}: measured / predicted over {len(ratios)} fixed-gamma rows: median "
              f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    for temperature, gaps in sorted(luck.items()):
        print(f"2. T={temperature:g}: auto's alpha_1 minus its cell's fixed gammas' mean over {len(gaps)} cells: "
              f"mean {statistics.mean(gaps):+.3f}, min {min(gaps):+.3f}, max {max(gaps):+.3f}")
    print("3. gamma auto, per cell:")
    print("\n".join(autos))


if __name__ == "__main__":
    main()
