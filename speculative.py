"""
speculative.py: sampling, the KV-cached generation loop, and lossless speculative decoding.

Why speculative decoding works (Leviathan et al. 2023; Chen et al. 2023). Decoding one token
with a 7B model reads all 13.5 GB of its weights for a few FLOPs per byte: the GPU waits on
memory. Scoring gamma+1 tokens in one forward pass costs about the same as scoring one. So a
cheap DRAFT model q guesses gamma tokens, the TARGET p scores them all at once, and a
rejection-sampling rule keeps the output distributed EXACTLY as the target alone would sample:

    for i = 1..gamma:  accept x_i ~ q_i  with probability min(1, p_i(x_i) / q_i(x_i))
    first rejection at i:  sample the replacement from norm(max(p_i - q_i, 0)), stop
    all accepted:          sample a bonus token from p_{gamma+1}

Proof sketch: P(output x) = q(x) min(1, p(x)/q(x)) + P(reject) * norm(max(p - q, 0))(x)
= min(q(x), p(x)) + max(p(x) - q(x), 0) = p(x), because P(reject) = sum_x max(p(x) - q(x), 0)
= TVD(p, q) is exactly the normaliser of the residual. That same identity is why the paper
trains the draft with TVD: at temperature 1, P(reject) = TVD(p_t, q_t) (see losses.py).

Everything here uses ONE function to turn logits into the processed next-token distribution
(`sample_probs`), and ONE cached generation loop (`generate_batch`), reused by data generation
(distill_data.py), evaluation (train.py) and the autoregressive baseline.

Metrics (PAPER.md): block efficiency tau = tokens per target call; acceptance rate alpha; the
tau predicted from alpha, (1 - alpha^(gamma+1)) / (1 - alpha); memory-bound speed-up
MBSU = c tau / (c + gamma) with c = target params / draft params; and wall-clock speed-up,
measured side by side against plain decoding with the same target, prompts and settings.
"""

import argparse
import math
import sys
import time

import torch

from model import Llama, count_params


# ----------------------------------------------------------------------------------------------
# Sampling: logits -> processed distribution -> token
# ----------------------------------------------------------------------------------------------

def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject settings that have no meaning, with a sentence that says how to fix them."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or omitted for no top-k), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p}")


def sample_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None) -> torch.Tensor:
    """The processed next-token distribution (..., V), float32, rows summing to 1.

    temperature 0 is greedy decoding: a one-hot distribution on the argmax. Otherwise
    softmax(logits / temperature), then keep only the top_k most likely tokens, then only the
    smallest set of most likely tokens whose mass reaches top_p ("nucleus"), and renormalise.
    Speculative decoding is lossless only if draft and target go through THIS SAME processing:
    the rejection rule then reproduces the processed target distribution exactly.
    """
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]      # (..., 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs                  # mass of strictly more likely tokens
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)   # the most likely token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of probs (..., V) -> (...), without waiting for the GPU.

    The exponential race: draw E_x ~ Exp(1) independently for every token x; the token with
    the largest p(x) / E_x is x with probability exactly p(x) (E_x / p(x) ~ Exp(p(x)), and the
    smallest of independent exponentials is the one of rate p(x) with probability p(x) / sum p).
    It is the Gumbel-max trick in another form (-log E_x is a Gumbel variable). Tokens of
    probability 0 score 0 and are never chosen. torch.multinomial draws the same way but first
    checks the probabilities with .item(), a host synchronisation at every token that stops
    the CPU from queueing the next decode steps while the GPU works (gpt-fast avoids it alike).
    """
    races = torch.empty_like(probs).exponential_(generator=generator)      # E_x ~ Exp(1), > 0
    return (probs / races).argmax(dim=-1)


# ----------------------------------------------------------------------------------------------
# The autoregressive generation loop (the baseline, and the engine of data generation)
# ----------------------------------------------------------------------------------------------

def check_context(model: Llama, n_slots: int, what: str) -> None:
    if n_slots > model.config.max_seq_len:
        raise ValueError(f"{what} needs {n_slots} positions but the model's context is "
                         f"{model.config.max_seq_len}; shorten the prompt or max_new_tokens")


@torch.no_grad()
def generate_batch(model: Llama, prompts: list[list[int]], max_new_tokens: int,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   eos_id: int | None = None, generator: torch.Generator | None = None,
                   pad_id: int = 0) -> list[list[int]]:
    """Sample a continuation of every prompt; each list ends at (and includes) eos_id if reached.

    Prompts of different lengths are LEFT-padded so all rows write their next token into the
    same cache slot; the cache's `start` tells attention and RoPE where each row really begins.
    """
    check_sampling(temperature, top_k, top_p)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. the BOS token)")
    device = model.tok_embeddings.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    check_context(model, P + max_new_tokens, "generation")
    padded = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts], device=device)  # (B, P)
    start = torch.tensor([P - len(p) for p in prompts], device=device)
    cache = model.new_cache(B, P + max_new_tokens, start=start)
    logits = model(padded, cache, torch.arange(P, device=device))[:, -1]              # (B, V)
    new_tokens, finished = [], torch.zeros(B, dtype=torch.bool, device=device)
    # The slot of each new token, made on the device once: building it from a Python int every
    # step (torch.tensor([...], device=...)) would be a blocking host-to-device copy, which waits
    # for the GPU to finish the previous step and so stops the CPU from queueing work ahead.
    slots = torch.arange(P, P + max_new_tokens, device=device)
    for step in range(max_new_tokens):
        next_token = sample(sample_probs(logits, temperature, top_k, top_p), generator)  # (B,)
        new_tokens.append(next_token)
        if eos_id is not None:
            finished |= next_token == eos_id
            if bool(finished.all()):                       # one sync per step, only when EOS can stop us
                break
        if step + 1 < max_new_tokens:
            logits = model(next_token[:, None], cache, slots[step: step + 1])[:, -1]
    rows = torch.stack(new_tokens, dim=1).tolist() if new_tokens else [[] for _ in prompts]
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]


def generate(model: Llama, prompt_ids, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Plain autoregressive decoding of one prompt: a 1-D LongTensor of the new tokens."""
    prompt = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
    new = generate_batch(model, [prompt], max_new_tokens, temperature, top_k, top_p, eos_id, generator)[0]
    return torch.tensor(new, dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# Speculative decoding
# ----------------------------------------------------------------------------------------------

def check_pair(target: Llama, draft: Llama, gamma: int) -> None:
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"draft vocabulary ({draft.config.vocab_size}) != target vocabulary "
                         f"({target.config.vocab_size}); the draft must use the target's tokenizer")
    if gamma < 1:
        raise ValueError(f"gamma (draft tokens per block) must be >= 1, got {gamma}")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a host clock measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def verify(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
           generator: torch.Generator | None = None) -> tuple[int, torch.Tensor]:
    """The rejection-sampling rule for one block.

    draft_tokens (gamma,), draft_probs q (gamma, V), target_probs p (gamma + 1, V).
    Returns (n_accepted, next_token): x_1..x_n are kept, then next_token is the replacement
    for the first rejected draft token (or the bonus token when all gamma were accepted).
    """
    gamma = draft_tokens.shape[0]
    rows = torch.arange(gamma, device=draft_tokens.device)
    p_x, q_x = target_probs[rows, draft_tokens], draft_probs[rows, draft_tokens]     # (gamma,)
    u = torch.rand(gamma, device=draft_tokens.device, generator=generator)
    accepted = u * q_x < p_x                      # P(u < p/q) = min(1, p(x)/q(x)); q(x) > 0 as x ~ q
    n_accepted = int(accepted.long().cumprod(0).sum())        # the one host sync per block
    if n_accepted == gamma:
        return gamma, sample(target_probs[gamma], generator)   # bonus token from p_{gamma+1}
    residual = (target_probs[n_accepted] - draft_probs[n_accepted]).clamp(min=0)     # max(p - q, 0)
    # A rejection implies p != q somewhere, so the residual has mass; guard against rounding.
    residual = torch.where(residual.sum() > 0, residual, target_probs[n_accepted])
    return n_accepted, sample(residual / residual.sum(), generator)


@torch.no_grad()
def speculative_generate(target: Llama, draft: Llama, prompt_ids, max_new_tokens: int,
                         gamma: int = 4, temperature: float = 1.0, top_k: int | None = None,
                         top_p: float | None = None, eos_id: int | None = None,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Decode one prompt with draft proposals and target verification: (new tokens, stats).

    Bookkeeping: `seq` holds prompt + generated tokens. Each cache holds keys/values for a
    prefix of seq: the target's always for seq[:-1] (the newest token is fed at the next
    block), the draft's for seq[:draft_len]. Rolling a cache back after a rejection is just
    lowering that length: later slots are masked and then overwritten (see model.KVCache).
    """
    check_pair(target, draft, gamma)
    check_sampling(temperature, top_k, top_p)
    if draft is target and target.graphs is not None:
        raise ValueError("a CUDA-graphed model keeps one KV cache, so it cannot be both target and "
                         "draft; pass a separate copy of the model as the draft")
    device = target.tok_embeddings.weight.device
    seq = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).flatten()
    P = seq.numel()
    if P == 0:
        raise ValueError("the prompt needs at least one token (e.g. the BOS token)")
    check_context(target, P + max_new_tokens, "speculative decoding")
    check_context(draft, P + max_new_tokens, "speculative decoding")
    # The last block may draft past max_new_tokens (those extra tokens are dropped), but never
    # past either model's context: near its end a block drafts fewer than gamma tokens.
    context = min(target.config.max_seq_len, draft.config.max_seq_len)
    n_slots = min(P + max_new_tokens + gamma - 1, context)
    target_cache, draft_cache = target.new_cache(1, n_slots), draft.new_cache(1, n_slots)
    slots = torch.arange(n_slots, device=device)      # cache slots; slices of it are free (views)

    def positions(first: int, count: int) -> torch.Tensor:
        return slots[first: first + count]

    synchronize(device)
    started = time.perf_counter()
    if P > 1:   # prefill the target with all but the last prompt token (each block feeds that one)
        target(seq[None, :-1], target_cache, positions(0, P - 1))
    draft_len = 0   # the draft's first block feeds it the whole prompt
    accepted_per_block, drafted_per_block, target_calls, draft_calls = [], [], 0, 0
    while seq.numel() - P < max_new_tokens:
        # 1. The draft proposes gamma tokens x_1..x_gamma ~ q, feeding whatever it has not seen.
        block_start = seq.numel()
        block_gamma = min(gamma, context - block_start)      # = gamma except at the end of a context
        feed, draft_tokens, draft_probs = seq[draft_len:], [], []
        for _ in range(block_gamma):
            draft_logits = draft(feed[None], draft_cache, positions(draft_len, feed.numel()))[0, -1]
            draft_len += feed.numel()
            draft_calls += 1
            q = sample_probs(draft_logits, temperature, top_k, top_p)            # q_i (V,)
            feed = sample(q, generator).view(1)                                   # x_i, stays on device
            draft_tokens.append(feed)
            draft_probs.append(q)
        draft_tokens, draft_probs = torch.cat(draft_tokens), torch.stack(draft_probs)  # (gamma,), (gamma, V)

        # 2. The target scores [last token, x_1..x_gamma] in ONE pass: p_1..p_{gamma+1}.
        target_input = torch.cat([seq[-1:], draft_tokens])
        target_logits = target(target_input[None], target_cache, positions(block_start - 1, block_gamma + 1))[0]
        target_calls += 1
        target_probs = sample_probs(target_logits, temperature, top_k, top_p)     # (gamma + 1, V)

        # 3. Accept a prefix, add the replacement / bonus token, roll the draft cache back.
        n_accepted, next_token = verify(draft_tokens, draft_probs, target_probs, generator)
        accepted_per_block.append(n_accepted)
        drafted_per_block.append(block_gamma)
        seq = torch.cat([seq, draft_tokens[:n_accepted], next_token.view(1)])
        draft_len = min(draft_len, block_start + n_accepted)   # keep only slots of accepted tokens
        if eos_id is not None and (seq[block_start:] == eos_id).any():
            first_eos = block_start + int((seq[block_start:] == eos_id).nonzero()[0])
            seq = seq[: first_eos + 1]
            break
    synchronize(device)
    seconds = time.perf_counter() - started

    new_tokens = seq[P: P + max_new_tokens].cpu()
    return new_tokens, block_stats(accepted_per_block, drafted_per_block, gamma, target_calls,
                                   draft_calls, seconds, new_tokens.numel())


def block_stats(accepted_per_block: list[int], drafted_per_block: list[int], gamma: int,
                target_calls: int, draft_calls: int, seconds: float, n_tokens: int) -> dict:
    """Per-run statistics (PAPER.md's definitions).

    block_efficiency tau = mean over blocks of (accepted + 1) = tokens produced per target call
    (tokens accepted past EOS or max_new_tokens count too: tau measures the blocks, not the output).
    acceptance_rate alpha = accepted draft tokens / accept tests made: a block that stops at a
    rejection made n+1 tests, a fully accepted block made as many as it drafted. (Dividing by
    gamma per block instead would undercount alpha: tokens after a rejection are never tested.)
    """
    blocks = len(accepted_per_block)
    accepted = sum(accepted_per_block)
    tests = sum(n + (n < drafted) for n, drafted in zip(accepted_per_block, drafted_per_block))
    return {
        "gamma": gamma,
        "block_efficiency": (accepted + blocks) / blocks if blocks else float("nan"),
        "acceptance_rate": accepted / tests if tests else float("nan"),
        "accepted_per_block": accepted_per_block,
        "drafted_per_block": drafted_per_block,
        "accept_tests": tests,
        "target_calls": target_calls,
        "draft_calls": draft_calls,
        "new_tokens": n_tokens,
        "seconds": seconds,
    }


def predicted_block_efficiency(alpha: float, gamma: int) -> float:
    """E[tau] = (1 - alpha^(gamma+1)) / (1 - alpha) when each draft token is accepted i.i.d. w.p. alpha."""
    return gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def memory_bound_speedup(target_params: int, draft_params: int, tau: float, gamma: int) -> float:
    """MBSU = c tau / (c + gamma), c = target params / draft params: gamma draft passes and one
    target pass produce tau tokens, each pass costing time proportional to the bytes of weights read."""
    c = target_params / draft_params
    return c * tau / (c + gamma)


# ----------------------------------------------------------------------------------------------
# Evaluation over a set of prompts (used by train.py, run.sh and the --bench CLI)
# ----------------------------------------------------------------------------------------------

def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(variance / n)


def evaluate_pair(target: Llama, draft: Llama, prompts: list[list[int]], gamma: int,
                  temperature: float, max_new_tokens: int, top_k: int | None = None,
                  top_p: float | None = None, eos_id: int | None = None, seed: int = 0,
                  baseline: bool = False) -> dict:
    """Speculative decoding over `prompts`: tau (mean over prompts, 95% CI), alpha, MBSU, and,
    with baseline=True, the wall-clock speed-up over `generate`, each prompt run both ways back
    to back with the same seed so that machine drift hits both alike."""
    device = target.tok_embeddings.weight.device
    taus, accepted, tests = [], 0, 0
    spec_tokens = spec_seconds = base_tokens = base_seconds = 0.0
    for i, prompt in enumerate(prompts):
        generator = torch.Generator(device).manual_seed(seed + i)
        tokens, stats = speculative_generate(target, draft, prompt, max_new_tokens, gamma, temperature,
                                             top_k, top_p, eos_id, generator)
        taus.append(stats["block_efficiency"])
        accepted += sum(stats["accepted_per_block"])
        tests += stats["accept_tests"]
        spec_tokens, spec_seconds = spec_tokens + tokens.numel(), spec_seconds + stats["seconds"]
        if baseline:
            generator = torch.Generator(device).manual_seed(seed + i)
            synchronize(device)
            started = time.perf_counter()
            plain = generate(target, prompt, max_new_tokens, temperature, top_k, top_p, eos_id, generator)
            synchronize(device)
            base_tokens, base_seconds = base_tokens + plain.numel(), base_seconds + time.perf_counter() - started
    tau, ci95 = mean_ci95(taus)
    alpha = accepted / tests if tests else float("nan")
    result = {
        "gamma": gamma, "temperature": temperature, "prompts": len(prompts),
        "block_efficiency": tau, "ci95": ci95, "acceptance_rate": alpha,
        "predicted_block_efficiency": predicted_block_efficiency(alpha, gamma),
        "mbsu": memory_bound_speedup(count_params(target), count_params(draft), tau, gamma),
        "tokens_per_s": spec_tokens / spec_seconds,
    }
    if baseline:
        result["baseline_tokens_per_s"] = base_tokens / base_seconds
        result["speedup"] = result["tokens_per_s"] / result["baseline_tokens_per_s"]
    return result


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def parse_list(text: str, kind) -> list:
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"could not read {text!r} as a comma-separated list of {kind.__name__}") from None


def main(argv: list[str] | None = None) -> None:
    from data import load_jsonl_prompts
    from model import load_model
    from tokenizer import chat_prompt, check_vocab, load_tokenizer

    parser = argparse.ArgumentParser(description="Speculative decoding with a draft and a target model.")
    parser.add_argument("--target", required=True, help="target checkpoint (HF, Meta or this project's)")
    parser.add_argument("--draft", required=True, help="draft checkpoint")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.model (SentencePiece or tiktoken)")
    parser.add_argument("--prompt", help="one prompt to decode")
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    parser.add_argument("--system", default=None, help="system prompt for --chat")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"])
    parser.add_argument("--cuda-graphs", action="store_true", help="replay decode steps from CUDA graphs (GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="with --cuda-graphs: fuse the projections and torch.compile each step before "
                             "recording it (the fastest path; compiling takes a minute or two)")
    parser.add_argument("--bench", action="store_true", help="table over --prompts x --gammas x --temperatures")
    parser.add_argument("--prompts", help="JSONL file of {\"prompt\": ..., \"system\": optional} for --bench")
    parser.add_argument("--gammas", default="1,2,3,4,6,8")
    parser.add_argument("--temperatures", default="0,1")
    args = parser.parse_args(argv)

    # Flags first: a typo should cost one sentence, not the minute it takes to load a 7B model.
    gammas = parse_list(args.gammas, int) if args.bench else [args.gamma]
    temperatures = parse_list(args.temperatures, float) if args.bench else [args.temperature]
    if not gammas or min(gammas) < 1:
        raise ValueError(f"gamma (draft tokens per block) must be >= 1, got {args.gammas if args.bench else args.gamma}")
    if not temperatures:
        raise ValueError("--temperatures needs at least one temperature")
    for temperature in temperatures:
        check_sampling(temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.bench and not args.prompts:
        raise ValueError("--bench needs --prompts FILE.jsonl")
    if not args.bench and not args.prompt:
        raise ValueError("give --prompt \"...\" (or --bench --prompts FILE.jsonl)")
    if args.compile and not args.cuda_graphs:
        raise ValueError("--compile speeds up the CUDA-graph path: add --cuda-graphs (GPU only)")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    target = load_model(args.target, args.device, dtype)
    draft = load_model(args.draft, args.device, dtype)
    tok = load_tokenizer(args.tokenizer)
    check_vocab(tok, target.config.vocab_size, args.target)
    check_pair(target, draft, args.gamma)
    if args.cuda_graphs:
        for model in (target, draft):
            if args.compile:
                model.fuse_projections()
            model.enable_cuda_graphs(compile=args.compile)

    def encode(prompt: str, system: str | None) -> list[int]:
        return chat_prompt(tok, prompt, system) if args.chat else tok.encode(prompt, bos=True)

    if not args.bench:
        generator = torch.Generator(args.device).manual_seed(args.seed)
        tokens, stats = speculative_generate(target, draft, encode(args.prompt, args.system),
                                             args.max_new_tokens, args.gamma, args.temperature,
                                             args.top_k, args.top_p, tok.eos_id, generator)
        print(tok.decode(tokens.tolist()))
        stats["tokens_per_s"] = stats["new_tokens"] / stats["seconds"]
        stats["predicted_block_efficiency"] = predicted_block_efficiency(stats["acceptance_rate"], args.gamma)
        stats["mbsu"] = memory_bound_speedup(count_params(target), count_params(draft),
                                             stats["block_efficiency"], args.gamma)
        for key, value in stats.items():
            print(f"{key:>28}: {value:.3f}" if isinstance(value, float) else f"{key:>28}: {value}")
        return

    prompts = [encode(r["prompt"], r.get("system")) for r in load_jsonl_prompts(args.prompts)]
    for i, prompt in enumerate(prompts, 1):        # every prompt must fit before the first is timed
        for model in (target, draft):
            check_context(model, len(prompt) + args.max_new_tokens, f"prompt {i} of {args.prompts}")
    print(f"target {count_params(target):,} params, draft {count_params(draft):,} params, "
          f"{len(prompts)} prompts, {args.max_new_tokens} new tokens each, device {args.device}")
    for temperature in temperatures:
        print(f"\ntemperature {temperature}")
        print("| gamma | tau (95% CI) | alpha | tau predicted from alpha | MBSU | spec tok/s | plain tok/s | speed-up |")
        print("|---|---|---|---|---|---|---|---|")
        for gamma in gammas:
            r = evaluate_pair(target, draft, prompts, gamma, temperature, args.max_new_tokens,
                              args.top_k, args.top_p, tok.eos_id, args.seed, baseline=True)
            print(f"| {gamma} | {r['block_efficiency']:.2f} ± {r['ci95']:.2f} | {r['acceptance_rate']:.3f} | "
                  f"{r['predicted_block_efficiency']:.2f} | {r['mbsu']:.2f} | {r['tokens_per_s']:.1f} | "
                  f"{r['baseline_tokens_per_s']:.1f} | {r['speedup']:.2f}x |")


def run_cli(main_fn, argv: list[str] | None = None) -> None:
    """Run a CLI entry point; bad input becomes one line on stderr and exit code 2, no traceback."""
    try:
        main_fn(argv)
    except (ValueError, OSError) as error:   # OSError: our FileNotFoundErrors, and the system's (a full disk, ...)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_cli(main)
