"""How far one CPU evaluation can be trusted: one evaluate.py cell measured again, several times.

    python tools/cpu_repeats.py --draft runs/smollm2/draft-lk_hybrid/model --distill runs/smollm2/distill.jsonl --world runs/smollm2/world

SmolLM2 (the GGUF) and a trained draft with a head over the --shortlist tokens the target wrote
most often in its distillation data, both float32 on 'few-row-matmuls', as run.sh's smollm2
preset evaluates on a CPU; for each task, the first 8 held-out prompts at T=0 and one gamma,
measured --repeats times exactly as evaluate.py measures a row (evaluate.evaluate_pair: each
prompt decoded plainly right before its speculative run, after an untimed warm-up). Recorded in
results/smollm2-cpu/repeats.txt.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf", help="the target")
    parser.add_argument("--draft", required=True, help="the draft's model directory")
    parser.add_argument("--distill", required=True, help="the distillation data the shortlist is counted from")
    parser.add_argument("--world", required=True, help="the world directory holding eval_<task>.jsonl")
    parser.add_argument("--tasks", default="highlights,story,summary")
    parser.add_argument("--gamma", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shortlist", type=int, default=8192, help="tokens in the draft's head")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch                                  # after the flags: --help needs no torch

    from checkpoints import load_model
    from data import load_jsonl_prompts
    from distill_data import answer_vocabulary, load_answer_counts
    from evaluate import evaluate_pair
    from fast_decode import few_row_matmuls, shortlist_head
    from speculative import Decoder, decoder_slots
    from tokenizer import chat_prompt, load_tokenizer

    tok = load_tokenizer(args.gguf)
    shortlist, _ = answer_vocabulary(load_answer_counts(args.distill), args.shortlist)
    target = few_row_matmuls(load_model(args.gguf, "cpu", torch.float32))
    draft = few_row_matmuls(shortlist_head(load_model(args.draft, "cpu", torch.float32), shortlist))
    for task in args.tasks.split(","):
        records = load_jsonl_prompts(f"{args.world}/eval_{task}.jsonl")[: args.prompts]
        prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in records]
        plain = Decoder(target, 1, decoder_slots(target, None, prompts, args.max_new_tokens))
        for repeat in range(args.repeats):
            [row] = evaluate_pair(target, draft, prompts, [args.gamma], 0.0, args.max_new_tokens,
                                  stop_ids=tok.stop_ids, plain=plain)
            print(f"{task} T=0 gamma {args.gamma} repeat {repeat}: tau {row['block_efficiency']:.2f}, speed-up "
                  f"{row['speedup']:.2f}x ({row['tokens_per_s']:.1f} against plain {row['baseline_tokens_per_s']:.1f} "
                  f"tok/s)", flush=True)


if __name__ == "__main__":
    main()
