"""Does greedy speculative decoding give the target's own greedy answer on a decode path?

    python tools/greedy_agreement.py --paths few-row-matmuls,int8-weights,compile+int8-weights

SmolLM2 with the shipped draft (drafts/smollm2, its head over the 8,192 tokens of its
answer_counts.json), the first 4 held-out prompts of each task (runs/smollm2/world, made by
`python data.py --preset gpu --out runs/smollm2/world`), 48 new tokens at T = 0: for each decode
path, on how many prompts speculative decoding at gamma 1, 3 and 4 writes exactly plain greedy
decoding's answer. On float32 they must all agree; a path whose products round differently for
1 and for gamma + 1 tokens (the int8 kernel's bfloat16 outputs) lets near-ties fall either way.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf", help="the target")
    parser.add_argument("--draft", default="drafts/smollm2", help="the draft")
    parser.add_argument("--world", default="runs/smollm2/world", help="the world directory holding eval_<task>.jsonl")
    parser.add_argument("--paths", default="few-row-matmuls,int8-weights,compile+int8-weights")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per task")
    args = parser.parse_args()
    import torch                                  # after the flags: --help needs no torch

    import fast_decode
    from checkpoints import load_model
    from data import load_jsonl_prompts
    from answers import answer_vocabulary, load_answer_counts
    from speculative import Decoder, SpeculativeDecoder, decoder_slots
    from tokenizer import chat_prompt, load_tokenizer

    tok = load_tokenizer(args.gguf)
    prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for task in ("story", "summary", "highlights")
               for r in load_jsonl_prompts(f"{args.world}/eval_{task}.jsonl")[: args.prompts]]
    shortlist = answer_vocabulary(load_answer_counts(os.path.join(args.draft, "answer_counts.json")), 8192)[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for path in args.paths.split(","):
        target = load_model(args.gguf, "cpu", torch.float32)
        draft = fast_decode.shortlist_head(load_model(args.draft, "cpu", torch.float32, base=args.gguf), shortlist)
        fast_decode.apply_decode_path([target, draft], path)
        plain = Decoder(target, 1, decoder_slots(target, None, prompts, 48))
        speculative = SpeculativeDecoder(target, draft, decoder_slots(target, draft, prompts, 48, 4))
        agree = sum(all(speculative.generate(prompt, 48, gamma, 0.0)[0].tolist() == plain.generate([prompt], 48, 0.0)[0]
                        for gamma in (1, 3, 4)) for prompt in prompts)
        print(f"{path}: greedy speculative decoding (gamma 1, 3 and 4) = plain greedy decoding on {agree} of "
              f"{len(prompts)} prompts", flush=True)


if __name__ == "__main__":
    main()
