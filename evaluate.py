"""
evaluate.py: measuring speculative decoding (PAPER.md section 5), and the results table of the
recipe.

  evaluate_pair   one (target, draft) pair on a set of prompts at one temperature, for each of
                  several gammas: block efficiency tau (mean over prompts, 95% CI), acceptance
                  rate alpha, the tau that alpha predicts, MBSU and, given a plain decoder of the
                  target, the wall-clock speed-up over plain decoding of the same prompts with
                  the same settings and decode path, the two timed prompt by prompt, interleaved.
  main            the grid: every draft (pretrained only, one per distillation loss) x every
                  held-out task x gamma x temperature -> results.json, results.md, results.png;
                  results.md also says, per draft, in how many cells its tau's 95% interval
                  clears the pretrained draft's (ci_gaps).

    python evaluate.py --target runs/cpu/target/model --tokenizer runs/cpu/tokenizer.model \
        --drafts pretrained=runs/cpu/draft-pretrained/model,kld=runs/cpu/draft-kld/model \
        --prompts story=runs/cpu/world/eval_story.jsonl,summary=... --out runs/cpu/results.json
    python evaluate.py --target model.gguf --drafts kld=runs/smollm2/draft-kld/model \
        --prompts story=eval_story.jsonl --gammas 2,3,4 --speedup --out bench.json   # + wall clock

Rows already in results.json are kept and skipped, so an interrupted evaluation resumes; the file
records the settings it was measured with, and a run with other settings refuses to mix its rows
into it. Every flag is checked before a model is loaded.
"""

import argparse
import json
import math
import os

import torch

import fast_decode
from answers import answer_vocabulary, load_answer_counts
from checkpoints import DTYPES, load_model
from common import check_output, differences, parse_list, parse_named_paths, run_cli, write_atomically
from data import load_jsonl_prompts
from model import Llama, count_params
from speculative import (MAX_AUTO_GAMMA, Decoder, SpeculativeDecoder, check_context, check_draft_mode, check_pair,
                         check_sampling, decoder_slots, loop_cost, measured_draft_mode, timed_plain_run, warm_up)
from tokenizer import chat_prompt, check_vocab, load_tokenizer


# ----------------------------------------------------------------------------------------------
# The metrics (PAPER.md section 5)
# ----------------------------------------------------------------------------------------------

def predicted_block_efficiency(alpha: float, gamma: int) -> float:
    """E[tau] = (1 - alpha^(gamma+1)) / (1 - alpha) when each draft token is accepted i.i.d. w.p. alpha."""
    return gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def memory_bound_speedup(target_params: int, draft_params: int, tau: float, gamma: int) -> float:
    """MBSU = c tau / (c + gamma), c = target params / draft params: gamma draft passes and one
    target pass produce tau tokens, each pass costing time proportional to the bytes of weights read."""
    c = target_params / draft_params
    return c * tau / (c + gamma)


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(variance / n)


def pool_runs(runs: list[tuple[int, dict]]) -> dict:
    """One row's metrics from the runs of its prompts, [(new tokens, stats)] (PAPER.md 5):
    tau the mean over prompts of each prompt's tau (each prompt counts once, whatever its length),
    with its 95% CI over prompts; alpha pooled, all accepted draft tokens over all acceptance
    tests of all prompts (a prompt with more blocks made more tests, and weighs more); per draft
    position k the same pooled ratio alpha_k, with the tests behind it; tokens/s over the total."""
    tau, ci95 = mean_ci95([stats["block_efficiency"] for _, stats in runs])
    accepted = sum(sum(stats["accepted_per_block"]) for _, stats in runs)
    tests = sum(stats["accept_tests"] for _, stats in runs)
    positions = max(len(stats["tested_at"]) for _, stats in runs)
    tested_at = [sum(stats["tested_at"][k] for _, stats in runs if k < len(stats["tested_at"])) for k in range(positions)]
    accepted_at = [sum(stats["accepted_at"][k] for _, stats in runs if k < len(stats["accepted_at"])) for k in range(positions)]
    drafted = [g for _, stats in runs for g in stats["drafted_per_block"]]
    return {"block_efficiency": tau, "ci95": ci95, "acceptance_rate": accepted / tests if tests else float("nan"),
            "alpha_per_position": [a / t if t else float("nan") for a, t in zip(accepted_at, tested_at)],
            "tests_per_position": tested_at, "mean_gamma": sum(drafted) / len(drafted),
            "tokens_per_s": sum(n_new for n_new, _ in runs) / sum(stats["seconds"] for _, stats in runs)}


def costs_ms(costs: dict) -> dict:
    """SpeculativeDecoder's step costs in the loop (speculative.loop_cost) in milliseconds,
    rounded: {"plain": ms, "block": {gamma: ms}, "catch_up": {"fixed": ms, "per_token": ms}} (the
    draft's prefill as measure_costs measured it, speculative.catch_up_cost)."""
    return {"plain": round(loop_cost(costs, 0) * 1e3, 4), "block": {g: round(loop_cost(costs, g) * 1e3, 4)
                                                                    for g in costs["block"]},
            "catch_up": {part: round(seconds * 1e3, 6) for part, seconds in costs["catch_up"].items()}}


def evaluate_pair(target: Llama, draft: Llama, prompts: list[list[int]], gammas: list, temperature: float,
                  max_new_tokens: int, top_k: int | None = None, top_p: float | None = None, stop_ids=(),
                  seed: int = 0, plain: Decoder | None = None, graphs: bool = False, compile_sampling: bool = False,
                  decoder: SpeculativeDecoder | None = None, draft_modes: tuple = ("sample",),
                  param_counts: tuple[int, int] | None = None) -> list[dict]:
    """Speculative decoding over `prompts` (prompt i with a generator seeded seed + i) at each of
    `gammas` and each draft mode: a row of the results table per (gamma, mode). A gamma may be
    "auto" (SpeculativeDecoder.generate): it chooses before every block from the step costs,
    measured here first and then following the loop's own timings (speculative.update_cost), and
    the acceptance counted so far on this task at this temperature --
    the earlier prompts' blocks and this prompt's blocks at the fixed gammas, which run before it.
    graphs, compile_sampling: the decoders' options of the decode path (fast_decode.apply_decode_path).
    `decoder`: a SpeculativeDecoder of this pair with slots for every prompt and the largest
    gamma, to reuse across calls; by default a new one. `param_counts`: the target's and the
    draft's parameters for MBSU, counted before a decode path (a quantized one keeps weights as
    buffers) or a shortlist changed the models; by default counted now.

    With `plain`, a batch-1 Decoder of the target with slots for every prompt, also the wall-clock
    speed-up over plain decoding of the same prompts with the same settings and seeds, timed
    INTERLEAVED: prompt by prompt, plain decoding of the prompt runs right before its speculative
    runs at every gamma. A machine's speed drifts (clocks, caches, a neighbour's load; on a small
    CPU by tens of percent over minutes), and a baseline timed in one stretch before the gammas
    puts all of a drift on one side of every ratio; interleaved, both sides see it alike."""
    device = target.device
    # At temperature 0 both draft modes are verify_greedy (PAPER.md 4.2): the same computation,
    # measured once and reported under both names.
    measured_modes = list(dict.fromkeys(measured_draft_mode(temperature, mode) for mode in draft_modes))
    fixed = [g for g in gammas if g != "auto"]
    max_gamma = max(fixed, default=MAX_AUTO_GAMMA)
    speculative = decoder or SpeculativeDecoder(
        target, draft, decoder_slots(target, draft, prompts, max_new_tokens, max_gamma), graphs, compile_sampling)
    sampling = (temperature, top_k, top_p)
    measured_costs = {}               # mode -> the costs measured alone, kept for the rows of "auto"
    for mode in measured_modes:
        if "auto" in gammas:          # untimed, and it records or compiles every block it times
            measured_costs[mode] = costs_ms(speculative.measure_costs(prompts[0], *sampling, mode, max_gamma))
    if plain is not None or graphs:      # graphs are recorded, blocks compiled, on first use
        if plain is not None:
            warm_up(lambda prompt: plain.generate([prompt], 2, *sampling), prompts)
        # The warm-up's iterations pay one-off costs (compiling, recording): not the loop's costs.
        cost_update, speculative.cost_update = speculative.cost_update, 0
        for mode in measured_modes:
            for gamma in gammas:
                n_new = (gamma if gamma != "auto" else max_gamma) + 1                  # a block or more
                warm_up(lambda prompt: speculative.generate(prompt, n_new, gamma, *sampling, draft_mode=mode), prompts)
        speculative.cost_update = cost_update
    speculative.forget_calls()           # "so far" starts with this task's first timed call
    plain_tokens, plain_seconds = 0, 0.0
    runs = {(gamma, mode): [] for mode in measured_modes for gamma in gammas}   # -> [(new tokens, stats)] per prompt
    for i, prompt in enumerate(prompts):
        if plain is not None:
            n_new, seconds = timed_plain_run(plain, prompt, max_new_tokens, *sampling, stop_ids,
                                             torch.Generator(device).manual_seed(seed + i))
            plain_tokens, plain_seconds = plain_tokens + n_new, plain_seconds + seconds
        for mode in measured_modes:
            for gamma in sorted(gammas, key=lambda g: g == "auto"):           # "auto" last
                generator = torch.Generator(device).manual_seed(seed + i)
                new, stats = speculative.generate(prompt, max_new_tokens, gamma, *sampling, stop_ids, generator,
                                                  draft_mode=mode)
                runs[(gamma, mode)].append((new.numel(), stats))
    rows = []
    for (gamma, mode), gamma_runs in runs.items():
        row = {"gamma": gamma, "draft_mode": mode, "temperature": temperature, "prompts": len(prompts),
               **pool_runs(gamma_runs)}
        block_gamma = gamma if gamma != "auto" else row["mean_gamma"]
        row["predicted_block_efficiency"] = (predicted_block_efficiency(row["acceptance_rate"], gamma)
                                             if gamma != "auto" else None)
        if gamma == "auto":           # what auto chose from: the costs measured alone, and as the loop left them
            row["costs_ms"] = {"measured": measured_costs[mode],
                               "after": costs_ms(speculative.costs[(sampling, mode)])}
            # and what it ran, prompt by prompt, in order: "0" a plain step, "gamma:accepted" a block
            row["auto_trace"] = [" ".join(f"{len(drafted)}:{n}" if drafted else "0" for drafted, n, _ in stats["blocks"])
                                 for _, stats in gamma_runs]
        row["mbsu"] = memory_bound_speedup(*(param_counts or (count_params(target), count_params(draft))),
                                           row["block_efficiency"], block_gamma)
        if plain is not None:
            row["baseline_tokens_per_s"] = plain_tokens / plain_seconds
            row["speedup"] = row["tokens_per_s"] / row["baseline_tokens_per_s"]
        rows.append(row)
    rows += [{**row, "draft_mode": mode} for mode in draft_modes if mode not in measured_modes for row in list(rows)]
    return rows


# ----------------------------------------------------------------------------------------------
# Tables and the plot
# ----------------------------------------------------------------------------------------------

def markdown_table(results: list[dict]) -> str:
    """Every row: draft, task, T, gamma, draft mode, tau, alpha, alpha per position, MBSU (and times)."""
    timed = any("speedup" in r for r in results)
    lines = ["| draft | task | T | gamma | mode | tau (95% CI) | alpha | alpha_1, alpha_2, ... | MBSU |"
             + (" tok/s | plain tok/s | speed-up |" if timed else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if timed else "")]
    for r in results:
        gamma = r["gamma"] if r["gamma"] != "auto" else f"auto ({r['mean_gamma']:.1f})"
        per_position = ", ".join(f"{a:.2f}" for a in r["alpha_per_position"])
        line = (f"| {r['draft']} | {r['task']} | {r['temperature']:g} | {gamma} | {r['draft_mode']} | "
                f"{r['block_efficiency']:.2f} ± {r['ci95']:.2f} | {r['acceptance_rate']:.3f} | {per_position} | "
                f"{r['mbsu']:.2f} |")
        if timed:
            line += f" {r['tokens_per_s']:.1f} | {r['baseline_tokens_per_s']:.1f} | {r['speedup']:.2f}x |"
        lines.append(line)
    return "\n".join(lines)


def grid_table(title: str, results: list[dict], cell) -> str:
    """A row per draft, a column per (task, T); cell(rows of that draft and column) -> text."""
    columns = sorted({(r["task"], r["temperature"]) for r in results})
    drafts = list(dict.fromkeys(r["draft"] for r in results))
    lines = [f"| {title} | " + " | ".join(f"{task} T={t:g}" for task, t in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for draft in drafts:
        texts = []
        for task, temperature in columns:
            rows = [r for r in results if (r["draft"], r["task"], r["temperature"]) == (draft, task, temperature)]
            texts.append(cell(rows) if rows else "-")
        lines.append(f"| {draft} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def summary_table(results: list[dict], gamma: int | None = None) -> str:
    """The headline, a row per draft and a column per (task, T), under the rejection rule: tau
    (95% CI) at one gamma, or with gamma=None the best wall-clock speed-up over the fixed gammas
    measured, and its gamma."""
    mine = [r for r in results if r["draft_mode"] == "sample"]
    if gamma is not None:
        return grid_table(f"draft (gamma {gamma})", [r for r in mine if r["gamma"] == gamma],
                          lambda rows: f"{rows[0]['block_efficiency']:.2f} ± {rows[0]['ci95']:.2f}")

    def best(rows):
        top = max(rows, key=lambda r: r["speedup"])
        return f"{top['speedup']:.2f}x (γ={top['gamma']})"
    return grid_table("draft (best fixed gamma)", [r for r in mine if "speedup" in r and r["gamma"] != "auto"], best)


def auto_table(results: list[dict]) -> str:
    """The speed-up with gamma chosen from the measured costs (gamma="auto"), and the mean gamma
    it used (0 for a plain step), under the rejection rule."""
    rows = [r for r in results if r["gamma"] == "auto" and r["draft_mode"] == "sample" and "speedup" in r]
    return grid_table("draft (gamma auto)", rows,
                      lambda rows: f"{rows[0]['speedup']:.2f}x (γ≈{rows[0]['mean_gamma']:.1f})") if rows else ""


def modes_table(results: list[dict], gamma: int, reference: str = "pretrained") -> str:
    """tau at one gamma under the rejection rule (draft_mode "sample") and under the engines'
    argmax drafting, and how much of each draft's gain over the reference draft survives the
    switch: (tau_argmax - reference's tau_argmax) / (tau_sample - reference's tau_sample)."""
    rows = [r for r in results if r["gamma"] == gamma]
    if {r["draft_mode"] for r in rows} != {"sample", "argmax"}:
        return ""
    tau = {(r["draft"], r["task"], r["temperature"], r["draft_mode"]): r["block_efficiency"] for r in rows}

    def cell(cell_rows):
        draft, task, temperature = cell_rows[0]["draft"], cell_rows[0]["task"], cell_rows[0]["temperature"]
        sample, argmax = (tau.get((draft, task, temperature, mode)) for mode in ("sample", "argmax"))
        if sample is None or argmax is None:
            return "-"
        text = f"{sample:.2f} / {argmax:.2f}"
        ref = [tau.get((reference, task, temperature, mode)) for mode in ("sample", "argmax")]
        if draft != reference and None not in ref and sample - ref[0] > 0:
            text += f" ({(argmax - ref[1]) / (sample - ref[0]):.0%})"
        return text
    return grid_table(f"tau at gamma {gamma}: rejection rule / argmax drafting (gain kept)",
                      [r for r in rows if r["draft_mode"] == "sample"], cell)


def ci_gaps(results: list[dict], reference: str = "pretrained") -> list[tuple[float, float, dict]]:
    """For every row of another draft in a (task, T, gamma) cell where the reference draft was
    measured: (its tau's lower 95% bound minus the reference's upper bound, its tau minus the
    reference's, the row). A positive first value is "distillation raised tau" said with
    confidence: the two intervals do not overlap."""
    results = [r for r in results if r["draft_mode"] == "sample" and r["gamma"] != "auto"]   # the paper's rule
    key = lambda r: (r["task"], r["temperature"], r["gamma"])       # noqa: E731
    ref = {key(r): r for r in results if r["draft"] == reference}
    return [((r["block_efficiency"] - r["ci95"]) - (ref[key(r)]["block_efficiency"] + ref[key(r)]["ci95"]),
             r["block_efficiency"] - ref[key(r)]["block_efficiency"], r)
            for r in results if r["draft"] != reference and key(r) in ref]


def separation_lines(results: list[dict], reference: str = "pretrained") -> str:
    """A line per draft: in how many cells its tau is above the reference draft's, in how many
    with the 95% intervals apart, and the cell where its lower bound comes closest."""
    gaps = ci_gaps(results, reference)
    lines = []
    for draft in dict.fromkeys(row["draft"] for _, _, row in gaps):
        mine = [g for g in gaps if g[2]["draft"] == draft]
        above = f"- {draft}: tau above {reference} in {sum(g[1] > 0 for g in mine)} of {len(mine)} cells"
        if any(math.isnan(g[0]) for g in mine):                       # one prompt per task: no interval
            lines.append(above + " (one prompt per task: no 95% intervals)")
            continue
        closest, _, row = min(mine, key=lambda g: g[0])
        lines.append(f"{above}, the 95% CIs apart in {sum(g[0] > 0 for g in mine)}; closest: {row['task']} "
                     f"T={row['temperature']:g} gamma {row['gamma']}, lower bound {closest:+.3f} from {reference}'s upper")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """A line per draft, a column per task: tau vs gamma per T (the rejection rule solid with its
    95% CI, argmax drafting dashed), the wall-clock speed-up if measured (gamma auto dotted), and
    alpha_k, the acceptance of the k-th draft token given the first k - 1 were accepted, at the
    largest gamma."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    tasks = sorted({r["task"] for r in results})
    temperatures = sorted({r["temperature"] for r in results})
    drafts = list(dict.fromkeys(r["draft"] for r in results))
    colours = {draft: f"C{i}" for i, draft in enumerate(drafts)}
    largest = max(r["gamma"] for r in results if r["gamma"] != "auto")
    panels = [("block_efficiency", "block efficiency tau", t) for t in temperatures]
    if any("speedup" in r for r in results):
        panels += [("speedup", "wall-clock speed-up", t) for t in temperatures]
    panels += [("alpha_per_position", f"alpha_k (gamma {largest})", t) for t in temperatures]
    fig, axes = plt.subplots(len(panels), len(tasks), figsize=(4 * len(tasks), 3.2 * len(panels)),
                             squeeze=False, sharey="row")
    for i, (key, label, temperature) in enumerate(panels):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            for draft in drafts:
                cell = [r for r in results if (r["draft"], r["task"], r["temperature"]) == (draft, task, temperature)]
                for mode, style in (("sample", "-"), ("argmax", "--")):
                    rows = sorted((r for r in cell if r["draft_mode"] == mode and r["gamma"] != "auto"),
                                  key=lambda r: r["gamma"])
                    if not rows or (mode == "argmax" and temperature == 0):      # at T = 0 the same rule
                        continue
                    name = draft if mode == "sample" else None
                    if key == "alpha_per_position":
                        alphas = next(r for r in rows if r["gamma"] == largest)[key]
                        ax.plot(range(1, len(alphas) + 1), alphas, style, marker="o", color=colours[draft], label=name)
                        continue
                    errors = [r["ci95"] for r in rows] if key == "block_efficiency" and mode == "sample" else None
                    ax.errorbar([r["gamma"] for r in rows], [r[key] for r in rows], yerr=errors, fmt=style,
                                marker="o", capsize=2, color=colours[draft], label=name)
                auto = [r for r in cell if r["gamma"] == "auto" and r["draft_mode"] == "sample" and key in r]
                if key == "speedup" and auto:
                    ax.axhline(auto[0][key], linestyle=":", color=colours[draft])
            ax.set_title(f"{task}, T={temperature:g}")
            ax.set_xlabel("k (draft position)" if key == "alpha_per_position" else "gamma (draft tokens per block)")
            ax.set_ylabel(label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))          # gamma and k are whole numbers
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, title="solid: rejection rule\ndashed: argmax drafting", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_rows(path: str, settings: dict) -> list[dict]:
    """The rows of an earlier, interrupted run of the same evaluation (none if there is no file)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        rows, before = report["results"], report["settings"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ValueError(f"{path} exists but is not a results file of evaluate.py; "
                         "delete it or choose another --out") from None
    if before != settings:
        raise ValueError(f"{path} was measured with other settings ({differences(before, settings, 'there')}); "
                         "delete it to measure again, or choose another --out")
    return rows


# ----------------------------------------------------------------------------------------------
# Command line: the grid
# ----------------------------------------------------------------------------------------------

def write_tables(report: dict, out: str, gammas: list) -> None:
    """results.md (the headline tables, each draft against the pretrained one, then every row)
    and results.png beside results.json."""
    rows = report["results"]
    fixed = [g for g in gammas if g != "auto"]
    headline = 4 if 4 in fixed else fixed[len(fixed) // 2]
    tables = [summary_table(rows, headline)]
    if any("speedup" in r for r in rows):
        tables += [auto_table(rows), summary_table(rows)]
    tables += [modes_table(rows, headline), separation_lines(rows), markdown_table(rows)]
    table = "\n\n".join(t for t in tables if t)
    base = os.path.splitext(out)[0]
    write_atomically(base + ".md", table + "\n")
    plot(rows, base + ".png")
    print(table)
    print(f"wrote {out}, {base}.md and {base}.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Block efficiency (and wall-clock speed-up) of each draft on each task.")
    p.add_argument("--target", required=True, help="target checkpoint (a directory or a .gguf)")
    p.add_argument("--drafts", required=True, help="name=path,name=path,...")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model or .gguf (default: a .gguf target's own)")
    p.add_argument("--prompts", required=True, help="task=eval.jsonl,task=eval.jsonl,...")
    p.add_argument("--gammas", default="1,2,3,4,5,6,auto",
                   help="draft tokens per block; 'auto' chooses before every block from this machine's measured "
                        "step costs and the acceptance so far (PAPER.md 5.5), up to the largest number listed")
    p.add_argument("--draft-modes", default="sample",
                   help="'sample' (the rejection rule, PAPER.md 4.1), 'argmax' (the draft proposes its argmax, "
                        "as inference engines do, PAPER.md 4.5), or both: sample,argmax")
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--n-prompts", type=int, default=20, help="evaluation prompts per task")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--speedup", action="store_true",
                   help="also time plain decoding of every prompt and report the wall-clock speed-up")
    p.add_argument("--preset", default="custom", help="label stored in results.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    p.add_argument("--decode-path", default="eager", choices=fast_decode.DECODE_PATHS,
                   help="how decode steps run (fast_decode.py): 'eager' anywhere; on a CPU 'few-row-matmuls', or "
                        "'bf16-weights' / 'int8-weights' (quantize.py: another, quantized target); the others on a GPU")
    p.add_argument("--draft-vocab", type=int, default=None,
                   help="decode every draft over the N tokens the target wrote most often in --draft-vocab-data "
                        "(fast_decode.ShortlistHead: cheaper draft steps, still lossless)")
    p.add_argument("--draft-vocab-data", default=None,
                   help="for --draft-vocab: the distillation data (distill.jsonl), or a draft's answer_counts.json")
    p.add_argument("--out", required=True, help="results.json (a .png and .md are written beside it)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Flags and the output first, before loading any model.
    gammas = [g if g == "auto" else int(g) if g.isdigit() else -1 for g in parse_list(args.gammas, str)]
    temperatures = parse_list(args.temperatures, float)
    if not any(g != "auto" for g in gammas) or -1 in gammas or 0 in gammas:
        raise ValueError(f"--gammas must list draft lengths >= 1 (and optionally 'auto'), got {args.gammas!r}")
    draft_modes = parse_list(args.draft_modes, str)
    for mode in draft_modes or [""]:
        check_draft_mode(mode)
    if not temperatures:
        raise ValueError("--temperatures needs at least one temperature")
    for temperature in temperatures:
        check_sampling(temperature, None, None)
    if args.n_prompts < 1 or args.max_new_tokens < 1:
        raise ValueError(f"--n-prompts and --max-new-tokens must be >= 1, got {args.n_prompts} and {args.max_new_tokens}")
    if (args.draft_vocab is None) != (args.draft_vocab_data is None):
        raise ValueError("--draft-vocab N and --draft-vocab-data distill.jsonl go together; give both or neither")
    if args.draft_vocab is not None and args.draft_vocab < 1:
        raise ValueError(f"--draft-vocab must be >= 1, got {args.draft_vocab}")
    draft_paths, prompt_paths = parse_named_paths(args.drafts, "--drafts"), parse_named_paths(args.prompts, "--prompts")
    tokenizer_path = args.tokenizer or (args.target if args.target.endswith(".gguf") else None)
    if tokenizer_path is None:
        raise ValueError("give --tokenizer (only a .gguf target carries its own tokenizer)")
    check_output(args.out)
    settings = {"target": args.target, "drafts": draft_paths, "prompts": prompt_paths, "n_prompts": args.n_prompts,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed, "speedup": args.speedup,
                "dtype": args.dtype, "decode_path": args.decode_path, "draft_modes": draft_modes}
    if args.speedup:        # rows timed with one baseline per (task, T) before its gammas must not mix in
        settings["baseline"] = "interleaved with the speculative runs, prompt by prompt"
    if args.draft_vocab is not None:
        settings.update(draft_vocab=args.draft_vocab, draft_vocab_data=args.draft_vocab_data)
    rows = load_rows(args.out, settings)

    tok = load_tokenizer(tokenizer_path)
    target = load_model(args.target, args.device, DTYPES.get(args.dtype))
    check_vocab(tok, target.config.vocab_size, args.target)
    drafts = {name: load_model(path, args.device, DTYPES.get(args.dtype), base=args.target)    # base: for a draft
              for name, path in draft_paths.items()}                                            # stored without its embedding
    for draft in drafts.values():
        check_pair(target, draft)
    prompts = {task: [chat_prompt(tok, r["prompt"], r.get("system")) for r in load_jsonl_prompts(path)[: args.n_prompts]]
               for task, path in prompt_paths.items()}
    for task, task_prompts in prompts.items():       # all must fit before the first is measured
        for i, prompt in enumerate(task_prompts, 1):
            for model in (target, *drafts.values()):
                check_context(model, len(prompt) + args.max_new_tokens, f"prompt {i} of {prompt_paths[task]}")
    param_counts = {name: (count_params(target), count_params(draft)) for name, draft in drafts.items()}   # as loaded
    if args.draft_vocab is not None:
        shortlist, coverage = answer_vocabulary(load_answer_counts(args.draft_vocab_data), args.draft_vocab)
        print(f"drafts decode over the {len(shortlist):,} tokens the target wrote most often in "
              f"{args.draft_vocab_data} ({coverage:.1%} of its answer tokens)")
        for draft in drafts.values():
            fast_decode.shortlist_head(draft, shortlist)
    options = fast_decode.apply_decode_path([target, *drafts.values()], args.decode_path)

    report = {"preset": args.preset, "target_params": next(iter(param_counts.values()))[0],
              "draft_params": next(iter(param_counts.values()))[1], "settings": settings, "results": rows}
    done = {(r["draft"], r["task"], r["temperature"], r["gamma"], r["draft_mode"]) for r in report["results"]}
    cell_done = lambda name, task, temperature: all(                 # noqa: E731
        (name, task, temperature, gamma, mode) in done for gamma in gammas for mode in draft_modes)
    # One plain decoder for every baseline and one speculative decoder per draft for all its rows,
    # each with slots for the longest prompt of any task: a decoder records a CUDA graph once
    # per kind of step (sampling settings, gamma), not once per row. Attention runs over all of
    # a decoder's slots, so a task of short prompts pays for the longest task's slots, on both
    # sides of its speed-up alike.
    every_prompt = [prompt for task_prompts in prompts.values() for prompt in task_prompts]
    plain = (Decoder(target, 1, decoder_slots(target, None, every_prompt, args.max_new_tokens), **options)
             if args.speedup else None)
    max_gamma = max(g for g in gammas if g != "auto")
    for name, draft in drafts.items():
        if all(cell_done(name, task, temperature) for task in prompts for temperature in temperatures):
            continue                                                  # measured before: resumed past
        speculative = SpeculativeDecoder(
            target, draft, decoder_slots(target, draft, every_prompt, args.max_new_tokens, max_gamma), **options)
        for task, task_prompts in prompts.items():
            for temperature in temperatures:
                if cell_done(name, task, temperature):
                    continue
                # A (draft, task, T) cell is measured whole: the baseline does not depend on
                # gamma (one plain run per prompt, interleaved with that prompt's speculative
                # runs: evaluate_pair says why), and gamma "auto" counts acceptance on the cell's
                # fixed gammas first.
                for row in evaluate_pair(target, draft, task_prompts, gammas, temperature, args.max_new_tokens,
                                         stop_ids=tok.stop_ids, seed=args.seed, plain=plain, **options,
                                         decoder=speculative, draft_modes=draft_modes, param_counts=param_counts[name]):
                    report["results"].append({"draft": name, "task": task, **row})
                    timing = f", speed-up {row['speedup']:.2f}x" if args.speedup else ""
                    print(f"{name:>12} {task:>10} T={temperature:g} gamma={row['gamma']} {row['draft_mode']}: tau "
                          f"{row['block_efficiency']:.2f} ± {row['ci95']:.2f}, alpha {row['acceptance_rate']:.3f}{timing}",
                          flush=True)
                write_atomically(args.out, json.dumps(report, indent=1))
    write_tables(report, args.out, gammas)


if __name__ == "__main__":
    run_cli(main)
