"""Plain decoding of a GGUF on this CPU, ours or llama.cpp's, on the held-out prompts, in tokens/s.

    python tools/plain_cpu.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf --world runs/smollm2/world [--llamacpp]

The first 8 held-out prompts of each task (the world's eval_<task>.jsonl), wrapped in the model's
chat template, greedy, at most 64 new tokens, stopping at the end of the answer; tokens/s are
pooled new tokens over pooled seconds, prefill included, every prompt decoded once untimed first:
how evaluate.py counts its plain baseline.
  ours        float32, on the decode paths 'eager' and 'few-row-matmuls' (speculative.Decoder,
              timed by speculative.timed_plain_run);
  --llamacpp  llama.cpp's own decoding of the same file with its quantized kernels
              (llama-cpp-python, 2 threads, create_chat_completion). This process then imports
              neither torch nor this project, so the two libraries never share one process.
Recorded side by side in results/smollm2-cpu/epyc-family25/plain_cpu.txt and llamacpp_plain.txt.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules

TASKS = ("story", "summary", "highlights")


def ours(args) -> None:
    import torch

    import fast_decode
    from checkpoints import load_model
    from data import load_jsonl_prompts
    from speculative import Decoder, decoder_slots, timed_plain_run, warm_up
    from tokenizer import chat_prompt, load_tokenizer

    tok = load_tokenizer(args.gguf)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for path in ("eager", "few-row-matmuls"):
        target = load_model(args.gguf, "cpu", torch.float32)
        fast_decode.apply_decode_path([target], path)
        for task in TASKS:
            records = load_jsonl_prompts(f"{args.world}/eval_{task}.jsonl")[: args.prompts]
            prompts = [chat_prompt(tok, r["prompt"], r.get("system")) for r in records]
            plain = Decoder(target, 1, decoder_slots(target, None, prompts, args.max_new_tokens))
            warm_up(lambda prompt: plain.generate([prompt], 2, 0.0), prompts)
            tokens = seconds = 0.0
            for prompt in prompts:
                n_new, run_seconds = timed_plain_run(plain, prompt, args.max_new_tokens, 0.0, None, None,
                                                     tok.stop_ids, None)
                tokens, seconds = tokens + n_new, seconds + run_seconds
            print(f"{path} {task}: {tokens / seconds:.1f} tok/s", flush=True)


def llamacpp(args) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(args.gguf, n_ctx=1024, n_threads=2, verbose=False)
    print(f"llama-cpp-python {llama_cpp.__version__}, 2 threads")
    for task in TASKS:
        with open(f"{args.world}/eval_{task}.jsonl") as f:
            records = [json.loads(line) for line in f][: args.prompts]
        tokens = seconds = 0
        for i, record in enumerate(records[:1] + records):                     # the first run is a warm-up
            messages = ([{"role": "system", "content": record["system"]}] if record.get("system") else []) + \
                       [{"role": "user", "content": record["prompt"]}]
            started = time.perf_counter()
            out = llm.create_chat_completion(messages, max_tokens=args.max_new_tokens, temperature=0.0)
            if i:
                seconds += time.perf_counter() - started
                tokens += out["usage"]["completion_tokens"]
        print(f"{task}: {tokens} new tokens in {seconds:.2f} s: {tokens / seconds:.1f} tok/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf", help="the model (a GGUF file)")
    parser.add_argument("--world", required=True, help="the world directory holding eval_<task>.jsonl")
    parser.add_argument("--llamacpp", action="store_true", help="time llama.cpp's decoding instead of ours")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per task")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    (llamacpp if args.llamacpp else ours)(args)


if __name__ == "__main__":
    main()
