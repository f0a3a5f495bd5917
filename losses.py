"""Distillation losses for the draft model: KLD, TVD, TVD++ and friends.

Phase 3 of the recipe (../shared/PAPER.md) fine-tunes the small draft q on the target p's full
next-token distribution at every response position. This file holds the losses; its comments hold
the derivations. Notation at one position t: p = softmax(target logits), q = softmax(draft logits
z), y = the data token (a sample from p: the target wrote the data). Every gradient below is taken
w.r.t. the draft logits z, using  grad_z log q(x) = e_x - q  (one-hot of x minus q).

1. Why TVD is THE loss for speculative decoding. The draft proposes x ~ q and the target accepts
   it with probability min(1, p(x)/q(x)). So
       P(accept) = sum_x q(x) min(1, p(x)/q(x)) = sum_x min(p(x), q(x))
                 = sum_x p(x) - sum_x max(p(x) - q(x), 0) = 1 - TVD(p, q),
   the rejection probability IS the total variation distance (at temperature 1; in general between
   the distributions actually sampled from). Minimising E[TVD] maximises the acceptance rate.

2. TVD as a policy gradient (PAPER.md). TVD = sum_x max(p(x) - q(x), 0), so
   dTVD/dq(x) = -1[p(x) > q(x)] = -r(x): the reward r marks the tokens the draft under-estimates
   (r is piecewise constant, its own derivative is 0 almost everywhere). Chain rule with
   grad q(x) = q(x) grad log q(x):
       grad TVD = -sum_x q(x) r(x) grad log q(x) = -E_{x~q}[r(x) grad log q(x)]   (REINFORCE)
                = -q * (r - E_q[r])                                            (on the logits)
   A constant baseline b changes nothing in this exact sum: sum_x q b grad log q = b grad sum_x q
   = b grad 1 = 0. Baselines and normalised advantages only matter for SAMPLED estimates.

3. TVD++ -- the PROJECT'S READING of the paper (PAPER.md: the paper's exact equation was not
   available to us). The samples this recipe owns are the data tokens y_t ~ p_t, so:
       r_t = 1[p_t(y_t) > q_t(y_t)],  A_t = (r_t - mean(r)) / (std(r) + 1e-6),
       loss = -sum_t m_t stopgrad(A_t) log q_t(y_t) / sum_t m_t,
   mean and (population) std over all masked positions of the batch. Expected gradient, treating
   the baseline b and the scale s as constants:
       E[grad] = -(1/s) sum_x p(x) (r(x) - b) grad log q(x)        (weights p(x), NOT q(x))
   This is NOT grad TVD in general: the samples come from p, and the importance weight q/p that
   would turn it into grad TVD is missing. It is a signed cross-entropy on the data: maximum
   likelihood on tokens the draft under-estimates (A > 0), "unlikelihood" on tokens it
   over-estimates (A < 0). Off-policy the baseline no longer cancels: it adds
   (b/s) sum_x p grad log q = (b/s)(p - q) = -(b/s) grad KL(p||q), a push that on its own would
   raise the cross-entropy on the data. Near q = p the weights p and q agree, that term vanishes,
   and the update points along -grad TVD again.
   Value and scale: the loss value is a surrogate, not a divergence (log `tvd` to monitor), and
   dividing by std(r) makes the step size insensitive to how close q is to p. At draft == target
   exactly, every r_t = 0 (strict >), so A = 0: loss 0, gradient 0 -- a degenerate batch, not a
   minimum being detected. The same holds for both variants below. The opposite degenerate batch
   matters more in practice: a draft flatter than the target under-estimates EVERY data token
   written at low temperature (mostly the target's most likely tokens), so every r_t = 1, A = 0
   and the gradient is 0 however far q is from p; near there the rare r_t = 0 tokens carry the
   large advantage -mean(r)/std(r) and push the draft flatter still (README, CPU results).

4. Variants beyond the paper (same normalised advantage, different samples):
   - tvdpp_onpolicy: y_t ~ q_t (the draft's own samples, like REINFORCE). With a constant b,
     E_{y~q}[-(r(y) - b) grad log q(y)] = grad TVD exactly. The batch mean contains r_t itself;
     other positions are independent with zero-mean score, so E[(r_t - mean r) grad log q_t(y_t)]
     = (1 - 1/N) E[r_t grad log q_t(y_t)]: still exactly along grad TVD. Dividing by the batch std
     (random, shared by the batch, correlated with the r's) makes it biased but aligned: every
     single estimate is a positive rescaling of the mean-baselined one, and as N grows std
     concentrates, E[grad] ~ (1 - 1/N)/std * grad TVD. The tests check cosine ~ 1 by Monte Carlo.
   - tvdpp_exact: the whole vocabulary instead of one sample. Per position: r(x) = 1[p(x) > q(x)],
     mean = sum_x q r, std = sqrt(sum_x q (r - mean)^2), A(x) = (r(x) - mean)/(std + eps),
     loss_t = -sum_x stopgrad(q(x) A(x)) log q(x), so grad = -sum_x q A grad log q
     = -q * A (since sum_x q A = 0) = grad TVD_t / (std_t + eps): the mean baseline cancels
     exactly, the std only rescales each position. Direction per position = grad TVD; across
     positions, those with small std (nearly all mass on one side) are up-weighted.

5. Closed-form gradients of the divergences on the logits (checked in tests/test_losses.py):
   KL(p||q)  = sum p log(p/q)        grad = q - p          (mass-covering: q must cover p)
   KL(q||p)  = sum q log(q/p)        grad = q * (log(q/p) - KL(q||p))      (mode-seeking)
   JSD       = KL(p||m)/2 + KL(q||m)/2, m = (p + q)/2, dJSD/dq(x) = log(q(x)/m(x))/2,
                                     grad = q * (log(q/m) - KL(q||m)) / 2  (value <= log 2)
   TVD                               grad = -q * (r - E_q[r]),  r = 1[p > q]

Practicalities
- Interface: fn(draft_logits (B,T,V), target_logits (B,T,V), tokens (B,T), mask (B,T) bool,
  generator=None, *, max_chunk_elems) -> scalar float32, the average over masked positions.
  logits[:, t] is the distribution over tokens[:, t] (the caller shifts). target_logits never gets
  a gradient. `generator` (on the logits' device) is used only by tvdpp_onpolicy (None: torch's
  global RNG); the other losses accept and ignore it, so train.py can call them all alike.
- Temperature is the caller's business: divide BOTH logits by T before calling to distil at T.
  The TVD = rejection identity holds for whichever distributions the sampler will use.
- Masked-out positions may hold garbage: rows are selected with the mask BEFORE any softmax.
  If the mask selects nothing the loss is a 0 that still depends on draft_logits (backward works).
- Precision: selected rows are upcast to float32 (softmax's dtype= argument, .float()); autocast
  only lowers matmul-like ops, none of which appear here, so results are float32 under bf16 autocast.
- Memory: boolean selection copies the masked rows once, in the input dtype. Then the rows are
  processed in chunks of positions of at most max_chunk_elems elements, each creating a few
  float32 (chunk, V) temporaries. Honest caveat: autograd keeps what each chunk saved for backward
  (about one or two float32 (chunk, V) tensors) until backward runs, so the saved state still
  totals roughly one or two float32 copies of the selected rows; chunking bounds the transient
  peak, not that. Chunked and one-shot results are identical up to float rounding.
"""

import math
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]
DEFAULT_MAX_CHUNK_ELEMS = 2**26  # 256 MiB per float32 (chunk, V) temporary; ~2k rows at V = 32000
ADVANTAGE_EPS = 1e-6  # A = (r - mean) / (std + eps), PAPER.md


# ----------------------------------------------------------------------------- plumbing

def _select_positions(draft_logits: torch.Tensor, target_logits: torch.Tensor,
                      tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Check shapes; return the masked rows: draft (N, V), target (N, V) detached, tokens (N,)."""
    if draft_logits.dim() != 3 or draft_logits.shape != target_logits.shape:
        raise ValueError(f"draft_logits and target_logits must both be (B, T, V); got "
                         f"{tuple(draft_logits.shape)} and {tuple(target_logits.shape)}")
    batch_time, vocab = draft_logits.shape[:2], draft_logits.shape[2]
    if tokens.shape != batch_time or mask.shape != batch_time:
        raise ValueError(f"tokens and mask must be (B, T) = {tuple(batch_time)}; got "
                         f"{tuple(tokens.shape)} and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}; pass mask.bool()")
    token_rows = tokens[mask].long()  # (N,)  only masked tokens must be ids; padding may be -100
    if token_rows.numel() and (token_rows.min() < 0 or token_rows.max() >= vocab):
        raise ValueError(f"tokens at masked positions must lie in [0, {vocab}); got values in "
                         f"[{int(token_rows.min())}, {int(token_rows.max())}]")
    return draft_logits[mask], target_logits.detach()[mask], token_rows


def _chunks(n_positions: int, vocab: int, max_chunk_elems: int | None) -> list[slice]:
    """Slices of positions holding at most max_chunk_elems logits each (None: one chunk)."""
    if max_chunk_elems is not None and max_chunk_elems < 1:
        raise ValueError(f"max_chunk_elems must be a positive int or None, got {max_chunk_elems}")
    rows = n_positions if max_chunk_elems is None else max_chunk_elems // vocab
    rows = max(1, rows)
    # max(n, 1): with no positions, one empty chunk, so torch.cat always has something to join
    return [slice(start, start + rows) for start in range(0, max(n_positions, 1), rows)]


def _mean_over_positions(position_loss: Callable[..., torch.Tensor], *rows: torch.Tensor,
                         max_chunk_elems: int | None) -> torch.Tensor:
    """(1/N) sum over positions of position_loss(*rows), evaluated chunk by chunk."""
    draft_rows = rows[0]  # (N, V)
    n_positions, vocab = draft_rows.shape
    if n_positions == 0:
        return draft_rows.float().sum()  # 0.0, still attached to draft_logits
    total = sum(position_loss(*(r[chunk] for r in rows)).sum()
                for chunk in _chunks(n_positions, vocab, max_chunk_elems))
    return total / n_positions


def _map_positions(position_fn: Callable[..., torch.Tensor], *rows: torch.Tensor,
                   max_chunk_elems: int | None) -> torch.Tensor:
    """torch.cat of position_fn over chunks: a per-position (N,) result, e.g. rewards."""
    n_positions, vocab = rows[0].shape
    return torch.cat([position_fn(*(r[chunk] for r in rows))
                      for chunk in _chunks(n_positions, vocab, max_chunk_elems)])


def _log_prob_at(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per row, in float32, without a (n, V) log_softmax output."""
    logits = logits.float()  # (n, V)
    return logits.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (n,)


# ----------------------------------------------------------------------------- per-position losses
# Each takes float-able (n, V) draft and target rows and returns (n,) losses in float32.

def _kld_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    draft_logprobs = F.log_softmax(draft_rows, dim=-1, dtype=torch.float32)    # log q
    target_logprobs = F.log_softmax(target_rows, dim=-1, dtype=torch.float32)  # log p
    return (target_logprobs.exp() * (target_logprobs - draft_logprobs)).sum(-1)  # sum p log(p/q)


def _rkl_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    draft_logprobs = F.log_softmax(draft_rows, dim=-1, dtype=torch.float32)
    target_logprobs = F.log_softmax(target_rows, dim=-1, dtype=torch.float32)
    return (draft_logprobs.exp() * (draft_logprobs - target_logprobs)).sum(-1)  # sum q log(q/p)


def _jsd_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    draft_logprobs = F.log_softmax(draft_rows, dim=-1, dtype=torch.float32)
    target_logprobs = F.log_softmax(target_rows, dim=-1, dtype=torch.float32)
    mix_logprobs = torch.logaddexp(draft_logprobs, target_logprobs) - math.log(2)  # log m, m = (p+q)/2
    kl_target_mix = (target_logprobs.exp() * (target_logprobs - mix_logprobs)).sum(-1)
    kl_draft_mix = (draft_logprobs.exp() * (draft_logprobs - mix_logprobs)).sum(-1)
    return 0.5 * kl_target_mix + 0.5 * kl_draft_mix  # JSD = KL(p||m)/2 + KL(q||m)/2


def _tvd_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    draft_probs = F.softmax(draft_rows, dim=-1, dtype=torch.float32)
    target_probs = F.softmax(target_rows, dim=-1, dtype=torch.float32)
    # TVD = sum_x max(p - q, 0). relu's gradient is 0 at exact ties, so dTVD/dq(x) = -1[p > q]
    # = -r(x) with the same strict inequality as the reward (and zero gradient at q == p).
    return F.relu(target_probs - draft_probs).sum(-1)


def _tvdpp_exact_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    draft_logprobs = F.log_softmax(draft_rows, dim=-1, dtype=torch.float32)  # (n, V) log q
    with torch.no_grad():
        draft_probs = draft_logprobs.exp()
        target_logprobs = F.log_softmax(target_rows, dim=-1, dtype=torch.float32)
        rewards = (target_logprobs > draft_logprobs).float()  # r(x) = 1[p(x) > q(x)], in log space
        mean = (draft_probs * rewards).sum(-1, keepdim=True)                      # E_q[r]
        std = (draft_probs * (rewards - mean) ** 2).sum(-1, keepdim=True).sqrt()  # std_q[r]
        weights = draft_probs * (rewards - mean) / (std + ADVANTAGE_EPS)          # q(x) A(x)
    return -(weights * draft_logprobs).sum(-1)  # -sum_x stopgrad(q A) log q; grad = -q A


def _weighted_nll_rows(draft_rows: torch.Tensor, tokens: torch.Tensor,
                       advantages: torch.Tensor) -> torch.Tensor:
    return -advantages * _log_prob_at(draft_rows, tokens)  # -A_t log q_t(y_t)


def _reward_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor,
                 tokens: torch.Tensor) -> torch.Tensor:
    # r_t = 1[p_t(y_t) > q_t(y_t)], compared in log space (log is monotone)
    return (_log_prob_at(target_rows, tokens) > _log_prob_at(draft_rows, tokens)).float()


def _sample_rows(draft_rows: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    # Inverse-CDF sampling y ~ q: the first x with cdf(x) > u. One uniform per position, drawn
    # up front, so the samples do not depend on how the positions are chunked.
    cdf = F.softmax(draft_rows, dim=-1, dtype=torch.float32).cumsum(-1)        # (n, V)
    sampled = torch.searchsorted(cdf, uniforms[:, None], right=True).squeeze(-1)
    return sampled.clamp(max=draft_rows.shape[-1] - 1)  # cdf[-1] may round to just below 1


def _normalised_advantage_loss(draft_rows: torch.Tensor, target_rows: torch.Tensor,
                               tokens: torch.Tensor, max_chunk_elems: int | None) -> torch.Tensor:
    """-mean_t stopgrad(A_t) log q_t(y_t) with A the batch-normalised reward at tokens y_t."""
    if tokens.numel() == 0:
        return draft_rows.float().sum()  # 0.0, still attached to draft_logits
    with torch.no_grad():  # pass 1: rewards at every position (mean and std need all of them)
        rewards = _map_positions(_reward_rows, draft_rows, target_rows, tokens,
                                 max_chunk_elems=max_chunk_elems)             # (N,)
        advantages = (rewards - rewards.mean()) / (rewards.std(correction=0) + ADVANTAGE_EPS)
    # pass 2: the weighted log-likelihood, chunk by chunk, with gradient
    return _mean_over_positions(_weighted_nll_rows, draft_rows, tokens, advantages,
                                max_chunk_elems=max_chunk_elems)


# ----------------------------------------------------------------------------- public losses

def _divergence(rows_fn: Callable[..., torch.Tensor], draft_logits: torch.Tensor,
                target_logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                max_chunk_elems: int | None) -> torch.Tensor:
    draft_rows, target_rows, _ = _select_positions(draft_logits, target_logits, tokens, mask)
    return _mean_over_positions(rows_fn, draft_rows, target_rows, max_chunk_elems=max_chunk_elems)


def kld(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
        mask: torch.Tensor, generator: torch.Generator | None = None, *,
        max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """Forward KL(p || q), standard KD. Gradient on the draft logits: q - p."""
    return _divergence(_kld_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def rkl(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
        mask: torch.Tensor, generator: torch.Generator | None = None, *,
        max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """Reverse KL(q || p). Gradient: q * (log(q/p) - KL(q||p))."""
    return _divergence(_rkl_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def jsd(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
        mask: torch.Tensor, generator: torch.Generator | None = None, *,
        max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """Jensen-Shannon, m = (p+q)/2. Gradient: q * (log(q/m) - KL(q||m)) / 2."""
    return _divergence(_jsd_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def tvd(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
        mask: torch.Tensor, generator: torch.Generator | None = None, *,
        max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """TVD(p, q) = 1/2 sum |p - q| = the rejection probability. Gradient: -q * (r - E_q r)."""
    return _divergence(_tvd_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def tvdpp(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
          mask: torch.Tensor, generator: torch.Generator | None = None, *,
          max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """TVD++ as PAPER.md defines it (the project's reading): normalised advantage at data tokens."""
    draft_rows, target_rows, token_rows = _select_positions(draft_logits, target_logits, tokens, mask)
    return _normalised_advantage_loss(draft_rows, target_rows, token_rows, max_chunk_elems)


def tvdpp_onpolicy(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
                   mask: torch.Tensor, generator: torch.Generator | None = None, *,
                   max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """TVD++ with y_t ~ q_t sampled from the draft (tokens are only validated). E[grad] ~ grad TVD."""
    draft_rows, target_rows, _ = _select_positions(draft_logits, target_logits, tokens, mask)
    with torch.no_grad():
        uniforms = torch.rand(draft_rows.shape[0], generator=generator, device=draft_rows.device)
        sampled = _map_positions(_sample_rows, draft_rows, uniforms, max_chunk_elems=max_chunk_elems)
    return _normalised_advantage_loss(draft_rows, target_rows, sampled, max_chunk_elems)


def tvdpp_exact(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor, generator: torch.Generator | None = None, *,
                max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """TVD++ summed over the whole vocabulary, per-position advantage. Grad = grad TVD_t / std_t."""
    return _divergence(_tvdpp_exact_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


LOSSES: dict[str, LossFn] = {
    "kld": kld, "tvd": tvd, "tvdpp": tvdpp,                          # the paper's three
    "rkl": rkl, "jsd": jsd, "tvdpp_onpolicy": tvdpp_onpolicy, "tvdpp_exact": tvdpp_exact,
}
ALIASES = {"tvd++": "tvdpp"}


def get_loss(name: str) -> LossFn:
    """Look a loss up by name (as train.py's --loss flag spells it); 'tvd++' means 'tvdpp'."""
    canonical = ALIASES.get(name, name)
    if canonical not in LOSSES:
        valid = ", ".join(list(LOSSES) + list(ALIASES))
        raise ValueError(f"unknown loss {name!r}; valid names: {valid}")
    return LOSSES[canonical]
