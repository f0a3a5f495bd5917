"""Plain decoding of a GGUF on this CPU, ours (per decode path) or llama.cpp's, on the same prompts:
tokens/s, and how close each quantized model's greedy answers are to float32's.

    python tools/plain_cpu.py --world runs/smollm2/world --out runs/plain_cpu.json
    python tools/plain_cpu.py --world runs/smollm2/world --out runs/plain_cpu.json --llamacpp

The first 8 held-out prompts of each task (the world's eval_<task>.jsonl), wrapped in the model's
chat template by this project's tokenizer, greedy, at most 64 new tokens, stopping at the end of
the answer; tokens/s are pooled new tokens over pooled seconds, prefill included, every prompt
decoded once untimed first: how evaluate.py counts its plain baseline.
  ours        on each decode path of --paths (speculative.Decoder, timed by
              speculative.timed_plain_run); for each quantized path also the largest logit
              difference from float32 along float32's greedy answers, and how many answers are
              the same token for token. Writes the prompts' token ids and every path's greedy
              answers to --out.
  --llamacpp  llama.cpp's own decoding of the same file with its quantized kernels (llama-cpp-python,
              2 threads, greedy) of the SAME prompt token ids, read from --out; adds its tokens/s
              and its answers' agreement with our float32 answers to --out. This process imports
              neither torch nor this project's model code, so the two libraries never share one.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root's modules

TASKS = ("story", "summary", "highlights")


def agreement(answers: dict, reference: dict) -> str:
    """How many answers equal the reference's token for token, and their mean common prefix."""
    pairs = [(a, r) for task in TASKS for a, r in zip(answers[task], reference[task])]
    same = sum(a == r for a, r in pairs)
    prefix = [next((i for i, (x, y) in enumerate(zip(a, r)) if x != y), min(len(a), len(r))) for a, r in pairs]
    return f"{same} of {len(pairs)} answers identical to float32's, mean common prefix {sum(prefix) / len(prefix):.1f} tokens"


def ours(args) -> None:
    import torch

    import fast_decode
    from checkpoints import load_model
    from data import load_jsonl_prompts
    from speculative import Decoder, decoder_slots, timed_plain_run, warm_up
    from tokenizer import chat_prompt, load_tokenizer

    tok = load_tokenizer(args.gguf)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    prompts = {task: [chat_prompt(tok, r["prompt"], r.get("system"))
                      for r in load_jsonl_prompts(f"{args.world}/eval_{task}.jsonl")[: args.prompts]] for task in TASKS}
    report = {"prompt_ids": prompts, "stop_ids": sorted(tok.stop_ids), "tokens_per_s": {}, "answers": {}}
    reference = load_model(args.gguf, "cpu", torch.float32)
    for path in args.paths.split(","):
        target = load_model(args.gguf, "cpu", torch.float32)
        fast_decode.apply_decode_path([target], path)
        report["answers"][path], report["tokens_per_s"][path] = {}, {}
        for task in TASKS:
            plain = Decoder(target, 1, decoder_slots(target, None, prompts[task], args.max_new_tokens))
            warm_up(lambda prompt: plain.generate([prompt], 2, 0.0), prompts[task])
            tokens = seconds = 0.0
            for prompt in prompts[task]:
                n_new, run_seconds = timed_plain_run(plain, prompt, args.max_new_tokens, 0.0, None, None,
                                                     tok.stop_ids, None)
                tokens, seconds = tokens + n_new, seconds + run_seconds
            report["tokens_per_s"][path][task] = tokens / seconds
            report["answers"][path][task] = [plain.generate([p], args.max_new_tokens, 0.0, stop_ids=tok.stop_ids)[0]
                                             for p in prompts[task]]
            print(f"{path} {task}: {tokens / seconds:.1f} tok/s", flush=True)
        if path in fast_decode.QUANTIZED_PATHS:     # logits along float32's answers, both models
            first = next(p for p in args.paths.split(",") if p not in fast_decode.QUANTIZED_PATHS)
            largest = 0.0
            with torch.no_grad():
                for task in TASKS:
                    for prompt, answer in zip(prompts[task], report["answers"][first][task]):
                        ids = torch.tensor([prompt + answer])
                        largest = max(largest, (target(ids)[0, len(prompt) - 1:] -
                                                reference(ids)[0, len(prompt) - 1:]).abs().max().item())
            line = f"{path} against float32 ({first}): largest logit difference {largest:.3f}; " + \
                   agreement(report["answers"][path], report["answers"][first])
            report.setdefault("closeness", {})[path] = line
            print(line, flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f)


def llamacpp(args) -> None:
    import llama_cpp

    with open(args.out) as f:
        report = json.load(f)
    llm = llama_cpp.Llama(args.gguf, n_ctx=1024, n_threads=2, verbose=False)
    print(f"llama-cpp-python {llama_cpp.__version__}, 2 threads")
    stop = set(report["stop_ids"])

    def answer(prompt: list[int]) -> list[int]:
        out = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            out.append(token)
            if token in stop or len(out) == args.max_new_tokens:
                return out

    report["answers"]["llama.cpp"], report["tokens_per_s"]["llama.cpp"] = {}, {}
    for task in TASKS:
        prompts = report["prompt_ids"][task]
        for prompt in prompts:                                   # untimed first, as ours
            answer(prompt)
        tokens = seconds = 0
        answers = []
        for prompt in prompts:
            started = time.perf_counter()
            answers.append(answer(prompt))
            seconds += time.perf_counter() - started
            tokens += len(answers[-1])
        report["answers"]["llama.cpp"][task], report["tokens_per_s"]["llama.cpp"][task] = answers, tokens / seconds
        print(f"llama.cpp {task}: {tokens / seconds:.1f} tok/s", flush=True)
    first = next(iter(report["answers"]))
    line = f"llama.cpp against float32 ({first}): " + agreement(report["answers"]["llama.cpp"], report["answers"][first])
    report.setdefault("closeness", {})["llama.cpp"] = line
    print(line)
    with open(args.out, "w") as f:
        json.dump(report, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf", help="the model (a GGUF file)")
    parser.add_argument("--world", required=True, help="the world directory holding eval_<task>.jsonl")
    parser.add_argument("--out", required=True, help="JSON of the prompts, answers and tokens/s (llama.cpp adds to it)")
    parser.add_argument("--paths", default="few-row-matmuls,bf16-weights,int8-weights,compile+int8-weights",
                        help="our decode paths, the first one float32 (the reference of the quantized ones)")
    parser.add_argument("--llamacpp", action="store_true", help="time llama.cpp's decoding instead of ours")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per task")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    (llamacpp if args.llamacpp else ours)(args)


if __name__ == "__main__":
    main()
