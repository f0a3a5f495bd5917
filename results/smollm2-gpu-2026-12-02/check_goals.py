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

pretrained = {(r["task"], r["temperature"], r["gamma"]): r for r in rows if r["draft"] == "pretrained"}
worst = min(((r["block_efficiency"] - r["ci95"]) - (pretrained[k]["block_efficiency"] + pretrained[k]["ci95"]), r["draft"], k)
            for r in rows if r["draft"] != "pretrained" for k in [(r["task"], r["temperature"], r["gamma"])])
gaps = [(r["block_efficiency"] - r["ci95"]) - (pretrained[(r["task"], r["temperature"], r["gamma"])]["block_efficiency"]
         + pretrained[(r["task"], r["temperature"], r["gamma"])]["ci95"]) for r in rows if r["draft"] != "pretrained"]
above = [r["block_efficiency"] > pretrained[(r["task"], r["temperature"], r["gamma"])]["block_efficiency"]
         for r in rows if r["draft"] != "pretrained"]
print(f"1. distilled cells with tau above the pretrained draft's: {sum(above)} of {len(above)}; "
      f"with the 95% CIs apart: {sum(g > 0 for g in gaps)} of {len(gaps)}")
print(f"1. smallest gap (distilled lower bound - pretrained upper bound): {worst[0]:+.3f} ({worst[1]}, {worst[2]})")

for temperature in (0.0, 1.0):
    best = max((r for r in rows if r["draft"] != "pretrained" and r["temperature"] == temperature), key=lambda r: r["speedup"])
    print(f"2. best speed-up at T={temperature:g}: {best['speedup']:.2f}x ({best['draft']}, {best['task']}, gamma {best['gamma']}, "
          f"tau {best['block_efficiency']:.2f})")

ratios = []
for r in rows:
    if r["gamma"] == 4 and r["draft"] != "pretrained":
        projected = r["block_efficiency"] * costs["token_wall_ms"] / costs["block_wall_ms"]
        ratios.append((r["speedup"] / projected, r["draft"], r["task"], r["temperature"], r["speedup"], projected))
ratios.sort()
print(f"3. gamma 4, measured / projected speed-up: min {ratios[0][0]:.2f}, median {ratios[len(ratios) // 2][0]:.2f}, "
      f"max {ratios[-1][0]:.2f} over {len(ratios)} distilled cells")
for ratio, draft, task, temperature, measured, projected in ratios[:3]:
    print(f"   lowest: {draft} {task} T={temperature:g}: {measured:.2f}x measured, {projected:.2f}x projected ({ratio:.2f})")
