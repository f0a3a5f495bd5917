"""Why did each draft end where it did? Reward, TVD to the target and entropy, per draft.

    python tools/diagnose.py runs/cpu runs/cpu/draft-pretrained runs/cpu/draft-kld runs/cpu/draft-tvdpp_datatoken

Run after `bash run.sh` (RUN, then draft directories). On the first 64 distillation examples of
the run: the mean reward r = 1[p(y) > q(y)] at the data tokens (what tvdpp_datatoken normalises
over a batch), the mean TVD(p, q) over response positions (= the rejection probability at T=1),
and the draft's mean entropy. results/cpu-variants/diagnose.txt holds its output for every draft
of the CPU preset and its variants; docs/findings.md reads it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the run directory (tokenizer.model, target/, distill.jsonl)")
    parser.add_argument("drafts", nargs="+", help="draft directories (each with model/)")
    parser.add_argument("--examples", type=int, default=64, help="distillation examples to look at")
    args = parser.parse_args()

    import torch                                  # after the flags: --help needs no torch

    from checkpoints import load_model
    from losses import tvd
    from tokenizer import load_tokenizer
    from train import collate, load_examples

    run = args.run
    tok = load_tokenizer(f"{run}/tokenizer.model")
    target = load_model(f"{run}/target/model")
    examples = load_examples([f"{run}/distill.jsonl"], tok, target.config.max_seq_len)[: args.examples]
    inputs, targets, mask = collate(examples, tok.pad_id)
    with torch.no_grad():
        target_logits = target(inputs)
        p = target_logits.softmax(-1)[mask]                                  # (N, V)
        y = targets[mask]                                                    # (N,)
        for name in args.drafts:
            draft_logits = load_model(f"{name}/model")(inputs)
            q = draft_logits.softmax(-1)[mask]
            reward = (p.gather(1, y[:, None]) > q.gather(1, y[:, None])).float().mean()
            entropy = -(q * q.clamp_min(1e-12).log()).sum(-1).mean()
            print(f"{name:>32}: mean reward r {reward:.3f} | mean TVD(p, q) "
                  f"{tvd(draft_logits, target_logits, targets, mask):.3f} | draft entropy {entropy:.2f} nats "
                  f"({int(mask.sum())} response positions)")


if __name__ == "__main__":
    main()
