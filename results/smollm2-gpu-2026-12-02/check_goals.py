"""Issue 17's goals checked on this run's results.json (python results/smollm2-gpu-2026-12-02/check_goals.py).

1. every distilled draft's tau above the pretrained draft's, CIs apart, per (task, T, gamma);
2. the best wall-clock speed-up at T=0 and T=1;
3. measured speed-up against the one projected from the measured step costs (bench.py --section
   loop --path graphs, results/bench/loop_graphs.json: the 4-layer draft's block at gamma 4 and
   the plain token) and the measured tau: projected = tau x token_wall / block_wall."""
import json
import os

here = os.path.dirname(os.path.abspath(__file__))
rows = json.load(open(os.path.join(here, "results.json")))["results"]
loop = {r["pair"]: r for r in json.load(open(os.path.join(here, "..", "bench", "loop_graphs.json")))["rows"]}
costs = loop["smollm2-135m + smollm2-draft-4l"]

def cell(r):
    return r["task"], r["temperature"], r["gamma"]


pretrained = {cell(r): r for r in rows if r["draft"] == "pretrained"}
distilled = [r for r in rows if r["draft"] != "pretrained"]
# (distilled lower bound - pretrained upper bound, tau difference, draft, cell) per distilled cell
gaps = [((r["block_efficiency"] - r["ci95"]) - (pretrained[cell(r)]["block_efficiency"] + pretrained[cell(r)]["ci95"]),
         r["block_efficiency"] - pretrained[cell(r)]["block_efficiency"], r["draft"], cell(r)) for r in distilled]
print(f"1. distilled cells with tau above the pretrained draft's: {sum(g[1] > 0 for g in gaps)} of {len(gaps)}; "
      f"with the 95% CIs apart: {sum(g[0] > 0 for g in gaps)} of {len(gaps)}")
worst = min(gaps)
print(f"1. smallest gap (distilled lower bound - pretrained upper bound): {worst[0]:+.3f} ({worst[2]}, {worst[3]})")

for temperature in (0.0, 1.0):
    best = max((r for r in distilled if r["temperature"] == temperature), key=lambda r: r["speedup"])
    print(f"2. best speed-up at T={temperature:g}: {best['speedup']:.2f}x ({best['draft']}, {best['task']}, gamma {best['gamma']}, "
          f"tau {best['block_efficiency']:.2f})")

ratios = []
for r in distilled:
    if r["gamma"] == 4:
        projected = r["block_efficiency"] * costs["token_wall_ms"] / costs["block_wall_ms"]
        ratios.append((r["speedup"] / projected, r["draft"], r["task"], r["temperature"], r["speedup"], projected))
ratios.sort()
print(f"3. gamma 4, measured / projected speed-up: min {ratios[0][0]:.2f}, median {ratios[len(ratios) // 2][0]:.2f}, "
      f"max {ratios[-1][0]:.2f} over {len(ratios)} distilled cells, {sum(r[0] >= 0.85 for r in ratios)} of them at or above 0.85")
for ratio, draft, task, temperature, measured, projected in ratios[:3]:
    print(f"   lowest: {draft} {task} T={temperature:g}: {measured:.2f}x measured, {projected:.2f}x projected ({ratio:.2f})")
