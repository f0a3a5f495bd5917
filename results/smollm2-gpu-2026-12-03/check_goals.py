"""Issue 17's goals checked on this run's results.json
(PYTHONPATH=. python results/smollm2-gpu-2026-12-03/check_goals.py > results/smollm2-gpu-2026-12-03/check_goals.txt).

1. every distilled draft's tau above the pretrained draft's, 95% CIs apart, per (task, T, gamma);
2. the best wall-clock speed-up at T=0 and T=1 (any distilled draft, any gamma);
3. at gamma 4, the measured speed-up against the one projected from the measured step costs and
   the measured tau: projected = tau x plain step / block, with the GPU times of one recorded
   block (gamma 4, cut draft) and one recorded plain step at the same T, as the decoders record
   them (results/bench/profile_smollm2.py --block-only --draft cut:4, call1/profile.log here);
4. the preset's time: the phases' own times from the two calls' logs (the second call resumed
   the first; the phases it found finished and skipped are not work of the preset).

Another run of the preset (since 2026-12-03b): --dir its results, --logs its calls' run.log
files in order, --profile the block costs (by default this directory's, the decoders being
unchanged), e.g.
    PYTHONPATH=. python results/smollm2-gpu-2026-12-03/check_goals.py --dir results/smollm2-gpu-2026-12-03b \
        --logs call2/run.log,call3/run.log > results/smollm2-gpu-2026-12-03b/check_goals.txt"""
import argparse
import json
import os
import re

from evaluate import ci_gaps, separation_lines

here = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser()
parser.add_argument("--dir", default=here, help="the run's results.json and logs")
parser.add_argument("--logs", default="run_call2.log,run_call3_resumed.log", help="its calls' logs, in --dir")
parser.add_argument("--profile", default=os.path.join(here, "call1", "profile.log"))
args = parser.parse_args()
rows = json.load(open(os.path.join(args.dir, "results.json")))["results"]
profile = open(args.profile).read().split("(a) SmolLM2-135M + ")[1]   # cut:4 first
cost = {}
for temperature in ("0", "1"):
    block = float(re.search(rf"one whole block \(gamma 4\), T={temperature} \| \d+ \| ([\d.]+)", profile).group(1))
    step = float(re.search(rf"one plain decoding step \(Decoder.step\), T={temperature} \| \d+ \| ([\d.]+)", profile).group(1))
    cost[float(temperature)] = step / block


distilled = [r for r in rows if r["draft"] != "pretrained"]
gaps = ci_gaps(rows)                # (lower bound - pretrained upper bound, tau difference, row) per cell
print(f"1. distilled cells with tau above the pretrained draft's: {sum(g[1] > 0 for g in gaps)} of {len(gaps)}; "
      f"with the 95% CIs apart: {sum(g[0] > 0 for g in gaps)} of {len(gaps)}")
print(separation_lines(rows))
print("   overlapping cells by gamma:", {gamma: sum(g[0] <= 0 and g[2]["gamma"] == gamma for g in gaps)
                                         for gamma in range(1, 7)})

for temperature in (0.0, 1.0):
    best = max((r for r in distilled if r["temperature"] == temperature), key=lambda r: r["speedup"])
    print(f"2. best speed-up at T={temperature:g}: {best['speedup']:.2f}x ({best['draft']}, {best['task']}, gamma {best['gamma']}, "
          f"tau {best['block_efficiency']:.2f})")

ratios = sorted((r["speedup"] / (r["block_efficiency"] * cost[r["temperature"]]), r["draft"], r["task"], r["temperature"],
                 r["speedup"], r["block_efficiency"] * cost[r["temperature"]]) for r in distilled if r["gamma"] == 4)
print(f"3. gamma 4: projected = tau x {cost[0.0]:.3f} (T=0) or tau x {cost[1.0]:.3f} (T=1); measured / projected: "
      f"min {ratios[0][0]:.2f}, median {ratios[len(ratios) // 2][0]:.2f}, max {ratios[-1][0]:.2f} over {len(ratios)} "
      f"distilled cells, {sum(r[0] >= 0.85 for r in ratios)} of them at or above 0.85")
for ratio, draft, task, temperature, measured, projected in ratios[:3]:
    print(f"   lowest: {draft} {task} T={temperature:g}: {measured:.2f}x measured, {projected:.2f}x projected ({ratio:.2f})")

phases = {}
for log in args.logs.split(","):
    for name, seconds in re.findall(r"^== (.+) took (\d+) s$", open(os.path.join(args.dir, log)).read(), re.M):
        phases.setdefault(name, []).append(int(seconds))
work = {name: max(times) for name, times in phases.items()}       # the run that did it, not the skip
print(f"4. the preset's phases: " + ", ".join(f"{name.split(':')[0]}{name.split('with')[-1] if 'with' in name else ''} "
                                             f"{seconds} s" for name, seconds in work.items()))
skipped = sum(sum(times) - max(times) for times in phases.values())
print(f"   {sum(work.values())} s of phases = {sum(work.values()) / 60:.1f} min (+ {skipped} s in the resumed call "
      f"re-opening the phases the first call had finished)")
