"""Store a trained draft small enough to ship: its own blocks and norm, without the embedding it shares.

    python tools/ship_draft.py --draft runs/smollm2/draft-lk_hybrid/model \
        --target models/SmolLM2-135M-Instruct.Q4_1.gguf --data runs/smollm2/distill.jsonl --out drafts/smollm2

A draft cut from its target and trained with the target's embedding frozen (train.py
--freeze-embeddings, run.sh's FREEZE_EMBEDDINGS=1 on the smollm2 preset) shares that embedding and
its tied head, which for SmolLM2 is 28M of a 4-block draft's 42M parameters. This writes
--out/model.safetensors and config.json with the draft's own weights alone (bfloat16 by default,
or int8 rows with a scale per row; checkpoints.save_model's embedding_from), which load_model(--out, base=the target) completes, and
--out/answer_counts.json: how often the target wrote each token in the distillation data, so that
a CPU can decode the draft over a shortlist of the vocabulary without the data
(--draft-vocab N --draft-vocab-data --out/answer_counts.json). It checks that the stored draft,
completed by the target, gives the trained draft's logits (to the storage's rounding).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draft", required=True, help="the trained draft (train.py's --out/model)")
    parser.add_argument("--target", required=True, help="its target, whose embedding it shares (e.g. the .gguf)")
    parser.add_argument("--data", required=True, help="the distillation data it was trained on (distill.jsonl)")
    parser.add_argument("--out", required=True, help="the directory to write")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "int8"],
                        help="how the weights are stored: int8 is a quarter of float32 (int8 rows, a scale per row)")
    args = parser.parse_args()
    import torch                                  # after the flags: --help needs no torch

    from checkpoints import load_model, save_model
    from common import write_atomically
    from answers import answer_counts, load_distill_records

    draft = load_model(args.draft)
    save_model(draft, args.out, dtype=getattr(torch, args.dtype), embedding_from=args.target)
    counts = answer_counts(load_distill_records(args.data))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    write_atomically(os.path.join(args.out, "answer_counts.json"), json.dumps({"counts": ranked}))
    shipped = load_model(args.out, dtype=torch.float32, base=args.target)
    tokens = torch.randint(0, draft.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = (shipped(tokens) - draft(tokens)).abs().max().item()
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"wrote {args.out}: {draft.config.n_layers} blocks, {size / 2**20:.1f} MiB of {args.dtype} weights, "
          f"{len(counts):,} answer tokens counted; largest logit difference from the trained draft {error:.3g}")


if __name__ == "__main__":
    main()
