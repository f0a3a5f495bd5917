"""Where a CPU evaluation's time goes: ms per plain token and per speculative block, prefill included.

    python tools/cpu_block_costs.py --draft runs/smollm2/draft-lk_hybrid/model --distill runs/smollm2/distill.jsonl --world runs/smollm2/world

SmolLM2 (the GGUF) and a trained draft with a head over the --shortlist tokens the target wrote
most often in its distillation data, both float32 on 'few-row-matmuls' (1-row products taken
the faster way, as few_row_matmuls measures it), on the first 8 prompts of one held-out task at
T=0 with 64 new tokens: one draft step of 1 and 2 tokens timed alone, then plain and speculative
decoding of each prompt in turn (an untimed short run of each first), per gamma. Recorded in
results/smollm2-cpu/block_costs.txt (whose first line, printed by the script of commit 92e298e,
also says that both models took 1-row products as two rows).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf", help="the target")
    parser.add_argument("--draft", required=True, help="the draft's model directory")
    parser.add_argument("--distill", required=True, help="the distillation data the shortlist is counted from")
    parser.add_argument("--world", required=True, help="the world directory holding eval_<task>.jsonl")
    parser.add_argument("--task", default="highlights")
    parser.add_argument("--gammas", default="3,4")
    parser.add_argument("--shortlist", type=int, default=8192, help="tokens in the draft's head")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch                                  # after the flags: --help needs no torch

    from checkpoints import load_model
    from data import load_jsonl_prompts
    from answers import answer_vocabulary, load_answer_counts
    from fast_decode import few_row_matmuls, shortlist_head
    from speculative import Decoder, SpeculativeDecoder, decoder_slots
    from tokenizer import chat_prompt, load_tokenizer

    tok = load_tokenizer(args.gguf)
    shortlist, _ = answer_vocabulary(load_answer_counts(args.distill), args.shortlist)
    target = few_row_matmuls(load_model(args.gguf, "cpu", torch.float32))
    draft = few_row_matmuls(shortlist_head(load_model(args.draft, "cpu", torch.float32), shortlist))
    records = load_jsonl_prompts(f"{args.world}/eval_{args.task}.jsonl")[: args.prompts]
    prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in records]
    gammas = [int(g) for g in args.gammas.split(",")]
    n_new = args.max_new_tokens
    print(f"prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens")
    plain = Decoder(target, 1, decoder_slots(target, None, prompts, n_new))
    speculative = SpeculativeDecoder(target, draft, decoder_slots(target, draft, prompts, n_new, max(gammas)))
    with torch.no_grad():
        cache = draft.new_cache(1, 256)
        for n_tokens in (1, 2):
            tokens, slots = torch.zeros(1, n_tokens, dtype=torch.long), torch.arange(70, 70 + n_tokens)
            times = []
            for _ in range(24):
                started = time.perf_counter()
                draft(tokens, cache, slots)
                times.append(time.perf_counter() - started)
            print(f"draft step of {n_tokens} token(s): {sorted(times[3:])[10] * 1e3:.2f} ms")
    for gamma in gammas:
        plain_s = speculative_s = 0.0
        plain_tokens = speculative_tokens = blocks = 0
        for prompt in prompts:
            plain.generate([prompt], 2, 0.0)
            speculative.generate(prompt, gamma + 1, gamma, 0.0)
            started = time.perf_counter()
            plain_tokens += len(plain.generate([prompt], n_new, 0.0, stop_ids=tok.stop_ids)[0])
            plain_s += time.perf_counter() - started
            new, stats = speculative.generate(prompt, n_new, gamma, 0.0, stop_ids=tok.stop_ids)
            speculative_s, speculative_tokens = speculative_s + stats["seconds"], speculative_tokens + len(new)
            blocks += stats["target_calls"]
        print(f"gamma {gamma}: plain {plain_s / plain_tokens * 1e3:.2f} ms per token ({plain_tokens} tokens); "
              f"speculative {speculative_s / blocks * 1e3:.2f} ms per block ({blocks} blocks, "
              f"{speculative_tokens / blocks:.2f} tokens each); speed-up "
              f"{(speculative_tokens / speculative_s) / (plain_tokens / plain_s):.2f}x")


if __name__ == "__main__":
    main()
