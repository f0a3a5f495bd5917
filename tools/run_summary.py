"""What a run of the smollm2 preset measured, in four lines: tau's separation, best speed-ups, measured/projected, time.

    python tools/run_summary.py --dir results/smollm2-gpu --logs run.log --profile results/smollm2-gpu/profile.log

Reads the run's results.json (evaluate.py's), its run.sh log(s) and a block profile printed by
tools/profile_smollm2.py --draft cut:N (the run's draft) on the same GPU, and prints:
1. every distilled draft's tau against the pretrained draft's, per (task, T, gamma): above it,
   and with the 95% CIs apart;
2. the best wall-clock speed-up at T=0 and T=1 (any distilled draft, any gamma);
3. at gamma 4, the measured speed-up against the one projected from tau and the recorded step
   costs: projected = tau x plain step / block, with the GPU times of one recorded block (gamma 4)
   and one recorded plain step at the same T, as the decoders record them;
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
    cost = {}
    for temperature in ("0", "1"):
        block = float(re.search(rf"one whole block \(gamma 4\), T={temperature} \| \d+ \| ([\d.]+)", profile).group(1))
        step = float(re.search(rf"one plain decoding step \(Decoder.step\), T={temperature} \| \d+ \| ([\d.]+)",
                               profile).group(1))
        cost[float(temperature)] = step / block

    distilled = [r for r in rows if r["draft"] != "pretrained"]
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
    print(f"3. gamma 4: projected = tau x {cost[0.0]:.3f} (T=0) or tau x {cost[1.0]:.3f} (T=1); measured / projected: "
          f"min {ratios[0][0]:.2f}, median {ratios[len(ratios) // 2][0]:.2f}, max {ratios[-1][0]:.2f} over {len(ratios)} "
          f"distilled cells, {sum(r[0] >= 0.85 for r in ratios)} of them at or above 0.85")
    for ratio, draft, task, temperature, measured, projected in ratios[:3]:
        print(f"   lowest: {draft} {task} T={temperature:g}: {measured:.2f}x measured, {projected:.2f}x projected "
              f"({ratio:.2f})")

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
