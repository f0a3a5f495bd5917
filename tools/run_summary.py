"""What a run of the smollm2 preset measured, in four lines: tau's separation, best speed-ups, measured/projected, time.

    python tools/run_summary.py --dir results/smollm2-gpu --logs run.log --profile results/smollm2-gpu/profile.log

Reads the run's results.json (evaluate.py's), its run.sh log(s) and a block profile printed by
tools/profile_smollm2.py --draft cut:N (the run's draft) on the same GPU, and prints:
1. every distilled draft's tau against the pretrained draft's, per (task, T, gamma): above it,
   and with the 95% CIs apart;
2. the best wall-clock speed-up at T=0 and T=1 (any distilled draft, any gamma);
3. at gamma 4, the measured speed-up against the one projected from tau and step costs:
   projected = tau x plain step / block, with a block of gamma 4 and a plain step at the same T
   timed in the decoders' loops by the profile, and (where the run evaluated gamma auto) timed
   by the evaluation itself before the cell's runs (measure_costs, in results.json's costs_ms):
   the run's own weights, prompts and machine, each step followed by the host's read;
4. the preset's time: each phase's own time from the log(s). A run.sh run again resumes: the
   phases it finds finished report a few seconds, so each phase counts its longest report.
results/smollm2-gpu/summary.txt (the preset's defaults) and the summary.txt of its run folders hold its output.
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="the run's directory: results.json and the logs")
    parser.add_argument("--logs", default="run.log", help="its run.sh log(s) in --dir, comma-separated, in order")
    parser.add_argument("--profile", required=True, help="tools/profile_smollm2.py --draft cut:4 output")
    args = parser.parse_args()

    from evaluate import ci_gaps, separation_lines       # after the flags: --help needs no torch

    with open(os.path.join(args.dir, "results.json")) as f:
        rows = [r for r in json.load(f)["results"] if r.get("draft_mode", "sample") == "sample"]   # the rule's rows
    with open(args.profile) as f:
        profile = f.read().split("(a) SmolLM2-135M + ")[1]
    cost = {}                   # T -> plain step / block, in the profile's loops
    for temperature in ("0", "1"):
        block, step = re.search(rf"^T={temperature}, in the decoders' loops \([^)]*\): ([\d.]+) ms per block, "
                                rf"([\d.]+) per plain step", profile, re.M).groups()
        cost[float(temperature)] = float(step) / float(block)

    distilled = [r for r in rows if r["draft"] != "pretrained"]
    own_cost = {(r["draft"], r["task"], r["temperature"]):               # the same, as the evaluation timed them
                r["costs_ms"]["measured"]["plain"] / r["costs_ms"]["measured"]["block"]["4"]
                for r in distilled if r["gamma"] == "auto" and "4" in r["costs_ms"]["measured"]["block"]}
    gaps = ci_gaps(rows)             # (lower bound - pretrained upper bound, tau difference, row) per cell
    print(f"1. distilled cells with tau above the pretrained draft's: {sum(g[1] > 0 for g in gaps)} of {len(gaps)}; "
          f"with the 95% CIs apart: {sum(g[0] > 0 for g in gaps)} of {len(gaps)}")
    print(separation_lines(rows))
    print("   overlapping cells by gamma:", {gamma: sum(g[0] <= 0 and g[2]["gamma"] == gamma for g in gaps)
                                             for gamma in range(1, 7)})

    for temperature in (0.0, 1.0):
        best = max((r for r in distilled if r["temperature"] == temperature), key=lambda r: r["speedup"])
        print(f"2. best speed-up at T={temperature:g}: {best['speedup']:.2f}x ({best['draft']}, {best['task']}, "
              f"gamma {best['gamma']}, tau {best['block_efficiency']:.2f})")

    ratios = sorted((r["speedup"] / (r["block_efficiency"] * cost[r["temperature"]]), r["draft"], r["task"],
                     r["temperature"], r["speedup"], r["block_efficiency"] * cost[r["temperature"]])
                    for r in distilled if r["gamma"] == 4)
    print(f"3. gamma 4: projected = tau x {cost[0.0]:.3f} (T=0) or tau x {cost[1.0]:.3f} (T=1), the profile's loops; "
          f"measured / projected: min {ratios[0][0]:.2f}, median {ratios[len(ratios) // 2][0]:.2f}, max "
          f"{ratios[-1][0]:.2f} over {len(ratios)} distilled cells, {sum(r[0] >= 0.9 for r in ratios)} of them at or "
          f"above 0.9")
    for ratio, draft, task, temperature, measured, projected in ratios[:3]:
        print(f"   lowest: {draft} {task} T={temperature:g}: {measured:.2f}x measured, {projected:.2f}x projected "
              f"({ratio:.2f})")
    own = sorted((r["speedup"] / (r["block_efficiency"] * own_cost[r["draft"], r["task"], r["temperature"]]),
                  r["task"], r["temperature"]) for r in distilled
                 if r["gamma"] == 4 and (r["draft"], r["task"], r["temperature"]) in own_cost)
    if own:
        print(f"   with the evaluation's own step costs (block / plain step {min(1 / c for c in own_cost.values()):.2f}"
              f"-{max(1 / c for c in own_cost.values()):.2f}): measured / projected min {own[0][0]:.2f}, median "
              f"{own[len(own) // 2][0]:.2f}, max {own[-1][0]:.2f} over {len(own)} cells, "
              f"{sum(r[0] >= 0.9 for r in own)} of them at or above 0.9")

    phases = {}
    for log in args.logs.split(","):
        with open(os.path.join(args.dir, log)) as f:
            for name, seconds in re.findall(r"^== (.+) took (\d+) s$", f.read(), re.M):
                phases.setdefault(name, []).append(int(seconds))
    work = {name: max(times) for name, times in phases.items()}       # the run that did it, not the skip
    print("4. the preset's phases: " + ", ".join(f"{name.split(':')[0]}{name.split('with')[-1] if 'with' in name else ''} "
                                                f"{seconds} s" for name, seconds in work.items()))
    skipped = sum(sum(times) - max(times) for times in phases.values())
    print(f"   {sum(work.values())} s of phases = {sum(work.values()) / 60:.1f} min (+ {skipped} s in the resumed call "
          f"re-opening the phases the first call had finished)")


if __name__ == "__main__":
    main()
