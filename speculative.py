"""
speculative.py: sampling, the KV-cached generation loop, and lossless speculative decoding
(PAPER.md section 4), plus a command line that decodes one prompt.

Decoding one token with a large model reads all its weights for a few FLOPs per byte: the
hardware waits on memory. Scoring gamma+1 tokens in one forward pass costs about the same as
scoring one. So a cheap DRAFT q guesses gamma tokens, the TARGET p scores them all at once, and
a rejection rule (`verify`, where the proof is) keeps the output distributed EXACTLY as the
target alone would sample it.

Everything here uses ONE function to turn logits into the processed next-token distribution
(`sample_probs`), ONE sampler (`sample`; at temperature 0 the decoders take the argmax instead,
`sample_token` and `verify_greedy` say why that is the same), and two decoders that keep their
state on the device: `Decoder` (plain autoregressive decoding, batched: the baseline, and the
engine of the distillation data) and `SpeculativeDecoder`. Each writes its step as a function of
tensors at fixed addresses (the token buffer, the KV caches, the current length) that never asks
the host anything, so that, on a GPU, the step can be recorded once as a CUDA graph and replayed
(fast_decode.py); eagerly, the very same function is the readable reference. `generate`,
`generate_batch` and `speculative_generate` are the one-call forms; `plain_tokens_per_s` times
the baseline, and `python speculative.py --bench` times one prompt both ways.
"""

import argparse
import time
from collections.abc import Collection

import torch

import fast_decode
from model import Llama, count_params


# ----------------------------------------------------------------------------------------------
# Sampling: logits -> processed distribution -> token
# ----------------------------------------------------------------------------------------------

def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject settings that have no meaning, with a sentence that says how to fix them."""
    if not temperature >= 0:
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
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    if temperature != 1:                       # at T = 1 the division is skipped (softmax converts itself)
        logits = logits.float() / temperature  # divided in float32: bf16 would round logits / T
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]      # (..., 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)              # computed in float32
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
    checks the probabilities with .item(), a host synchronisation at every token.
    """
    races = torch.empty_like(probs).exponential_(generator=generator)      # E_x ~ Exp(1), > 0
    return (probs / races).argmax(dim=-1)


def sample_token(logits: torch.Tensor, sampling: tuple, generator: torch.Generator | None = None) -> torch.Tensor:
    """The decoders' next token from logits (..., V) under sampling = (temperature, top_k, top_p).

    Temperature 0 is the argmax of the logits themselves. It is what sample() would return for
    the one-hot distribution sample_probs makes at T = 0 (the race can only pick the token of
    probability 1), without building that V-wide distribution or drawing V random numbers:
    on a GPU those are kernels of their own at every token, on a CPU the draw over 49,152 tokens
    costs more than the argmax many times over. Every other temperature samples sample_probs."""
    if sampling[0] == 0:
        return logits.argmax(dim=-1)
    return sample(sample_probs(logits, *sampling), generator)


# ----------------------------------------------------------------------------------------------
# Checks shared by the decoders and the command lines
# ----------------------------------------------------------------------------------------------

def check_context(model: Llama, n_positions: int, what: str) -> None:
    if n_positions > model.config.max_seq_len:
        raise ValueError(f"{what} needs {n_positions} positions but the model's context is "
                         f"{model.config.max_seq_len}; shorten the prompt or max_new_tokens")


def check_pair(target: Llama, draft: Llama, gamma: int) -> None:
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"draft vocabulary ({draft.config.vocab_size}) != target vocabulary "
                         f"({target.config.vocab_size}); the draft must use the target's tokenizer")
    if gamma < 1:
        raise ValueError(f"gamma (draft tokens per block) must be >= 1, got {gamma}")


def decoder_slots(target: Llama, draft: Llama | None, prompts: list[list[int]], max_new_tokens: int,
                  gamma: int = 0) -> int:
    """Slots for decoders that serve every prompt: the longest prompt + new tokens (+ a block)."""
    context = min(target.config.max_seq_len, draft.config.max_seq_len if draft else target.config.max_seq_len)
    return 2 + min(max(map(len, prompts)) + max_new_tokens + gamma, context)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a host clock measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cut_at_stop(tokens: list[int], stop_ids: Collection[int]) -> list[int]:
    """tokens up to and including the first stop token (all of them if there is none)."""
    first = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
    return tokens if first is None else tokens[: first + 1]


PREFILL_CHUNK = 128     # slots per recorded prefill step (_Graphs.prefill): most chat prompts fit in one

class _Graphs:
    """What the two decoders share about CUDA graphs: one recording per kind of step (its
    sampling settings, block length...), made on first use, and a generator of their own
    registered with those recordings. Before a call the caller's generator (or torch's
    default one) hands its state over, and takes it back after, so a graphed call draws the
    same random numbers as the eager one would."""

    def __init__(self, device: torch.device, enabled: bool):
        if enabled and device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA GPU; decode eagerly on this machine")
        self.enabled, self.recorded, self.prefill_slots = enabled, {}, {}
        self.generator = torch.Generator(device) if enabled else None

    def runner(self, key, step):
        """step itself (eager), or its recording (graphs)."""
        if not self.enabled:
            return step
        if key not in self.recorded:
            self.recorded[key] = fast_decode.CudaGraph(step, self.generator)
        return self.recorded[key]

    def prefill(self, model: Llama, tokens: torch.Tensor, cache, first: int, end: int,
                chunk: int | None) -> None:
        """Keys and values of the slots first..end-1 of tokens (B, n_slots) into the model's cache.

        chunk=None: in one forward call. chunk=C: in calls over C slots each (at most n_slots),
        the last one moved back to end at the last slot where it would run past it, each one a
        recorded step when graphs are on. Why: a prompt's length changes from call to call, so a
        one-call prefill cannot be recorded, and unrecorded a small model's forward costs what
        launching its kernels costs -- through torch.compile's blocks, several times the
        recorded step (BENCHMARKS.md section 0e) -- while a chunk has one shape for every prompt.
        Why it is exact: a chunk past `end` writes slots the decoder has not reached, which it
        overwrites before anything attends to them (the causal mask hides them; the same as a
        rollback after a rejection), and a slot written twice gets the same keys and values
        again (up to float rounding), from the same token, position and earlier slots.
        """
        if end <= first:
            return
        if chunk is None:
            slots = torch.arange(first, end, device=tokens.device)
            model.prefill(tokens[:, first:end], cache, slots)
            return
        chunk = min(chunk, tokens.shape[1])
        key = ("prefill", id(cache), chunk)
        if key not in self.prefill_slots:      # the step's fixed tensors: the chunk's next slot, its offsets
            self.prefill_slots[key] = (torch.zeros(1, dtype=torch.long, device=tokens.device),
                                       torch.arange(chunk, device=tokens.device))
        next_slot, offsets = self.prefill_slots[key]

        def step():
            slots = next_slot.clamp(max=tokens.shape[1] - chunk) + offsets        # (C,)
            model.prefill(tokens.index_select(1, slots), cache, slots)
            next_slot.add_(chunk)

        next_slot.fill_(first)
        run = self.runner(key, step)
        for _ in range(-(-(end - first) // chunk)):        # ceil((end - first) / chunk) chunks
            run()

    def borrow(self, generator: torch.Generator | None, device: torch.device):
        """The generator the steps use, and a function that ends the call."""
        if not self.enabled:
            return generator, lambda: None
        source = generator or torch.cuda.default_generators[device.index or torch.cuda.current_device()]
        self.generator.set_state(source.get_state())
        return self.generator, lambda: source.set_state(self.generator.get_state())


# ----------------------------------------------------------------------------------------------
# Plain autoregressive decoding (the baseline, and the engine of data generation)
# ----------------------------------------------------------------------------------------------

class Decoder:
    """Batched plain decoding of `batch_size` prompts in `n_slots` cache slots (prompt + new
    tokens), reusable across calls. Prompts of different lengths are LEFT-padded so that every
    row writes its next token into the same slot; the cache's `start` tells attention and RoPE
    where each row really begins.

    State on the device: tokens (B, n_slots), the KV cache, and length (1,): the slot the next
    token goes into. `step` reads and writes only these, so with graphs=True (CUDA) it is
    recorded once per sampling setting and replayed (fast_decode.py: the decode paths)."""

    def __init__(self, model: Llama, batch_size: int, n_slots: int, graphs: bool = False):
        self.model, self.batch_size = model, batch_size
        self.cache = model.new_cache(batch_size, n_slots)
        self.tokens = torch.zeros(batch_size, n_slots, dtype=torch.long, device=model.device)
        self.length = torch.zeros(1, dtype=torch.long, device=model.device)
        self.graphs = _Graphs(model.device, graphs)
        self.prefill_chunk = PREFILL_CHUNK if graphs else None      # _Graphs.prefill says why

    def step(self, sampling: tuple, generator) -> None:
        """One token for every row: feed the newest token, sample the next, write it after it."""
        newest = self.length - 1                                                   # (1,) its slot
        logits = self.model(self.tokens.index_select(1, newest), self.cache, newest)[:, -1]      # (B, V)
        token = sample_token(logits, sampling, generator)                                   # (B,)
        self.tokens.index_copy_(1, self.length, token[:, None])
        self.length += 1

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, stop_ids: Collection[int] = (),
                 generator: torch.Generator | None = None, pad_id: int = 0) -> list[list[int]]:
        """The new tokens of every row; a row ends at (and includes) its first stop token."""
        check_sampling(temperature, top_k, top_p)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (e.g. the BOS token)")
        if len(prompts) != self.batch_size:
            raise ValueError(f"this decoder holds {self.batch_size} rows, got {len(prompts)} prompts")
        P = max(len(p) for p in prompts)
        check_context(self.model, P + max_new_tokens, "generation")
        if P + max_new_tokens > self.tokens.shape[1]:
            raise ValueError(f"{P} + {max_new_tokens} tokens do not fit the decoder's {self.tokens.shape[1]} slots")
        device = self.model.device
        padded = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts], device=device)  # (B, P)
        self.tokens[:, :P] = padded
        self.cache.start.copy_(torch.tensor([P - len(p) for p in prompts], device=device))
        self.length.fill_(P)
        # The prompt but its last token; each step feeds the newest token.
        self.graphs.prefill(self.model, self.tokens, self.cache, 0, P - 1, self.prefill_chunk)
        generator, give_back = self.graphs.borrow(generator, device)
        sampling = (temperature, top_k, top_p)
        step = self.graphs.runner(sampling, lambda: self.step(sampling, generator))
        stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
        made = 0
        while made < max_new_tokens:
            step()
            made += 1
            # Has every row stopped? Asked after every token: one host sync per token (the GPU
            # idles for a launch, microseconds against a step), so plain decoding never runs
            # steps past a stop token, which would make it look slower than it is beside the
            # speculative loop (which asks once per block).
            if stop.numel() and bool(torch.isin(self.tokens[:, P: P + made], stop).any(-1).all()):
                break
        give_back()
        rows = self.tokens[:, P: P + made].tolist()
        return [cut_at_stop(row, stop_ids) for row in rows]


def generate_batch(model: Llama, prompts: list[list[int]], max_new_tokens: int,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   stop_ids: Collection[int] = (), generator: torch.Generator | None = None,
                   pad_id: int = 0) -> list[list[int]]:
    """Sample a continuation of every prompt (eager; see Decoder for the reusable, graphed form)."""
    n_slots = max(len(p) for p in prompts) + max_new_tokens if prompts else 1
    return Decoder(model, len(prompts), n_slots).generate(
        prompts, max_new_tokens, temperature, top_k, top_p, stop_ids, generator, pad_id)


def generate(model: Llama, prompt_ids, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, stop_ids: Collection[int] = (),
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Plain autoregressive decoding of one prompt: a 1-D LongTensor of the new tokens."""
    prompt = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
    new = generate_batch(model, [prompt], max_new_tokens, temperature, top_k, top_p, stop_ids, generator)[0]
    return torch.tensor(new, dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# Speculative decoding
# ----------------------------------------------------------------------------------------------

def verify(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rejection-sampling rule for one block (PAPER.md 4.1), entirely on the device.

    draft_tokens x_1..x_gamma (gamma,) with x_i ~ q_i; draft_probs q (gamma, V); target_probs
    p (gamma + 1, V). Returns (n_accepted, next_token), both 0-dim tensors: x_1..x_n are kept,
    then next_token, the replacement for the first rejected token or, if all gamma were
    accepted, a bonus token from p_{gamma+1}.

        accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), in order, until one fails;
        the token after the n accepted ones ~ norm(max(p_{n+1} - q_{n+1}, 0)),  q_{gamma+1} := 0.

    Why the output is distributed as p (one position): P(output x) = q(x) min(1, p(x)/q(x)) +
    P(reject) norm(max(p - q, 0))(x) = min(q(x), p(x)) + max(p(x) - q(x), 0) = p(x), because
    P(reject) = sum_x max(p(x) - q(x), 0) = TVD(p, q) is exactly the residual's normaliser. At
    temperature 1 that is why the paper trains the draft on TVD: P(reject) = TVD(p_t, q_t).
    Defining q_{gamma+1} := 0 makes the bonus token the same formula (max(p - 0, 0) = p).
    At temperature 0 the decoders use verify_greedy, this rule for one-hot p and q.
    """
    gamma = draft_tokens.shape[0]
    rows = torch.arange(gamma, device=draft_tokens.device)
    p_x, q_x = target_probs[rows, draft_tokens], draft_probs[rows, draft_tokens]     # (gamma,)
    u = torch.rand(gamma, device=draft_tokens.device, generator=generator)
    accepted = u * q_x < p_x                      # P(u < p/q) = min(1, p(x)/q(x)); q(x) > 0 as x ~ q
    n_accepted = accepted.long().cumprod(0).sum()                  # the accepted prefix's length
    q_next = torch.cat([draft_probs, torch.zeros_like(draft_probs[:1])]).index_select(0, n_accepted.view(1))[0]
    p_next = target_probs.index_select(0, n_accepted.view(1))[0]                     # (V,)
    residual = (p_next - q_next).clamp(min=0)                                        # max(p - q, 0)
    # A rejection implies p != q somewhere, so the residual has mass; guard against rounding.
    residual = torch.where(residual.sum() > 0, residual, p_next)
    return n_accepted, sample(residual / residual.sum(), generator)


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """verify() at temperature 0, from the target's logits (gamma + 1, V): (n_accepted, next_token).

    At T = 0 both distributions are one-hot (sample_probs): q_i on the draft's argmax x_i, p_i on
    the target's argmax t_i. The rule then decides without chance. x_i passes u q_i(x_i) < p_i(x_i),
    i.e. u < p_i(x_i) with u in [0, 1), exactly when p_i(x_i) = 1: when x_i = t_i. After the first
    mismatch at n + 1, the residual max(p_{n+1} - q_{n+1}, 0) is p_{n+1} itself (q's mass sits
    where p has none), whose only token is t_{n+1}; after a full match the bonus token is
    t_{gamma+1}. So: accept while x_i = t_i, then write t_{n+1} -- the same result as verify() on
    the one-hot distributions, without building them or drawing random numbers."""
    gamma = draft_tokens.shape[0]
    target_tokens = target_logits.argmax(dim=-1)                                    # (gamma + 1,) t_i
    n_accepted = (draft_tokens == target_tokens[:gamma]).long().cumprod(0).sum()   # matching prefix
    return n_accepted, target_tokens.index_select(0, n_accepted.view(1))[0]


class SpeculativeDecoder:
    """Speculative decoding of one prompt at a time with a (target, draft) pair, in `n_slots`
    slots, reusable across calls (PAPER.md section 4).

    State on the device: tokens (1, n_slots), both KV caches, and length (1,): the slot where
    the block's first new token goes. Slot 0 holds a padding token that nothing attends to (the
    caches' start is 1); the prompt fills slots 1..P. Each cache holds keys/values for a prefix
    of the tokens: the target's for all but the newest token, the draft's for all but the
    newest TWO (after a fully accepted block it has seen neither x_gamma nor the bonus token,
    after a rejection it has not seen the replacement). So every block starts by feeding the
    draft the last two tokens, whatever happened before -- one shape for every block, which a
    CUDA graph needs -- and the padding slot makes that possible for a one-token prompt.
    Rolling back after a rejection costs nothing: the next block simply writes from the
    shorter length, over stale slots that the causal mask hides until then.
    """

    def __init__(self, target: Llama, draft: Llama, n_slots: int, graphs: bool = False):
        check_pair(target, draft, 1)
        self.target, self.draft = target, draft
        device, one = target.device, torch.ones(1, dtype=torch.long, device=target.device)
        self.target_cache = target.new_cache(1, n_slots, start=one)
        self.draft_cache = draft.new_cache(1, n_slots, start=one)
        self.tokens = torch.zeros(1, n_slots, dtype=torch.long, device=device)
        self.length = torch.zeros(1, dtype=torch.long, device=device)
        self.offsets = torch.arange(n_slots, device=device)
        self.graphs = _Graphs(device, graphs)
        self.prefill_chunk = PREFILL_CHUNK if graphs else None      # _Graphs.prefill says why

    def block(self, gamma: int, sampling: tuple, generator) -> torch.Tensor:
        """One block: the draft proposes gamma tokens, the target scores them in one pass, and
        the accepted prefix plus one more token are written after the sequence. Returns
        [n_accepted, the gamma + 1 tokens now at the block's slots]: the one thing the host reads."""
        first = self.length.clone()                          # (1,) the block's first new slot
        offsets = self.offsets[: gamma + 1]
        greedy = sampling[0] == 0            # temperature 0: argmaxes, no distributions (verify_greedy)
        # 1. The draft proposes x_1..x_gamma ~ q, fed the last two tokens, then each of its samples.
        draft_slots = first - 2 + offsets[:2]
        draft_input = self.tokens.index_select(1, draft_slots)                     # (1, 2)
        draft_tokens, draft_probs = [], []
        for i in range(gamma):
            draft_logits = self.draft(draft_input, self.draft_cache, draft_slots)[:, -1]        # (1, V)
            if greedy:
                x = draft_logits.argmax(dim=-1)                                     # x_i, (1,)
            else:
                q = sample_probs(draft_logits, *sampling)                           # q_i
                x = sample(q, generator)                                            # x_i ~ q_i, (1,)
                draft_probs.append(q)
            draft_tokens.append(x)
            draft_input, draft_slots = x[:, None], first + offsets[i: i + 1]
        draft_tokens = torch.cat(draft_tokens)                                       # (gamma,)

        # 2. The target scores [newest token, x_1..x_gamma] in ONE pass: p_1..p_{gamma+1}.
        target_input = torch.cat([self.tokens.index_select(1, first - 1), draft_tokens[None]], dim=1)
        target_logits = self.target(target_input, self.target_cache, first - 1 + offsets)[0]   # (gamma + 1, V)
        if greedy:
            n_accepted, next_token = verify_greedy(draft_tokens, target_logits)
        else:
            target_probs = sample_probs(target_logits, *sampling)                     # (gamma + 1, V)
            n_accepted, next_token = verify(draft_tokens, torch.cat(draft_probs), target_probs, generator)

        # 3. Keep x_1..x_n and the next token; the sequence grows by n + 1.
        self.tokens.index_copy_(1, first + offsets[:gamma], draft_tokens[None])
        self.tokens.index_copy_(1, first + n_accepted.view(1), next_token.view(1, 1))
        self.length += n_accepted + 1
        return torch.cat([n_accepted.view(1), self.tokens[0].index_select(0, first + offsets)])

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int, gamma: int = 4, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, stop_ids: Collection[int] = (),
                 generator: torch.Generator | None = None, pad_id: int = 0) -> tuple[torch.Tensor, dict]:
        """(new tokens, stats): exactly max_new_tokens tokens, fewer if a stop token comes first."""
        check_pair(self.target, self.draft, gamma)
        check_sampling(temperature, top_k, top_p)
        prompt = [int(t) for t in (prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else prompt_ids)]
        P = len(prompt)
        if P == 0:
            raise ValueError("the prompt needs at least one token (e.g. the BOS token)")
        for model in (self.target, self.draft):
            check_context(model, P + max_new_tokens, "speculative decoding")
        # Blocks may draft past max_new_tokens (the extra tokens are dropped), never past either
        # model's context: near its end a block drafts fewer than gamma tokens.
        context = min(self.target.config.max_seq_len, self.draft.config.max_seq_len)
        if decoder_slots(self.target, self.draft, [prompt], max_new_tokens, gamma) > self.tokens.shape[1]:
            raise ValueError(f"a prompt of {P} tokens, {max_new_tokens} new ones and gamma {gamma} do not fit "
                             f"the decoder's {self.tokens.shape[1]} slots")
        device = self.target.device
        synchronize(device)
        started = time.perf_counter()
        self.tokens[0, : P + 1] = torch.tensor([pad_id] + prompt, device=device)
        self.length.fill_(P + 1)
        # The target sees all but the newest token, the draft all but the newest two.
        self.graphs.prefill(self.target, self.tokens, self.target_cache, 1, P, self.prefill_chunk)
        self.graphs.prefill(self.draft, self.tokens, self.draft_cache, 1, P - 1, self.prefill_chunk)
        generator, give_back = self.graphs.borrow(generator, device)
        sampling = (temperature, top_k, top_p)
        new_tokens, accepted_per_block, drafted_per_block, n_tokens = [], [], [], P
        while len(new_tokens) < max_new_tokens:
            block_gamma = min(gamma, context - n_tokens)      # = gamma except at the end of a context
            run = self.graphs.runner((block_gamma, sampling),
                                     lambda: self.block(block_gamma, sampling, generator))
            n_accepted, *window = run().tolist()              # the one host sync per block
            new_tokens += cut_at_stop(window[: n_accepted + 1], stop_ids)
            accepted_per_block.append(n_accepted)
            drafted_per_block.append(block_gamma)
            n_tokens += n_accepted + 1
            if new_tokens and new_tokens[-1] in stop_ids:
                break
        give_back()
        seconds = time.perf_counter() - started
        new_tokens = new_tokens[:max_new_tokens]
        return torch.tensor(new_tokens, dtype=torch.long), block_stats(
            accepted_per_block, drafted_per_block, len(new_tokens), seconds)


def speculative_generate(target: Llama, draft: Llama, prompt_ids, max_new_tokens: int,
                         gamma: int = 4, temperature: float = 1.0, top_k: int | None = None,
                         top_p: float | None = None, stop_ids: Collection[int] = (),
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Decode one prompt speculatively (eager; see SpeculativeDecoder for the reusable, graphed form)."""
    check_pair(target, draft, gamma)
    n_slots = decoder_slots(target, draft, [prompt_ids], max_new_tokens, gamma)
    return SpeculativeDecoder(target, draft, n_slots).generate(
        prompt_ids, max_new_tokens, gamma, temperature, top_k, top_p, stop_ids, generator)


def block_stats(accepted_per_block: list[int], drafted_per_block: list[int], n_tokens: int,
                seconds: float) -> dict:
    """What one speculative run counted (PAPER.md section 5).

    block_efficiency tau = mean over blocks of (accepted + 1) = tokens produced per target call
    (tokens accepted past a stop token or max_new_tokens count too: tau measures the blocks).
    acceptance_rate alpha = accepted draft tokens / accept tests made: a block that stops at a
    rejection made n+1 tests, a fully accepted block made as many as it drafted. (Dividing by
    gamma per block instead would undercount alpha: tokens after a rejection are never tested.)
    """
    blocks = len(accepted_per_block)
    accepted = sum(accepted_per_block)
    tests = sum(n + (n < drafted) for n, drafted in zip(accepted_per_block, drafted_per_block))
    return {
        "block_efficiency": (accepted + blocks) / blocks if blocks else float("nan"),
        "acceptance_rate": accepted / tests if tests else float("nan"),
        "accepted_per_block": accepted_per_block,
        "drafted_per_block": drafted_per_block,
        "accept_tests": tests,
        "target_calls": blocks,
        "draft_calls": sum(drafted_per_block),
        "new_tokens": n_tokens,
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------------------------
# Timing: the untimed warm-up and the plain baseline (evaluate.py measures its grid with them)
# ----------------------------------------------------------------------------------------------

def warm_up(generate, prompts: list[list[int]]) -> None:
    """Untimed: generate(prompt) for every prompt (a few tokens each), so that the timed runs
    after it pay no one-off costs: torch.compile compiles on first use (and again for input
    shapes it has not seen), a CUDA graph is recorded on its step's first use, and on a GPU each
    new prompt length can cost more set-up (cuDNN builds an attention plan per shape). None of
    that belongs in tokens per second, hence every prompt, not just the first."""
    for prompt in prompts:
        generate(prompt)


def plain_tokens_per_s(target: Llama, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                       top_k: int | None = None, top_p: float | None = None, stop_ids=(), seed: int = 0,
                       graphs: bool = False, decoder: Decoder | None = None) -> float:
    """The baseline: tokens/s of plain decoding of `prompts` (prompt i seeded seed + i), warmed
    up first. `decoder`: a Decoder of `target` (batch 1) with slots for every prompt, to reuse
    across calls (its recorded steps with it); by default a new one."""
    plain = decoder or Decoder(target, 1, decoder_slots(target, None, prompts, max_new_tokens), graphs)
    warm_up(lambda prompt: plain.generate([prompt], 2, temperature, top_k, top_p), prompts)
    tokens = seconds = 0.0
    for i, prompt in enumerate(prompts):
        generator = torch.Generator(target.device).manual_seed(seed + i)
        n_new, run_seconds = timed_plain_run(plain, prompt, max_new_tokens, temperature, top_k, top_p, stop_ids, generator)
        tokens, seconds = tokens + n_new, seconds + run_seconds
    return tokens / seconds


def timed_plain_run(plain: Decoder, prompt: list[int], max_new_tokens: int, temperature: float,
                    top_k: int | None, top_p: float | None, stop_ids, generator) -> tuple[int, float]:
    """(new tokens, seconds) of plain decoding of one prompt with a batch-1 Decoder, timed as
    SpeculativeDecoder.generate times itself: from an idle GPU to the last token on the host."""
    synchronize(plain.model.device)
    started = time.perf_counter()
    n_new = len(plain.generate([prompt], max_new_tokens, temperature, top_k, top_p, stop_ids, generator)[0])
    synchronize(plain.model.device)
    return n_new, time.perf_counter() - started


# ----------------------------------------------------------------------------------------------
# Command line: decode one prompt (evaluate.py measures over many)
# ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    from checkpoints import DTYPES, load_model
    from tokenizer import chat_prompt, check_vocab, load_tokenizer

    parser = argparse.ArgumentParser(description="Speculative decoding of one prompt with a draft and a target "
                                     "(python evaluate.py --speedup measures tau and speed-up over many).")
    parser.add_argument("--target", required=True, help="target checkpoint (ours, HF or Meta directory, or .gguf)")
    parser.add_argument("--draft", required=True, help="draft checkpoint")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.model, or a .gguf (default: the target's, if the target is a .gguf)")
    parser.add_argument("--prompt", required=True, help="the prompt to decode")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--system", default=None, help="system prompt for --chat")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    parser.add_argument("--decode-path", default="eager", choices=fast_decode.DECODE_PATHS,
                        help="how decode steps run (fast_decode.py): 'eager' or 'few-row-matmuls' anywhere, "
                             "the others on a GPU")
    parser.add_argument("--bench", action="store_true",
                        help="time it: warm up first, then decode the prompt speculatively and plainly (same "
                             "settings, seed and decode path) and print both tokens/s and the speed-up")
    args = parser.parse_args(argv)

    # Flags first: a typo should cost one sentence, not the minute it takes to load a 7B model.
    if args.gamma < 1:
        raise ValueError(f"--gamma (draft tokens per block) must be >= 1, got {args.gamma}")
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    tokenizer_path = args.tokenizer or (args.target if args.target.endswith(".gguf") else None)
    if tokenizer_path is None:
        raise ValueError("give --tokenizer (only a .gguf target carries its own tokenizer)")
    tok = load_tokenizer(tokenizer_path)
    target = load_model(args.target, args.device, DTYPES.get(args.dtype))
    draft = load_model(args.draft, args.device, DTYPES.get(args.dtype))
    check_vocab(tok, target.config.vocab_size, args.target)
    check_pair(target, draft, args.gamma)
    options = fast_decode.apply_decode_path([target, draft], args.decode_path)
    prompt = chat_prompt(tok, args.prompt, args.system) if args.chat else tok.encode(args.prompt, bos=True)
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], args.max_new_tokens, args.gamma),
                                 **options)
    sampling = (args.temperature, args.top_k, args.top_p)
    if args.bench:   # untimed: compilation, graph recording and per-shape set-up happen here
        warm_up(lambda p: decoder.generate(p, args.gamma + 1, args.gamma, *sampling), [prompt])
    generator = torch.Generator(args.device).manual_seed(args.seed)
    tokens, stats = decoder.generate(prompt, args.max_new_tokens, args.gamma, *sampling, tok.stop_ids, generator,
                                     tok.pad_id)
    print(tok.decode(tokens.tolist()))
    speculative_speed = stats["new_tokens"] / stats["seconds"]
    print(f"\n{stats['new_tokens']} tokens in {stats['seconds']:.2f} s ({speculative_speed:.1f} tokens/s"
          f"{'' if args.bench else ', first call: includes any compilation'}); block efficiency tau "
          f"{stats['block_efficiency']:.2f}, acceptance rate alpha {stats['acceptance_rate']:.3f} over "
          f"{stats['target_calls']} target calls; target {count_params(target):,} / draft {count_params(draft):,} parameters")
    if args.bench:
        plain_speed = plain_tokens_per_s(target, [prompt], args.max_new_tokens, *sampling, tok.stop_ids, args.seed,
                                         **options)
        print(f"plain decoding of the same prompt: {plain_speed:.1f} tokens/s; speculative / plain = wall-clock "
              f"speed-up {speculative_speed / plain_speed:.2f}x (one prompt; evaluate.py --speedup measures many)")


if __name__ == "__main__":
    from common import run_cli
    run_cli(main)
