"""
speculative.py: sampling, the KV-cached generation loop, and lossless speculative decoding
(PAPER.md section 4), plus a command line that decodes one prompt.

Decoding one token with a large model reads all its weights for a few FLOPs per byte: the
hardware waits on memory. Scoring gamma+1 tokens in one forward pass costs about the same as
scoring one. So a cheap DRAFT q guesses gamma tokens, the TARGET p scores them all at once, and
a rejection rule (`verify`, where the proof is) keeps the output distributed EXACTLY as the
target alone would sample it.

Read it top to bottom, in the order of the algorithm:
  sampling            ONE function turns logits into the processed next-token distribution
                      (`sample_probs`), ONE rule draws from it (`race`, given random numbers from
                      `exponentials`), and `draw` makes the same draw from the logits without
                      building the distribution (at temperature 0 the decoders take the argmax,
                      `sample_token` says why that is the same);
  plain decoding      `Decoder`: batched, KV-cached autoregressive decoding, the baseline of
                      every speed-up and the engine of the distillation data;
  the rejection rule  `verify` (with its proof), `verify_greedy` (the same rule at T = 0) and
                      `verify_argmax` (the inference engines' rule for argmax drafts); `Sampler`,
                      the arithmetic between model calls as the decoders call it, compiled or not;
  one block           `SpeculativeDecoder.block`: gamma draft tokens, one target pass, the rule;
  the loop            `SpeculativeDecoder.generate`, and `measure_costs` for gamma "auto";
  choosing gamma      `expected_tokens`, `choose_gamma`, `predicted_gain`, `pays_for_catch_up`,
                      `expected_tokens_left`, `catch_up_cost`, `loop_cost`, `update_cost`,
                      `AcceptanceCounts` (PAPER.md 5.5);
  metrics and timing  `block_stats` (what a call counted); `warm_up` and `timed_plain_run`, the
                      one timer of plain decoding that evaluate.py, bench.py and
                      `python speculative.py --bench` share.

Both decoders keep their state on the device and write each step as a function of tensors at
fixed addresses (the token buffer, the KV caches, the current length) that never asks the host
anything. Eagerly that function is the readable reference; on a GPU the same function is
recorded once as a CUDA graph and replayed. A decoder runs its steps through
fast_decode.StepRunner, in one line, and the reader of the eager path need not open it.
"""

import argparse
import math
import time
from collections.abc import Collection
from types import SimpleNamespace
from typing import NamedTuple

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


def scaled_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None) -> torch.Tensor:
    """logits / temperature in float32 (bfloat16 would round them), with every token outside the
    top_k most likely at -inf: log p(x) + log Z of the distribution before top-p (T > 0)."""
    scores = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(scores, top_k, dim=-1).values[..., -1:]          # (..., 1)
        scores = scores.masked_fill(scores < kth_largest, float("-inf"))
    return scores


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
    probs = torch.softmax(scaled_logits(logits, temperature, top_k), dim=-1)   # computed in float32
    if top_p is not None and top_p < 1:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs                  # mass of strictly more likely tokens
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)   # the most likely token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def exponentials(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """E_x ~ Exp(1), float32, one for every entry of like (..., V) (logits or probabilities): the
    random numbers of `race`."""
    return torch.empty(like.shape, dtype=torch.float32, device=like.device).exponential_(generator=generator)


def race(probs: torch.Tensor, races: torch.Tensor) -> torch.Tensor:
    """One token per row of probs (..., V) -> (...), given races E_x ~ Exp(1) (`exponentials`).

    The exponential race: the token with the largest p(x) / E_x is x with probability exactly
    p(x) (E_x / p(x) ~ Exp(p(x)), and the smallest of independent exponentials is the one of rate
    p(x) with probability p(x) / sum p). It is the Gumbel-max trick in another form (-log E_x is a
    Gumbel variable). Tokens of probability 0 score 0 and are never chosen. torch.multinomial
    draws the same way but first checks the probabilities with .item(), a host synchronisation
    at every token. The random numbers come in as a tensor, so that this arithmetic is a pure
    function that torch.compile can fuse (Sampler), which it cannot do with a draw from a generator."""
    return (probs / races).argmax(dim=-1)


def draw(logits: torch.Tensor, races: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
         top_p: float | None = None) -> torch.Tensor:
    """One token per row of logits (..., V) -> (...), distributed as sample_probs(logits,
    temperature, top_k, top_p): the token race(sample_probs(...), races) picks for the same races
    (but for float rounding in a near-tie), found without building the distribution.

    The race picks the largest p(x) / E_x, that is the largest log p(x) - log E_x, and
    log p(x) = logits_x / T - log Z with one normaliser Z for every x: so the winner is the
    largest logits_x / T - log E_x (the Gumbel-max trick; -log E_x is a Gumbel variable). No
    softmax, no sum over the row: one pass over the logits, where sample_probs and race make three.
    Top-k keeps this form (`scaled_logits`: the tokens it drops score -inf, as their p is 0);
    top-p needs the sorted probabilities, so there the race runs on them. Temperature 0 is the
    argmax of the logits (sample_token says why that is the race of T = 0), and draws on none of
    the races."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if top_p is not None and top_p < 1:
        return race(sample_probs(logits, temperature, top_k, top_p), races)
    return (scaled_logits(logits, temperature, top_k) - races.log()).argmax(dim=-1)


def sample_token(logits: torch.Tensor, sampling: tuple, generator: torch.Generator | None = None,
                 sampler: "Sampler | None" = None) -> torch.Tensor:
    """The decoders' next token from logits (..., V) under sampling = (temperature, top_k, top_p).

    Temperature 0 is the argmax of the logits themselves. It is what the race would return for
    the one-hot distribution sample_probs makes at T = 0 (the race can only pick the token of
    probability 1), without building that V-wide distribution or drawing V random numbers:
    on a GPU those are kernels of their own at every token, on a CPU the draw over 49,152 tokens
    costs more than the argmax many times over. Every other temperature draws from sample_probs
    (`draw`), through `sampler` (compiled or not; by default the functions themselves)."""
    if sampling[0] == 0:
        return logits.argmax(dim=-1)
    return (sampler or EAGER).draw(logits, exponentials(logits, generator), *sampling)


# ----------------------------------------------------------------------------------------------
# Checks shared by the decoders and the command lines
# ----------------------------------------------------------------------------------------------

def check_context(model: Llama, n_positions: int, what: str) -> None:
    if n_positions > model.config.max_seq_len:
        raise ValueError(f"{what} needs {n_positions} positions but the model's context is "
                         f"{model.config.max_seq_len}; shorten the prompt or max_new_tokens")


DRAFT_MODES = ("sample", "argmax")      # the paper's rejection rule; the engines' argmax drafting
MAX_AUTO_GAMMA = 6                      # the largest gamma "auto" considers, unless told otherwise
BLOCK_MARGIN = 1.05                     # the gain over a plain step a block must be predicted to beat


def check_draft_mode(draft_mode: str) -> None:
    if draft_mode not in DRAFT_MODES:
        raise ValueError(f"unknown draft mode {draft_mode!r}; choose 'sample' (the rejection rule) or "
                         "'argmax' (the draft proposes its argmax, as inference engines do)")


def check_pair(target: Llama, draft: Llama) -> None:
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"draft vocabulary ({draft.config.vocab_size}) != target vocabulary "
                         f"({target.config.vocab_size}); the draft must use the target's tokenizer")


def measured_draft_mode(temperature: float, draft_mode: str) -> str:
    """The draft mode a block runs: at temperature 0 both modes are verify_greedy, one
    computation, so they share one recording, one set of costs and one acceptance count."""
    return "sample" if temperature == 0 else draft_mode


def decoder_slots(target: Llama, draft: Llama | None, prompts: list[list[int]], max_new_tokens: int,
                  gamma: int = 0) -> int:
    """Slots for decoders that serve every prompt: the longest prompt + new tokens (+ a block)."""
    context = min(target.config.max_seq_len, draft.config.max_seq_len if draft else target.config.max_seq_len)
    return 2 + min(max(map(len, prompts)) + max_new_tokens + gamma, context)


def cut_at_stop(tokens: list[int], stop_ids: Collection[int]) -> list[int]:
    """tokens up to and including the first stop token (all of them if there is none)."""
    first = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
    return tokens if first is None else tokens[: first + 1]


# ----------------------------------------------------------------------------------------------
# Plain autoregressive decoding (the baseline, and the engine of data generation)
# ----------------------------------------------------------------------------------------------

def decode_step(model: Llama, tokens: torch.Tensor, cache, length: torch.Tensor, sampling: tuple,
                generator, sampler: "Sampler | None" = None) -> torch.Tensor:
    """One plain step for every row of tokens (B, n_slots): feed the newest token (at slot
    length - 1; the cache holds every slot before it), sample the next one, write it at slot
    `length` and move length on. Returns the new tokens (B,)."""
    newest = length - 1                                                            # (1,) its slot
    logits = model(tokens.index_select(1, newest), cache, newest)[:, -1]          # (B, V)
    token = sample_token(logits, sampling, generator, sampler)                     # (B,)
    tokens.index_copy_(1, length, token[:, None])
    length += 1
    return token


class Decoder:
    """Batched plain decoding of `batch_size` prompts in `n_slots` cache slots (prompt + new
    tokens), reusable across calls. Prompts of different lengths are LEFT-padded so that every
    row writes its next token into the same slot; the cache's `start` tells attention and RoPE
    where each row really begins.

    State on the device: tokens (B, n_slots), the KV cache, and length (1,): the slot the next
    token goes into. `decode_step` reads and writes only these, so with graphs=True (CUDA) it
    is recorded once per sampling setting and replayed (fast_decode.StepRunner). compile_sampling:
    the sampling compiled by torch.compile (Sampler; fast_decode's GPU paths that compile)."""

    def __init__(self, model: Llama, batch_size: int, n_slots: int, graphs: bool = False,
                 compile_sampling: bool = False):
        self.model, self.batch_size = model, batch_size
        self.sampler = Sampler("inductor") if compile_sampling else EAGER
        self.cache = model.new_cache(batch_size, n_slots)
        self.tokens = torch.zeros(batch_size, n_slots, dtype=torch.long, device=model.device)
        self.length = torch.zeros(1, dtype=torch.long, device=model.device)
        self.steps = fast_decode.StepRunner(model.device, graphs)      # eager, or recorded steps

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
        self.steps.prefill(self.model, self.tokens, self.cache, 0, P - 1)
        sampling = (temperature, top_k, top_p)
        stopped = [False] * len(prompts)                  # has row b made a stop token yet?
        made, unread = 0, []                               # unread: steps' tokens not read yet, oldest first
        with self.steps.generator(generator) as generator:
            while made < max_new_tokens:
                token = self.steps.run(sampling, lambda: decode_step(self.model, self.tokens, self.cache,
                                                                     self.length, sampling, generator, self.sampler))
                made += 1
                # Has every row stopped? Asked of every token, so that plain decoding runs at most
                # one step past a stop token: more would make it look slower than it is beside the
                # speculative loop (which asks once per block). Asked of the tokens
                # read to the host as the speculative loop reads its blocks: one copy, no kernels
                # of its own, and on a GPU one step late (fast_decode.ReadLater): the next step is
                # launched before the host waits for this one. A step launched past the stop token
                # is cut off with it (cut_at_stop).
                if stop_ids:
                    unread.append(self.steps.read_later(token))
                    if len(unread) > self.steps.run_ahead:
                        stopped = [done or t in stop_ids for done, t in zip(stopped, unread.pop(0).tolist())]
                        if all(stopped):
                            break
        rows = self.tokens[:, P: P + made].tolist()
        return [cut_at_stop(row, stop_ids) for row in rows]


# ----------------------------------------------------------------------------------------------
# Speculative decoding
# ----------------------------------------------------------------------------------------------

def verify_draws(target_probs: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The random numbers of verify for target_probs (gamma + 1, V): u (gamma,) ~ U[0, 1), one per
    acceptance test, then the races (V,) ~ Exp(1) of the token after the accepted ones."""
    u = torch.rand(target_probs.shape[0] - 1, device=target_probs.device, generator=generator)
    return u, exponentials(target_probs[0], generator)


def verify(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor, u: torch.Tensor,
           races: torch.Tensor, draft_vocab: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rejection-sampling rule for one block (PAPER.md 4.1), entirely on the device.

    draft_tokens x_1..x_gamma (gamma,) with x_i ~ q_i; draft_probs q (gamma, V); target_probs
    p (gamma + 1, V); u and races, the rule's random numbers (verify_draws). Returns (n_accepted,
    next_token), both 0-dim tensors: x_1..x_n are kept, then next_token, the replacement for the
    first rejected token or, if all gamma were accepted, a bonus token from p_{gamma+1}.
    draft_vocab: for a draft over a shortlist S of the vocabulary (fast_decode.ShortlistHead), the
    sorted token ids (K,) that draft_probs (gamma, K) are over; q is 0 outside S (PAPER.md 4.3).

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
    in_draft_vocab = draft_tokens if draft_vocab is None else torch.searchsorted(draft_vocab, draft_tokens)
    p_x, q_x = target_probs[rows, draft_tokens], draft_probs[rows, in_draft_vocab]   # (gamma,)
    accepted = u * q_x < p_x                      # P(u < p/q) = min(1, p(x)/q(x)); q(x) > 0 as x ~ q
    n_accepted = accepted.long().cumprod(0).sum()                  # the accepted prefix's length
    q_next = torch.cat([draft_probs, torch.zeros_like(draft_probs[:1])]).index_select(0, n_accepted.view(1))[0]
    p_next = target_probs.index_select(0, n_accepted.view(1))[0]                     # (V,)
    if draft_vocab is None:
        residual = (p_next - q_next).clamp(min=0)                                    # max(p - q, 0)
    else:                                          # q over S: subtract it at S's tokens only
        residual = p_next.index_add(0, draft_vocab, q_next, alpha=-1).clamp(min=0)
    # A rejection implies p != q somewhere, so the residual has mass; guard against rounding.
    residual = torch.where(residual.sum() > 0, residual, p_next)
    return n_accepted, race(residual / residual.sum(), races)


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """verify() at temperature 0, from the target's logits (gamma + 1, V): (n_accepted, next_token).

    At T = 0 both distributions are one-hot (sample_probs): q_i on the draft's argmax x_i, p_i on
    the target's argmax t_i. The rule then decides without chance. x_i passes u q_i(x_i) < p_i(x_i),
    i.e. u < p_i(x_i) with u in [0, 1), exactly when p_i(x_i) = 1: when x_i = t_i. After the first
    mismatch at n + 1, the residual max(p_{n+1} - q_{n+1}, 0) is p_{n+1} itself (q's mass sits
    where p has none), whose only token is t_{n+1}; after a full match the bonus token is
    t_{gamma+1}. So: accept while x_i = t_i, then write t_{n+1} -- the same result as verify() on
    the one-hot distributions, without building them or drawing random numbers."""
    return keep_matching(draft_tokens, target_logits.argmax(dim=-1))               # t_i, (gamma + 1,)


def verify_argmax(draft_tokens: torch.Tensor, target_logits: torch.Tensor, races: torch.Tensor,
                  temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule of the inference engines (vLLM, SGLang, llama.cpp; PAPER.md 4.5), for a draft that
    proposes its ARGMAX tokens: (n_accepted, next_token), as verify() returns them. target_logits
    (gamma + 1, V) and races E ~ Exp(1) shaped like them (`exponentials`), the target's draws under
    the sampling settings (`draw`: the target's probabilities are never needed).

    The target samples its own token at every position of the block, y_i ~ p_i for i = 1..gamma+1,
    all from the one pass that scored the draft's tokens; the draft's x_i are kept while x_i = y_i,
    and the block ends with y_{n+1}. Why the output is the target's: the block writes y_1..y_{n+1},
    and y_i is drawn from p_i, the target's distribution given the context and x_1..x_{i-1} --
    which equal y_1..y_{i-1}, since x_1..x_n matched. So every written token is the target's own
    sample given everything written before it, whatever the draft proposed. (The draft only
    decides how many of the target's samples one pass can keep.)

    What it costs: x_i is kept with probability p_i(x_i) = p_i(argmax q_i), where the rejection
    rule keeps a drafted token with probability sum_x min(p_i(x), q_i(x)) (PAPER.md 4.1). At
    temperature 0 both are one-hot and the two rules are the same (verify_greedy). At T > 0 the
    engine's rule rewards a draft whose argmax is the target's likeliest token, not one whose
    whole distribution matches -- which is what TVD-like losses train for."""
    return keep_matching(draft_tokens, draw(target_logits, races, temperature, top_k, top_p))   # y_i ~ p_i


def keep_matching(draft_tokens: torch.Tensor, target_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_1..x_gamma against the target's tokens t_1..t_{gamma+1}: (n, t_{n+1}), n the length of
    the prefix where x_i = t_i."""
    gamma = draft_tokens.shape[0]
    n_accepted = (draft_tokens == target_tokens[:gamma]).long().cumprod(0).sum()   # matching prefix
    return n_accepted, target_tokens.index_select(0, n_accepted.view(1))[0]


class Sampler:
    """The arithmetic a decoder does between its model calls -- `sample_probs`, `race`, `draw`,
    `verify` and `verify_argmax` -- as the decoder calls it: the functions themselves, or, with
    compile_backend (fast_decode's GPU paths that compile), each one compiled by torch.compile.

    Why compile them. On a GPU each tensor operation is a kernel of its own, and at T > 0 a block
    runs dozens of tiny ones beside its model calls: a draw over each of the draft's rows of
    49,152 logits, and under the rejection rule the softmaxes of the block's q and p, the
    acceptance test's gathers and comparisons, the residual.
    Recorded in a CUDA graph they cost no launches from the host, but each still runs, one after
    another, and a row's reduction runs on few of the GPU's cores. torch.compile fuses each function
    into a few kernels and splits a long row's reductions across the GPU (BENCHMARKS.md section 2
    has the counts and times). It cannot compile a draw from a torch.Generator, so the decoders
    draw the random numbers first (`exponentials`, `verify_draws`), in the order the functions use
    them: compiled or not, a step consumes the same random numbers and computes the same thing, up
    to float rounding (tests/test_gpu.py compares the two token for token)."""

    def __init__(self, compile_backend: str | None = None):
        def wrap(function):
            return torch.compile(function, fullgraph=True, backend=compile_backend) if compile_backend else function
        self.probs, self.race, self.draw = wrap(sample_probs), wrap(race), wrap(draw)
        self.verify, self.verify_argmax = wrap(verify), wrap(verify_argmax)


EAGER = Sampler()      # the functions themselves: the CPU paths, and every test of them


class Launched(NamedTuple):
    """An iteration of SpeculativeDecoder.generate launched and not read yet."""
    gamma: int                  # its block's gamma; 0 for a plain step
    result: object              # what it returns, on its way to the host (StepRunner.read_later)
    launched_at: float          # time.perf_counter() at its launch
    timed: bool                 # whether its time goes into the costs (update_cost)


class SpeculativeDecoder:
    """Speculative decoding of one prompt at a time with a (target, draft) pair, in `n_slots`
    slots, reusable across calls (PAPER.md section 4).

    State on the device: tokens (1, n_slots), both KV caches, and length (1,): the slot where
    the block's first new token goes. Slot 0 holds a padding token that nothing attends to (the
    caches' start is 1); the prompt fills slots 1..P. Each cache holds keys/values for a prefix
    of the tokens: the target's for all but the newest token, the draft's, as a block starts,
    for all but the newest TWO (after a fully accepted block it has seen neither x_gamma nor
    the bonus token, after a rejection it has not seen the replacement; a prompt, or tokens of
    plain steps, it is caught up on first). So every block starts by feeding the
    draft the last two tokens, whatever happened before -- one shape for every block, which a
    CUDA graph needs -- and the padding slot makes that possible for a one-token prompt.
    Rolling back after a rejection costs nothing: the next block simply writes from the
    shorter length, over stale slots that the causal mask hides until then.
    """

    def __init__(self, target: Llama, draft: Llama, n_slots: int, graphs: bool = False,
                 compile_sampling: bool = False):
        check_pair(target, draft)
        self.target, self.draft = target, draft
        device, one = target.device, torch.ones(1, dtype=torch.long, device=target.device)
        self.target_cache = target.new_cache(1, n_slots, start=one)
        self.draft_cache = draft.new_cache(1, n_slots, start=one)
        self.tokens = torch.zeros(1, n_slots, dtype=torch.long, device=device)
        self.length = torch.zeros(1, dtype=torch.long, device=device)
        self.offsets = torch.arange(n_slots, device=device)
        self.steps = fast_decode.StepRunner(device, graphs)           # eager, or recorded blocks
        self.sampler = Sampler("inductor") if compile_sampling else EAGER     # the arithmetic between model calls
        self.costs = {}        # (sampling, draft_mode) -> this machine's step costs (measure_costs)
        self.cost_update = 1 / 8   # weight of each timed loop iteration in those costs (update_cost); 0 keeps them
        # gamma "auto" runs a block only where it is predicted to beat a plain step by this
        # factor. Near 1 a prediction is inside its own error: the text being written is accepted
        # more or less often than the counts so far say, and a block's price strays from its
        # measurement (BENCHMARKS.md section 3 measures both); there a block wins or loses by
        # luck, while a plain step is plain decoding's own step and risks only the loop's
        # bookkeeping. 1 maximises the predicted speed alone.
        self.block_margin = BLOCK_MARGIN
        self.plain_check_every = 32   # gamma "auto" times a plain step after this many blocks in a row; 0 never
        self.plain_check_margin = 1.25   # ... unless the block is predicted to beat plain by this factor or more
        self.blocks_since_plain = {}  # (sampling, draft_mode) -> blocks run since the last plain step
        self.acceptance = {}   # (sampling, draft_mode) -> AcceptanceCounts over the calls so far
        # (sampling, draft_mode) -> the lengths of the answers of the calls so far, math.inf where
        # no stop token came (expected_tokens_left)
        self.answer_lengths = {}

    def block(self, gamma: int, sampling: tuple, generator, draft_mode: str = "sample") -> torch.Tensor:
        """One block: the draft proposes gamma tokens, the target scores them in one pass, and
        the accepted prefix plus one more token are written after the sequence. Returns
        [n_accepted, the gamma + 1 tokens now at the block's slots, the gamma drafted tokens]:
        the one thing the host reads.

        draft_mode "sample": the draft samples x_i ~ q_i and `verify` applies the rejection rule
        (PAPER.md 4.1); "argmax": the draft proposes its argmax and `verify_argmax` keeps it while
        it equals the target's own sample, as inference engines do. At temperature 0 both are
        `verify_greedy`."""
        first = self.length.clone()                          # (1,) the block's first new slot
        offsets = self.offsets[: gamma + 1]
        greedy = sampling[0] == 0            # temperature 0: argmaxes, no distributions (verify_greedy)
        argmax = greedy or draft_mode == "argmax"
        # A draft over a shortlist of the vocabulary (fast_decode.ShortlistHead) scores only its
        # K tokens: its proposals are indices into draft_vocab, mapped to token ids here.
        draft_vocab = getattr(self.draft.output, "token_ids", None)
        # 1. The draft proposes x_1..x_gamma, fed the last two tokens, then each of its proposals.
        draft_slots = first - 2 + offsets[:2]
        draft_input = self.tokens.index_select(1, draft_slots)                     # (1, 2)
        # Top-p needs q_i itself to draw x_i (draw), so then q_i is kept as it is made; otherwise
        # the draws need only logits, and q_1..q_gamma are made in one call for the rule.
        nucleus = sampling[2] is not None and sampling[2] < 1
        draft_tokens, draft_rows = [], []                      # draft_rows: q_i, or the logits of q_i
        for i in range(gamma):
            # [0, -1:], not [:, -1]: the last position as a (1, V) row of stride V whether the
            # draft was fed two tokens or one (of (1, 2, V), [:, -1] is a row of stride 2V). The
            # compiled draw specialises on strides: a second stride would recompile it into one
            # kernel generic in the stride, which every later draw runs, the plain steps' too
            # (test_the_compiled_draw_is_specialised_once).
            logits = self.draft(draft_input, self.draft_cache, draft_slots)[0, -1:]  # (1, V) or (1, K)
            if argmax:
                x = logits.argmax(dim=-1)                                           # x_i = argmax q_i, (1,)
            elif nucleus:
                q = self.sampler.probs(logits, *sampling)                           # q_i
                x = self.sampler.race(q, exponentials(q, generator))                # x_i ~ q_i, (1,)
                draft_rows.append(q)
            else:
                x = self.sampler.draw(logits, exponentials(logits, generator), *sampling)   # x_i ~ q_i, (1,)
                draft_rows.append(logits)
            if draft_vocab is not None:
                x = draft_vocab[x]
            draft_tokens.append(x)
            draft_input, draft_slots = x[:, None], first + offsets[i: i + 1]
        draft_tokens = torch.cat(draft_tokens)                                       # (gamma,)

        # 2. The target scores [newest token, x_1..x_gamma] in ONE pass: p_1..p_{gamma+1}.
        target_input = torch.cat([self.tokens.index_select(1, first - 1), draft_tokens[None]], dim=1)
        target_logits = self.target(target_input, self.target_cache, first - 1 + offsets)[0]   # (gamma + 1, V)
        if greedy:
            n_accepted, next_token = verify_greedy(draft_tokens, target_logits)
        elif argmax:                                  # the target's own draws y_i ~ p_i, no p needed
            n_accepted, next_token = self.sampler.verify_argmax(
                draft_tokens, target_logits, exponentials(target_logits, generator), *sampling)
        else:
            draft_probs = torch.cat(draft_rows)                                           # (gamma, V) or (gamma, K)
            if not nucleus:                                                               # q_1..q_gamma from logits
                draft_probs = self.sampler.probs(draft_probs, *sampling)
            target_probs = self.sampler.probs(target_logits, *sampling)                  # (gamma + 1, V)
            n_accepted, next_token = self.sampler.verify(draft_tokens, draft_probs, target_probs,
                                                         *verify_draws(target_probs, generator), draft_vocab)

        # 3. Keep x_1..x_n and the next token; the sequence grows by n + 1.
        self.tokens.index_copy_(1, first + offsets[:gamma], draft_tokens[None])
        self.tokens.index_copy_(1, first + n_accepted.view(1), next_token.view(1, 1))
        self.length += n_accepted + 1
        return torch.cat([n_accepted.view(1), self.tokens[0].index_select(0, first + offsets), draft_tokens])

    def forget_calls(self) -> None:
        """Forget what the calls so far taught gamma "auto" (the acceptance counted, the answers'
        lengths), so that the next call is the first it counts: a warm-up's few tokens are no
        evidence of either."""
        self.acceptance.clear()
        self.answer_lengths.clear()

    def start(self, prompt: list[int], pad_id: int = 0) -> None:
        """Write the prompt into slots 1..P and the target's cache, up to all but the newest
        token. Not the draft's: generate catches the draft up before its first block, as after
        plain steps, so that a call that runs plain steps only (gamma "auto" with a draft that
        does not pay) pays for no draft prefill."""
        P = len(prompt)
        self.tokens[0, : P + 1] = torch.tensor([pad_id] + prompt, device=self.tokens.device)
        self.length.fill_(P + 1)
        self.steps.prefill(self.target, self.tokens, self.target_cache, 1, P)

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int, gamma: int | str = 4, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, stop_ids: Collection[int] = (),
                 generator: torch.Generator | None = None, pad_id: int = 0,
                 draft_mode: str = "sample") -> tuple[torch.Tensor, dict]:
        """(new tokens, stats): exactly max_new_tokens tokens, fewer if a stop token comes first.
        stats (block_stats) also lists every block as (drafted tokens, n accepted, next token).

        gamma="auto": for every block, the gamma with the most expected tokens per second
        (choose_gamma) from the step costs measure_costs recorded, corrected by the loop's own
        timings (update_cost), and the acceptance per draft position counted so far (over this
        decoder's earlier calls and this one's blocks); a gamma of 0 is a plain step of the
        target alone, when no block is predicted to beat it by `block_margin`. After
        `plain_check_every` blocks in a row it times one plain step anyway: in a run of blocks
        the machine's speed follows the blocks' own timings, so a block dearer in the loop than
        its price relative to a plain step says would pass for a slower machine, and blocks that
        lose to plain decoding would run on, never to be found out (update_cost); a plain step
        sets the speed that the blocks after it are measured against. Only where that could
        happen: when the chosen block is predicted to beat a plain step by less than
        `plain_check_margin` (predicted_gain, with a block priced at no less, relative to a plain
        step, than timed alone), which a block priced too low by that factor would explain. Where
        blocks clearly pay, the check would only cost: the plain step, and the draft's catch-up
        after it. A block that must first catch the draft up (on the prompt, or after plain steps)
        runs only if what blocks are predicted to save over the tokens the answers so far say are
        left pays for the catch-up (pays_for_catch_up, expected_tokens_left). Each choice
        (auto_choice) is made while the GPU runs the iteration before it, right after its launch:
        made after the host's read of a result, it would leave the GPU idle while the host
        computes the gains, which plain decoding does not pay. So a choice sees the counts
        and costs without the iterations not read yet: one late, or two on a GPU, where the
        iteration before is read only after the next is launched (fast_decode.ReadLater); that
        moves no estimate much."""
        auto = gamma == "auto"
        if not auto and gamma < 1:
            raise ValueError(f"gamma (draft tokens per block) must be >= 1, got {gamma}")
        check_sampling(temperature, top_k, top_p)
        check_draft_mode(draft_mode)
        prompt = [int(t) for t in (prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else prompt_ids)]
        P = len(prompt)
        if P == 0:
            raise ValueError("the prompt needs at least one token (e.g. the BOS token)")
        for model in (self.target, self.draft):
            check_context(model, P + max_new_tokens, "speculative decoding")
        sampling = (temperature, top_k, top_p)
        draft_mode = measured_draft_mode(temperature, draft_mode)
        key = (sampling, draft_mode)
        if auto and key not in self.costs:
            raise ValueError("gamma='auto' needs this machine's step costs: call measure_costs(prompt, "
                             "temperature, top_k, top_p, draft_mode) first")
        max_gamma = max(self.costs[key]["block"]) if auto else gamma
        # Blocks may draft past max_new_tokens (the extra tokens are dropped), never past either
        # model's context: near its end a block drafts fewer than gamma tokens.
        context = min(self.target.config.max_seq_len, self.draft.config.max_seq_len)
        if decoder_slots(self.target, self.draft, [prompt], max_new_tokens, max_gamma) > self.tokens.shape[1]:
            raise ValueError(f"a prompt of {P} tokens, {max_new_tokens} new ones and gamma {max_gamma} do not fit "
                             f"the decoder's {self.tokens.shape[1]} slots")
        counts = self.acceptance.setdefault(key, AcceptanceCounts())
        lengths = self.answer_lengths.setdefault(key, [])
        since_plain = self.blocks_since_plain.get(key, 0)      # blocks in a row, for the plain check
        synchronize(self.target.device)
        started = time.perf_counter()
        self.start(prompt, pad_id)
        new_tokens, blocks, n_tokens, draft_end = [], [], P, 1         # the draft holds slots < draft_end
        # `unread`: the iteration launched and not read yet, if any (Launched). On a GPU the next
        # iteration is launched before it is read (fast_decode.ReadLater), wherever the next
        # one needs nothing the host has not read: the unread one cannot end the call (it adds at
        # most gamma + 1 tokens) or reach the end of a context, and the draft's catch-up after it
        # is known (a block leaves the draft behind by the newest two tokens only, which every
        # block feeds it; a plain step leaves it one token further behind).
        unread, n_launched, last_read = None, 0, started
        choice = auto_choice(counts, self.costs[key], max_gamma, self.block_margin) if auto else (gamma, 0.0)
        with self.steps.generator(generator) as generator:
            while True:
                ahead = unread.gamma + 1 if unread else 0         # the most tokens the unread one adds
                if len(new_tokens) + ahead < max_new_tokens and (unread is None or (
                        self.steps.run_ahead and n_tokens + ahead + max_gamma < context)):
                    launched_at, chosen, gain = time.perf_counter(), *choice
                    after_plain = unread is not None and unread.gamma == 0
                    behind = 0 if unread and unread.gamma else n_tokens + after_plain - 1 - draft_end
                    # Timed for the costs (update_cost says why), but not an iteration that pays for
                    # the prompt: the first, whose wait includes the prompt's prefill (start()
                    # launched it without waiting), and the one that catches the draft up on it.
                    timed = n_launched > 0
                    if auto and chosen:
                        # The check's margin does not trust a block factor the loop lowered below
                        # 1: a block priced too low is what the check exists to find out.
                        block_factor = self.costs[key].get("loop", {}).get("block", 1.0)
                        if (timed and 0 < self.plain_check_every <= since_plain
                                and gain * min(1.0, block_factor) < self.plain_check_margin):
                            chosen = 0                            # the plain step's check (docstring)
                        elif behind > 0 and not pays_for_catch_up(gain, self.costs[key], behind, expected_tokens_left(
                                lengths, len(new_tokens) + ahead, max_new_tokens)):
                            chosen = 0                            # blocks would not earn the catch-up back
                    block_gamma = min(chosen, context - n_tokens - ahead)   # = chosen but at a context's end
                    if block_gamma == 0:                          # a plain step; the draft falls behind
                        result = self.steps.run(("plain", sampling), lambda: decode_step(
                            self.target, self.tokens, self.target_cache, self.length, sampling, generator,
                            self.sampler))
                    else:
                        if behind > 0:                            # catch the draft up: the prompt, plain steps
                            timed = timed and draft_end > 1       # (draft_end 1: nothing of the prompt yet)
                            self.steps.prefill(self.draft, self.tokens, self.draft_cache, draft_end,
                                               n_tokens + after_plain - 1)
                        result = self.steps.run((block_gamma, sampling, draft_mode),
                                                lambda: self.block(block_gamma, sampling, generator, draft_mode))
                    launched = Launched(block_gamma, self.steps.read_later(result), launched_at, timed)
                    n_launched += 1
                    if auto:      # the next choice, while the GPU runs this iteration (docstring)
                        choice = auto_choice(counts, self.costs[key], max_gamma, self.block_margin)
                elif unread is None:                              # every token made and read
                    break
                else:                                             # nothing to launch before the read
                    launched = None
                if unread is not None:                            # read the iteration before
                    read = unread.result.tolist()                 # the one wait for the GPU per iteration
                    if unread.gamma == 0:
                        n_accepted, drafted, window = 0, [], read
                    else:
                        n_accepted, *read = read
                        window, drafted = read[: unread.gamma + 1], read[unread.gamma + 1:]
                        draft_end = n_tokens + n_accepted         # all but the newest two, after it
                        counts.add(n_accepted, unread.gamma)
                    new_tokens += cut_at_stop(window[: n_accepted + 1], stop_ids)
                    blocks.append((drafted, n_accepted, window[n_accepted]))
                    n_tokens += n_accepted + 1
                    now = time.perf_counter()
                    if auto and unread.timed:  # from its launch, or from the read before if it was queued
                        update_cost(self.costs[key], unread.gamma, now - max(unread.launched_at, last_read),
                                    self.cost_update)
                    last_read = now
                    since_plain = since_plain + 1 if unread.gamma else 0
                    if new_tokens and new_tokens[-1] in stop_ids:
                        break                                     # (an iteration launched after it is lost)
                unread = launched
        synchronize(self.target.device)      # the clock stops when the GPU is done, a lost iteration too
        seconds = time.perf_counter() - started
        if auto:                                     # what fixed gammas run leaves the check alone
            self.blocks_since_plain[key] = since_plain
        new_tokens = new_tokens[:max_new_tokens]
        lengths.append(len(new_tokens) if new_tokens and new_tokens[-1] in stop_ids else math.inf)
        stats = block_stats([n for _, n, _ in blocks], [len(drafted) for drafted, _, _ in blocks],
                            len(new_tokens), seconds)
        return torch.tensor(new_tokens, dtype=torch.long), {**stats, "blocks": blocks}

    @torch.no_grad()
    def measure_costs(self, prompt: list[int], temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, draft_mode: str = "sample", max_gamma: int = MAX_AUTO_GAMMA,
                      repeats: int = 5) -> dict:
        """Seconds of a plain step of the target and of a block of each gamma = 1..max_gamma on
        this machine, as the decode loop runs them but each followed by the host's read of its
        result (on a GPU the loop reads it after launching the next: update_cost corrects), the
        median of `repeats` after an untimed first run (which records or compiles), at the
        prompt's position, timed in rounds of one of each. The cost of a block does not
        depend on how many of its tokens are accepted: the draft's and the target's passes are the
        same work either way. Kept for gamma="auto" (choose_gamma) under these sampling settings,
        and returned:
        {"plain": seconds, "block": {gamma: seconds}}, with the loop's factors, the machine's speed
        and the blocks' own, 1 until the loop times them, and the count of its timings ("loop",
        "timed": update_cost), and "catch_up": the draft's prefill, {"fixed": seconds, "per_token": seconds},
        the line through its times on the prompt and on its first half (catch_up_cost). Draws from
        a generator of its own."""
        check_sampling(temperature, top_k, top_p)
        check_draft_mode(draft_mode)
        sampling = (temperature, top_k, top_p)
        draft_mode = measured_draft_mode(temperature, draft_mode)
        if len(prompt) + max_gamma + 2 > self.tokens.shape[1]:
            raise ValueError(f"a prompt of {len(prompt)} tokens and blocks of up to {max_gamma} do not fit the "
                             f"decoder's {self.tokens.shape[1]} slots")
        self.start(prompt)
        first = len(prompt) + 1

        def draft_prefill_seconds(n: int) -> float:       # the draft's prefill of the prompt's first n tokens
            synchronize(self.target.device)
            started = time.perf_counter()
            self.steps.prefill(self.draft, self.tokens, self.draft_cache, 1, 1 + n)
            synchronize(self.target.device)
            return time.perf_counter() - started

        # A fixed part (a chunk's launch, a recorded graph) and a part per token: a line through
        # two lengths. The whole prompt last: blocks need the draft to hold all but its newest 2.
        n, half = len(prompt) - 2, (len(prompt) - 2) // 2
        draft_prefill_seconds(n)                                   # untimed: records, compiles
        part, whole = draft_prefill_seconds(half), draft_prefill_seconds(n)
        per_token = max(0.0, (whole - part) / (n - half)) if n > half else 0.0
        catch_up = {"fixed": max(0.0, whole - per_token * n), "per_token": per_token}

        def seconds_at_first(key, step) -> float:                 # one step at the prompt's position
            self.length.fill_(first)
            synchronize(self.target.device)
            started = time.perf_counter()
            self.steps.run(key, step).tolist()
            return time.perf_counter() - started

        with self.steps.generator(torch.Generator(self.target.device).manual_seed(0)) as generator:
            timed_steps = {("plain", sampling): lambda: decode_step(self.target, self.tokens, self.target_cache,
                                                                    self.length, sampling, generator, self.sampler),
                           **{(g, sampling, draft_mode): lambda g=g: self.block(g, sampling, generator, draft_mode)
                              for g in range(1, max_gamma + 1)}}
            for key, step in timed_steps.items():
                seconds_at_first(key, step)                        # untimed: records, compiles
            # Rounds that time every step once, in turn, not each step's repeats in a row: a
            # machine whose speed drifts while it measures (a CPU's clocks, a neighbour's load)
            # then slows the plain step and the blocks alike, as evaluate.py's interleaved
            # baseline does, instead of pricing one of them in a slow stretch.
            times = {key: [] for key in timed_steps}
            for _ in range(repeats):
                for key, step in timed_steps.items():
                    times[key].append(seconds_at_first(key, step))
        median = {key: sorted(seconds)[repeats // 2] for key, seconds in times.items()}
        plain = median[("plain", sampling)]
        blocks = {g: median[(g, sampling, draft_mode)] for g in range(1, max_gamma + 1)}
        self.costs[(sampling, draft_mode)] = {"plain": plain, "block": blocks, "loop": {"speed": 1.0, "block": 1.0},
                                              "timed": {"plain": 0, "block": 0}, "catch_up": catch_up}
        self.blocks_since_plain[(sampling, draft_mode)] = 0
        return self.costs[(sampling, draft_mode)]


# ----------------------------------------------------------------------------------------------
# Choosing gamma from measurements (PAPER.md 5.5)
# ----------------------------------------------------------------------------------------------

def expected_tokens(alphas: list[float], gamma: int) -> float:
    """E[tokens per block] = 1 + alpha_1 + alpha_1 alpha_2 + ... + alpha_1 ... alpha_gamma, with
    alpha_k the acceptance of the k-th draft token given the first k - 1 were accepted: the k-th
    token is kept iff the first k all are, and every block ends with one token of the target's."""
    total, kept = 1.0, 1.0
    for alpha in alphas[:gamma]:
        kept *= alpha
        total += kept
    return total


def choose_gamma(alphas: list[float], costs: dict, margin: float = 1.0) -> int:
    """The gamma whose block makes the most expected tokens per second, expected_tokens(alphas,
    gamma) / its cost in the loop (loop_cost), or 0 (plain decoding) when none beats a plain
    step's 1 / loop_cost(costs, 0) by more than the factor `margin` (predicted_gain > margin;
    SpeculativeDecoder.block_margin says why the decoder asks for more than 1). alphas: alpha_k
    for k = 1 .. the largest gamma in costs. Of gammas predicted alike, the smallest."""
    gains = {gamma: predicted_gain(alphas, costs, gamma) for gamma in sorted(costs["block"])}
    best = max(gains, key=gains.get, default=0)
    return best if best and gains[best] > margin else 0


def auto_choice(counts: "AcceptanceCounts", costs: dict, max_gamma: int, margin: float) -> tuple[int, float]:
    """gamma "auto"'s choice from the acceptance counted so far and the costs: (choose_gamma on
    the optimistic alphas, the chosen block's predicted_gain; 0.0 for a plain step)."""
    alphas = counts.optimistic_alphas(max_gamma)
    chosen = choose_gamma(alphas, costs, margin)
    return chosen, predicted_gain(alphas, costs, chosen) if chosen else 0.0


def predicted_gain(alphas: list[float], costs: dict, gamma: int) -> float:
    """How many times a plain step's tokens per second a block of gamma is predicted to make:
    (E(gamma) / c(gamma)) / (1 / c_plain), the costs as the loop prices them (loop_cost)."""
    return expected_tokens(alphas, gamma) * loop_cost(costs, 0) / loop_cost(costs, gamma)


def pays_for_catch_up(gain: float, costs: dict, behind: int, tokens_left: int) -> bool:
    """Whether blocks predicted to make `gain` times plain decoding's tokens per second
    (predicted_gain) save, over the tokens_left still to make, more than catching the draft up
    on the `behind` tokens it has not seen costs: a draft prefill, once, before the first block
    (a call's prompt, or the tokens of plain steps).

        tokens_left c_plain (1 - 1 / gain)  >  c_catch_up(behind)

    Plain decoding makes the tokens left in tokens_left c_plain seconds, blocks in 1 / gain of
    that; c_catch_up(behind) is catch_up_cost. Why it matters: on a CPU the draft's prefill of a
    long prompt costs more than blocks of a small gain save over a short answer (BENCHMARKS.md
    section 3): tokens_left is what the answers so far say is left (expected_tokens_left), not
    what max_new_tokens allows."""
    return tokens_left * loop_cost(costs, 0) * (1 - 1 / gain) > catch_up_cost(costs, behind)


def expected_tokens_left(lengths: list[float], made: int, max_new_tokens: int) -> float:
    """The tokens still to come in a call that has made `made` of at most max_new_tokens, as the
    earlier calls' answers (their lengths, math.inf where no stop token came) say: the mean of
    min(L, max_new_tokens) - made over the answers L longer than `made` -- an answer that went on
    past `made` before is the evidence of how far this one goes on -- and max_new_tokens - made
    where none did (no call yet, or a longer answer than any before). Why not max_new_tokens -
    made alone: short answers (a summary at T=1 stops after 10-40 tokens of the 64 allowed)
    leave a catch-up on the prompt that blocks of a small gain cannot earn back."""
    longer = [min(length, max_new_tokens) - made for length in lengths if length > made]
    return sum(longer) / len(longer) if longer else max_new_tokens - made


def catch_up_cost(costs: dict, behind: int) -> float:
    """Seconds of the draft's prefill of `behind` tokens in the loop: fixed + per_token x behind,
    as measure_costs measured them (costs["catch_up"]; 0 if not measured), at the machine's speed
    in the loop now (update_cost), which moves it as it moves a plain step."""
    catch_up = costs.get("catch_up", {"fixed": 0.0, "per_token": 0.0})
    return (catch_up["fixed"] + catch_up["per_token"] * behind) * costs.get("loop", {}).get("speed", 1.0)


def loop_cost(costs: dict, gamma: int) -> float:
    """Seconds of a plain step (gamma 0) or of a block of gamma in the decode loop: its cost timed
    alone, times the machine's speed in the loop now, times, for a block, the blocks' own factor
    (costs["loop"]: "speed" and "block", update_cost; 1 where the loop has timed nothing yet)."""
    alone, kind = alone_cost(costs, gamma)
    loop = costs.get("loop", {})
    return alone * loop.get("speed", 1.0) * (loop.get("block", 1.0) if kind == "block" else 1.0)


def alone_cost(costs: dict, gamma: int) -> tuple[float, str]:
    """(seconds timed alone, kind): costs["plain"] and "plain" for gamma 0, else costs["block"][gamma]
    and "block"."""
    return (costs["plain"], "plain") if gamma == 0 else (costs["block"][gamma], "block")


def update_cost(costs: dict, gamma: int, seconds: float, weight: float) -> None:
    """Move the loop's factors toward what one iteration of the decode loop just took, x =
    seconds / its step's cost timed alone, in place:

        a block:          r <- r + w/4 (min(x / s, 2 r) - r),   then x <- x / r
        every iteration:  s <- s + w (min(x, 2 s) - s),         w = max(weight, 1 / (n + 1))

    with n the iterations timed so far, this one included (costs["timed"] counts them per kind).
    s is the machine's speed against measure_costs' time: a CPU's clocks and a neighbour's load
    move it by tens of percent within one evaluation (BENCHMARKS.md section 3), for plain steps
    and blocks alike. r is a block's price relative to a plain step's against measure_costs':
    the loop pays what a step timed alone does not, its bookkeeping and the draft's catch-up after
    plain steps, or less on a GPU, where it hides the launch that a step timed alone with its read
    pays (fast_decode.ReadLater), in different shares for the two kinds. Only r decides between a
    block and a plain step (predicted_gain: s cancels). Why not a factor per kind: moved only
    when its kind runs, it lets a machine that slows during plain steps price them up and leave
    blocks at their old price, and blocks that lose to plain decoding run until their own factor
    catches up. Why r moves slowly, against s as the iterations before left it: within a run of
    blocks s follows the blocks too (generate's plain check sets it from a plain step). Why one r
    for every gamma: the loop's extra is much the same share of any block, and a factor per gamma
    would be corrected only when its gamma runs -- a gamma that looks cheap because its own factor
    has never been measured gets chosen, and found out, one gamma after another. Why the mean
    first: the measurement and every timing since count alike (w = 1/2, 1/3, ...) until the
    running average over the last 1 / weight iterations takes over, so a few iterations correct a
    measurement that is off. An observation counts for at most twice the factor, so that one pause
    of the machine (a garbage collection, another process) cannot price a kind out for long.
    weight 0 keeps the costs."""
    if weight == 0:
        return
    alone, kind = alone_cost(costs, gamma)
    loop = costs.setdefault("loop", {"speed": 1.0, "block": 1.0})
    timed = costs.setdefault("timed", {"plain": 0, "block": 0})
    timed[kind] += 1
    w = max(weight, 1 / (sum(timed.values()) + 1))
    x = seconds / alone
    if kind == "block":
        loop["block"] += w / 4 * (min(x / loop["speed"], 2 * loop["block"]) - loop["block"])
        x /= loop["block"]
    loop["speed"] += w * (min(x, 2 * loop["speed"]) - loop["speed"])


class AcceptanceCounts:
    """Acceptance tests and acceptances per draft position, counted over blocks, and the
    alpha_k they estimate for choose_gamma. A position seldom tested (the 5th token when blocks
    rarely accept 4) borrows from the acceptance of all positions: alpha_k = (accepted_k +
    m alpha) / (tested_k + m), with alpha = (accepted + 1) / (tests + 2) over every position and
    m = PRIOR_TESTS pseudo-tests. With nothing counted yet every alpha_k is 1/2.

    choose_gamma is given these estimates plus a standard error (optimistic_alphas). Why: a
    plain step tests no draft token, so a decoder that has switched to plain steps learns nothing
    more about the draft; chosen on the bare estimate, one or two early rejections could stop it
    from ever trying a block again. Optimistic while the counts are few, it keeps trying blocks
    until they show that none pays; with many counts the error, and the optimism, vanish."""
    PRIOR_TESTS = 4

    def __init__(self):
        self.tested, self.accepted = [], []

    def add(self, n_accepted: int, drafted: int) -> None:
        """One block that drafted `drafted` tokens and accepted the first n_accepted of them."""
        for k in range(min(n_accepted + 1, drafted)):            # positions 1 .. n+1 were tested
            if k == len(self.tested):
                self.tested.append(0)
                self.accepted.append(0)
            self.tested[k] += 1
            self.accepted[k] += k < n_accepted

    def alphas(self, n: int) -> list[float]:
        overall = (sum(self.accepted) + 1) / (sum(self.tested) + 2)
        counted = lambda counts, k: counts[k] if k < len(counts) else 0      # noqa: E731
        return [(counted(self.accepted, k) + self.PRIOR_TESTS * overall) / (counted(self.tested, k) + self.PRIOR_TESTS)
                for k in range(n)]

    def optimistic_alphas(self, n: int) -> list[float]:
        """alphas(n), each plus sqrt(alpha_k (1 - alpha_k) / (tests + m)), at most 1: a standard
        error of the tests counted so far, all positions together, so that the optimism fades as
        the counts grow (not only at positions seldom tested, which would favour long blocks)."""
        tests = sum(self.tested) + self.PRIOR_TESTS
        return [min(1.0, a + math.sqrt(a * (1 - a) / tests)) for a in self.alphas(n)]


def block_stats(accepted_per_block: list[int], drafted_per_block: list[int], n_tokens: int,
                seconds: float) -> dict:
    """What one speculative run counted (PAPER.md section 5).

    block_efficiency tau = mean over blocks of (accepted + 1) = tokens produced per target call
    (tokens accepted past a stop token or max_new_tokens count too: tau measures the blocks).
    acceptance_rate alpha = accepted draft tokens / accept tests made: a block that stops at a
    rejection made n+1 tests, a fully accepted block made as many as it drafted. (Dividing by
    gamma per block instead would undercount alpha: tokens after a rejection are never tested.)
    Per draft position k = 1, 2, ...: tested_at[k-1] blocks tested their k-th token (those that
    drafted k or more and accepted the first k-1), accepted_at[k-1] accepted it, so
    alpha_k = accepted_at[k-1] / tested_at[k-1] is the CONDITIONAL acceptance of the k-th token
    given the first k-1 were accepted (PAPER.md 5.2).
    """
    blocks = len(accepted_per_block)
    counts = AcceptanceCounts()                       # the per-position counts gamma "auto" keeps
    for n_accepted, drafted in zip(accepted_per_block, drafted_per_block):
        counts.add(n_accepted, drafted)
    positions = max(drafted_per_block, default=0)     # positions drafted but never reached: 0 tests
    tested_at, accepted_at = (c + [0] * (positions - len(c)) for c in (counts.tested, counts.accepted))
    accepted, tests = sum(accepted_at), sum(tested_at)
    return {
        "block_efficiency": (accepted + blocks) / blocks if blocks else float("nan"),
        "acceptance_rate": accepted / tests if tests else float("nan"),
        "accepted_per_block": accepted_per_block,
        "drafted_per_block": drafted_per_block,
        "accept_tests": tests,
        "tested_at": tested_at,
        "accepted_at": accepted_at,
        "target_calls": blocks,
        "draft_calls": sum(drafted_per_block),
        "new_tokens": n_tokens,
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------------------------
# Timing: the untimed warm-up and the plain baseline (evaluate.py measures its grid with them)
# ----------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a host clock measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(generate, prompts: list[list[int]]) -> None:
    """Untimed: generate(prompt) for every prompt (a few tokens each), so that the timed runs
    after it pay no one-off costs: torch.compile compiles on first use (and again for input
    shapes it has not seen), a CUDA graph is recorded on its step's first use, and on a GPU each
    new prompt length can cost more set-up (cuDNN builds an attention plan per shape). None of
    that belongs in tokens per second, hence every prompt, not just the first."""
    for prompt in prompts:
        generate(prompt)


def timed_plain_run(plain: Decoder, prompt: list[int], max_new_tokens: int, temperature: float,
                    top_k: int | None, top_p: float | None, stop_ids, generator) -> tuple[int, float]:
    """(new tokens, seconds) of plain decoding of one prompt with a batch-1 Decoder, timed as
    SpeculativeDecoder.generate times itself: from an idle GPU to the last token on the host.
    The one timer of the baseline: evaluate.py, bench.py and `--bench` all call it."""
    synchronize(plain.model.device)
    started = time.perf_counter()
    n_new = len(plain.generate([prompt], max_new_tokens, temperature, top_k, top_p, stop_ids, generator)[0])
    synchronize(plain.model.device)
    return n_new, time.perf_counter() - started


# ----------------------------------------------------------------------------------------------
# Command line: decode one prompt (evaluate.py measures over many)
# ----------------------------------------------------------------------------------------------

def decoding_arguments(description: str) -> argparse.ArgumentParser:
    """The command line of one speculatively decoded prompt (here, and show.py's)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target", required=True, help="target checkpoint (ours, HF or Meta directory, or .gguf)")
    parser.add_argument("--draft", required=True, help="draft checkpoint")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.model, or a .gguf (default: the target's, if the target is a .gguf)")
    parser.add_argument("--prompt", required=True, help="the prompt to decode")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--system", default=None, help="system prompt for --chat")
    parser.add_argument("--gamma", default="auto",
                        help="draft tokens per block, or 'auto' (the default): before every block, the gamma "
                             "with the most expected tokens per second from this machine's measured step costs "
                             "and the acceptance so far, 0 (a plain step) if no block pays (PAPER.md 5.5)")
    parser.add_argument("--max-gamma", type=int, default=MAX_AUTO_GAMMA, help="the largest gamma 'auto' considers")
    parser.add_argument("--draft-mode", default="sample", choices=DRAFT_MODES,
                        help="'sample': the draft samples and the rejection rule decides (PAPER.md 4.1); "
                             "'argmax': the draft proposes its argmax, kept while it equals the target's own "
                             "sample (the rule of vLLM, SGLang and llama.cpp; PAPER.md 4.5)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)")
    parser.add_argument("--draft-vocab", type=int, default=None,
                        help="decode the draft over the N tokens the target wrote most often in --draft-vocab-data "
                             "(fast_decode.ShortlistHead: cheaper draft steps on a CPU, still lossless)")
    parser.add_argument("--draft-vocab-data", default=None,
                        help="for --draft-vocab: the distillation data (distill.jsonl), or a draft's answer_counts.json")
    parser.add_argument("--decode-path", default="eager", choices=fast_decode.DECODE_PATHS,
                        help="how decode steps run (fast_decode.py): 'eager' anywhere; on a CPU 'few-row-matmuls', or "
                             "'bf16-weights' / 'int8-weights' (quantize.py: another, quantized target); the others "
                             "on a GPU")
    return parser


def load_for_decoding(args) -> SimpleNamespace:
    """Check the flags of decoding_arguments, then load. Returns tok (the tokenizer), prompt (its
    ids), target, draft, decoder (a SpeculativeDecoder of the pair, its step costs measured if
    gamma is 'auto'), sampling, gamma, options (the decode path's) and params (the target's and
    the draft's parameters as loaded, before a decode path stores them otherwise). Flags first: a
    typo should cost one sentence, not the minute it takes to load a 7B model."""
    from checkpoints import DTYPES, load_model
    from tokenizer import chat_prompt, check_vocab, load_tokenizer
    gamma = args.gamma if args.gamma == "auto" else int(args.gamma) if args.gamma.isdigit() else None
    if gamma is None or gamma == 0:
        raise ValueError(f"--gamma (draft tokens per block) must be >= 1 or 'auto', got {args.gamma!r}")
    if args.max_gamma < 1:
        raise ValueError(f"--max-gamma must be >= 1, got {args.max_gamma}")
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if (args.draft_vocab is None) != (args.draft_vocab_data is None) or (args.draft_vocab or 1) < 1:
        raise ValueError("--draft-vocab N (>= 1) and --draft-vocab-data FILE go together; give both or neither")
    if args.dtype is not None and args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(sorted(DTYPES))}, got {args.dtype!r}")
    tokenizer_path = args.tokenizer or (args.target if args.target.endswith(".gguf") else None)
    if tokenizer_path is None:
        raise ValueError("give --tokenizer (only a .gguf target carries its own tokenizer)")
    tok = load_tokenizer(tokenizer_path)
    target = load_model(args.target, args.device, DTYPES.get(args.dtype))
    draft = load_model(args.draft, args.device, DTYPES.get(args.dtype), base=args.target)   # base: a shipped draft
    check_vocab(tok, target.config.vocab_size, args.target)
    check_pair(target, draft)
    params = (count_params(target), count_params(draft))
    if args.draft_vocab is not None:
        from answers import answer_vocabulary, load_answer_counts
        fast_decode.shortlist_head(draft, answer_vocabulary(load_answer_counts(args.draft_vocab_data), args.draft_vocab)[0])
    options = fast_decode.apply_decode_path([target, draft], args.decode_path)
    prompt = chat_prompt(tok, args.prompt, args.system) if args.chat else tok.encode(args.prompt, bos=True)
    for model in (target, draft):
        check_context(model, len(prompt) + args.max_new_tokens, "the prompt and --max-new-tokens")
    max_gamma = args.max_gamma if gamma == "auto" else gamma
    decoder = SpeculativeDecoder(target, draft, decoder_slots(target, draft, [prompt], args.max_new_tokens, max_gamma),
                                 **options)
    sampling = (args.temperature, args.top_k, args.top_p)
    if gamma == "auto":   # untimed, like every warm-up: records and compiles each block on the way
        decoder.measure_costs(prompt, *sampling, args.draft_mode, max_gamma)
    return SimpleNamespace(tok=tok, prompt=prompt, target=target, decoder=decoder, sampling=sampling,
                           gamma=gamma, options=options, params=params)


def main(argv: list[str] | None = None) -> None:
    parser = decoding_arguments("Speculative decoding of one prompt with a draft and a target "
                                "(python evaluate.py --speedup measures tau and speed-up over many).")
    parser.add_argument("--bench", action="store_true",
                        help="time it: warm up first, then decode the prompt speculatively and plainly (same "
                             "settings, seed and decode path) and print both tokens/s and the speed-up")
    args = parser.parse_args(argv)
    loaded = load_for_decoding(args)
    tok, prompt, decoder, sampling, gamma = loaded.tok, loaded.prompt, loaded.decoder, loaded.sampling, loaded.gamma
    if args.bench:   # untimed: compilation, graph recording and per-shape set-up happen here
        warm_up(lambda p: decoder.generate(p, min(args.max_new_tokens, args.max_gamma + 1), gamma, *sampling,
                                           draft_mode=args.draft_mode), [prompt])
        decoder.forget_calls()         # the warm-up's blocks and answer are not "so far" for this run
    generator = torch.Generator(args.device).manual_seed(args.seed)
    tokens, stats = decoder.generate(prompt, args.max_new_tokens, gamma, *sampling, tok.stop_ids, generator,
                                     tok.pad_id, args.draft_mode)
    print(tok.decode(tokens.tolist()))
    speculative_speed = stats["new_tokens"] / stats["seconds"]
    gammas = sorted(set(stats["drafted_per_block"]))
    print(f"\n{stats['new_tokens']} tokens in {stats['seconds']:.2f} s ({speculative_speed:.1f} tokens/s"
          f"{'' if args.bench else ', first call: includes any compilation'}); block efficiency tau "
          f"{stats['block_efficiency']:.2f}, acceptance rate alpha {stats['acceptance_rate']:.3f} over "
          f"{stats['target_calls']} target calls, gamma {args.gamma} ({', '.join(map(str, gammas))} used); "
          f"target {loaded.params[0]:,} / draft {loaded.params[1]:,} parameters")
    if args.bench:   # the same prompt, settings, seed and decode path, decoded plainly
        plain = Decoder(loaded.target, 1, decoder_slots(loaded.target, None, [prompt], args.max_new_tokens),
                        **loaded.options)
        warm_up(lambda p: plain.generate([p], 2, *sampling), [prompt])
        n_new, seconds = timed_plain_run(plain, prompt, args.max_new_tokens, *sampling, tok.stop_ids,
                                         torch.Generator(args.device).manual_seed(args.seed))
        plain_speed = n_new / seconds
        print(f"plain decoding of the same prompt: {plain_speed:.1f} tokens/s; speculative / plain = wall-clock "
              f"speed-up {speculative_speed / plain_speed:.2f}x (one prompt; evaluate.py --speedup measures many)")


if __name__ == "__main__":
    from common import run_cli
    run_cli(main)
