"""
evaluate.py: the results table of the recipe. For each draft (pretrained only, and one per
distillation loss), each held-out task, each gamma and each temperature, run speculative
decoding against the target on the task's evaluation prompts and record PAPER.md's metrics:
block efficiency tau (mean over prompts, 95% CI), acceptance rate alpha, and MBSU.

    python evaluate.py --target runs/cpu/target/model --tokenizer runs/cpu/tokenizer.model \
        --drafts pretrained=runs/cpu/draft-pretrained/model,tvdpp=runs/cpu/draft-tvdpp/model \
        --prompts story=runs/cpu/world/eval_story.jsonl,summary=... --out runs/cpu/results.json

Writes results.json ({"preset", "target_params", "draft_params", "results": [...]}), prints a
markdown table, and draws block efficiency against gamma per draft and task (results.png).
Rows already in results.json are kept and skipped, so an interrupted evaluation resumes; the
file records the settings it was measured with, and a run with other settings refuses to mix
its rows into it. Every flag is checked before a model is loaded.
"""

import argparse
import json
import os

import torch

from data import load_jsonl_prompts
from data import write_atomically
from distill_data import check_output
from model import count_params, load_model
from speculative import check_context, check_pair, check_sampling, evaluate_pair, parse_list, run_cli
from tokenizer import chat_prompt, check_vocab, load_tokenizer
from train import differences


def parse_named_paths(text: str, flag: str) -> dict[str, str]:
    """"a=path1,b=path2" -> {"a": "path1", "b": "path2"}."""
    named = {}
    for item in text.split(","):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} expects name=path[,name=path...], got {item!r}")
        named[name] = path
    return named


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


def markdown_table(results: list[dict]) -> str:
    lines = ["| draft | task | T | gamma | tau (95% CI) | alpha | MBSU |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['draft']} | {r['task']} | {r['temperature']:g} | {r['gamma']} | "
                     f"{r['block_efficiency']:.2f} ± {r['ci95']:.2f} | {r['acceptance_rate']:.3f} | {r['mbsu']:.2f} |")
    return "\n".join(lines)


def summary_table(results: list[dict], gamma: int) -> str:
    """The headline: tau (95% CI) at one gamma, a row per draft, a column per task and T."""
    columns = sorted({(r["task"], r["temperature"]) for r in results if r["gamma"] == gamma})
    drafts = list(dict.fromkeys(r["draft"] for r in results))
    cell = {(r["draft"], r["task"], r["temperature"]): f"{r['block_efficiency']:.2f} ± {r['ci95']:.2f}"
            for r in results if r["gamma"] == gamma}
    lines = [f"| draft (gamma {gamma}) | " + " | ".join(f"{task} T={t:g}" for task, t in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {draft} | " + " | ".join(cell.get((draft, *column), "-") for column in columns) + " |"
              for draft in drafts]
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """Block efficiency vs gamma: one panel per (temperature, task), one line per draft."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = sorted({r["task"] for r in results})
    temperatures = sorted({r["temperature"] for r in results})
    drafts = list(dict.fromkeys(r["draft"] for r in results))
    fig, axes = plt.subplots(len(temperatures), len(tasks), figsize=(4 * len(tasks), 3.2 * len(temperatures)),
                             squeeze=False, sharey=True)
    for i, temperature in enumerate(temperatures):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            for draft in drafts:
                rows = sorted((r for r in results if (r["draft"], r["task"], r["temperature"]) == (draft, task, temperature)),
                              key=lambda r: r["gamma"])
                ax.errorbar([r["gamma"] for r in rows], [r["block_efficiency"] for r in rows],
                            yerr=[r["ci95"] for r in rows], marker="o", capsize=2, label=draft)
            ax.set_title(f"{task}, T={temperature:g}")
            ax.set_xlabel("gamma (draft tokens per block)")
            ax.set_ylabel("block efficiency tau")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description="Block efficiency of each draft on each task.")
    p.add_argument("--target", required=True)
    p.add_argument("--drafts", required=True, help="name=path,name=path,...")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--prompts", required=True, help="task=eval.jsonl,task=eval.jsonl,...")
    p.add_argument("--gammas", default="1,2,3,4,5,6")
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--n-prompts", type=int, default=20, help="evaluation prompts per task")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--preset", default="custom", help="label stored in results.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cuda-graphs", action="store_true", help="replay decode steps from CUDA graphs (GPU)")
    p.add_argument("--out", required=True, help="results.json (a .png and .md are written beside it)")
    args = p.parse_args(argv)

    # Flags and the output first, before loading any model.
    gammas, temperatures = parse_list(args.gammas, int), parse_list(args.temperatures, float)
    if not gammas or min(gammas) < 1:
        raise ValueError(f"--gammas must list draft lengths >= 1, got {args.gammas!r}")
    if not temperatures:
        raise ValueError("--temperatures needs at least one temperature")
    for temperature in temperatures:
        check_sampling(temperature, None, None)
    if args.n_prompts < 1 or args.max_new_tokens < 1:
        raise ValueError(f"--n-prompts and --max-new-tokens must be >= 1, got {args.n_prompts} and {args.max_new_tokens}")
    draft_paths, prompt_paths = parse_named_paths(args.drafts, "--drafts"), parse_named_paths(args.prompts, "--prompts")
    check_output(args.out)
    settings = {"target": args.target, "drafts": draft_paths, "prompts": prompt_paths, "n_prompts": args.n_prompts,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    rows = load_rows(args.out, settings)

    tok = load_tokenizer(args.tokenizer)
    target = load_model(args.target, args.device)
    check_vocab(tok, target.config.vocab_size, args.target)
    drafts = {name: load_model(path, args.device) for name, path in draft_paths.items()}
    for draft in drafts.values():
        check_pair(target, draft, min(gammas))
    prompts = {task: [chat_prompt(tok, r["prompt"], r.get("system")) for r in load_jsonl_prompts(path)[: args.n_prompts]]
               for task, path in prompt_paths.items()}
    for task, task_prompts in prompts.items():       # all must fit before the first is measured
        for i, prompt in enumerate(task_prompts, 1):
            for model in (target, *drafts.values()):
                check_context(model, len(prompt) + args.max_new_tokens, f"prompt {i} of {prompt_paths[task]}")
    if args.cuda_graphs:
        for model in (target, *drafts.values()):
            model.enable_cuda_graphs()

    report = {"preset": args.preset, "target_params": count_params(target),
              "draft_params": count_params(next(iter(drafts.values()))), "settings": settings, "results": rows}
    done = {(r["draft"], r["task"], r["gamma"], r["temperature"]) for r in report["results"]}
    for name, draft in drafts.items():
        for task, task_prompts in prompts.items():
            for temperature in temperatures:
                for gamma in gammas:
                    if (name, task, gamma, temperature) in done:
                        continue
                    stats = evaluate_pair(target, draft, task_prompts, gamma, temperature, args.max_new_tokens,
                                          eos_id=tok.eos_id, seed=args.seed)
                    row = {"draft": name, "task": task, "gamma": gamma, "temperature": temperature,
                           **{k: stats[k] for k in ("block_efficiency", "ci95", "acceptance_rate",
                                                    "predicted_block_efficiency", "mbsu")}}
                    report["results"].append(row)
                    write_atomically(args.out, json.dumps(report, indent=1))
                    print(f"{name:>12} {task:>10} T={temperature:g} gamma={gamma}: tau {row['block_efficiency']:.2f} "
                          f"± {row['ci95']:.2f}, alpha {row['acceptance_rate']:.3f}", flush=True)
    summary_gamma = 4 if 4 in gammas else gammas[len(gammas) // 2]
    table = summary_table(report["results"], summary_gamma) + "\n\n" + markdown_table(report["results"])
    base = os.path.splitext(args.out)[0]
    write_atomically(base + ".md", table + "\n")
    plot(report["results"], base + ".png")
    print(table)
    print(f"wrote {args.out}, {base}.md and {base}.png")


if __name__ == "__main__":
    run_cli(main)
