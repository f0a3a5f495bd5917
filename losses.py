"""Distillation losses for the draft model: KLD, TVD, TVD++, the acceptance-rate losses, and friends.

Phase 3 of the recipe (PAPER.md section 3) fine-tunes the small draft q on the target p's full
next-token distribution at every response position. This file holds the losses; its comments hold
the derivations. Notation at one position t: p = softmax(target logits), q = softmax(draft logits
z), y = the data token (a sample from p: the target wrote the data). Every gradient below is taken
w.r.t. the draft logits z, using  grad_z log q(x) = e_x - q  (one-hot of x minus q).

1. Why TVD is THE loss for speculative decoding (PAPER.md 3.2). The draft proposes x ~ q and the
   target accepts it with probability min(1, p(x)/q(x)). So
       alpha = P(accept) = sum_x q(x) min(1, p(x)/q(x)) = sum_x min(p(x), q(x))
             = sum_x p(x) - sum_x max(p(x) - q(x), 0) = 1 - TVD(p, q),
   the rejection probability IS the total variation distance (at temperature 1; in general between
   the distributions actually sampled from). Minimising E[TVD] maximises the acceptance rate.

2. TVD as a policy gradient (PAPER.md 3.3). TVD = sum_x max(p(x) - q(x), 0), so
   dTVD/dq(x) = -1[p(x) > q(x)] = -r(x): the reward r marks the tokens the draft under-estimates
   (r is piecewise constant, its own derivative is 0 almost everywhere). Chain rule with
   grad q(x) = q(x) grad log q(x):
       grad TVD = -sum_x q(x) r(x) grad log q(x) = -E_{x~q}[r(x) grad log q(x)]   (REINFORCE)
                = -q * (r - E_q[r])                                            (on the logits)
   A constant baseline b changes nothing in this exact sum: sum_x q b grad log q = b grad sum_x q
   = b grad 1 = 0. Baselines and normalised advantages only matter for SAMPLED estimates.

3. TVD++ (PAPER.md 3.4, the project's reading: the paper's exact equation was not available to
   us). The paper borrows the normalised advantage of policy-gradient methods. Three readings, the
   same reward r(x) = 1[p(x) > q(x)], different samples:
   - tvdpp (the project's TVD++): the expectation over x ~ q_t computed EXACTLY over the vocabulary,
     the reward normalised with its mean and standard deviation under q_t at each position:
       mu_t = sum_x q r,  sigma_t = sqrt(sum_x q (r - mu_t)^2),  A_t(x) = (r(x) - mu_t) / (sigma_t + eps)
       loss_t = -sum_x stopgrad(q(x) A_t(x)) log q(x)
     grad = -q * A_t (since sum_x q A_t = 0) = grad TVD_t / (sigma_t + eps): the baseline mu_t
     cancels in the exact sum (section 2), and sigma_t re-weights the positions: those whose mass is
     nearly all on one side of p (small sigma) are up-weighted, so positions where the draft is
     almost right or badly wrong get as large a step as the rest. WHY per position: normalised over
     the whole batch instead, the mean would still cancel and the std would be ONE number scaling
     the whole gradient, which Adam undoes (its update is invariant to a constant gradient scale,
     up to eps): that loss would train exactly like TVD. Per position, sigma_t changes the
     DIRECTION of the batch gradient, which is what makes TVD++ a different loss.
   - tvdpp_datatoken (the data-token reading): the samples are the data tokens
     y_t ~ p_t, advantage normalised over the batch's masked positions:
       r_t = 1[p_t(y_t) > q_t(y_t)],  A_t = (r_t - mean(r)) / (std(r) + eps),
       loss = -sum_t m_t stopgrad(A_t) log q_t(y_t) / sum_t m_t.
     OFF-policy: treating mean b and scale s as constants,
       E[grad] = -(1/s) sum_x p(x) (r(x) - b) grad log q(x)        (weights p(x), NOT q(x)),
     a signed cross-entropy on the data, not grad TVD; and the baseline no longer cancels: it adds
     (b/s) sum_x p grad log q = (b/s)(p - q) = -(b/s) grad KL(p||q), a push AWAY from the target.
     How it stalls (measured on the CPU preset; tests/test_losses.py pins it): a draft flatter than
     the target under-estimates every data token written at low temperature (mostly the target's
     most likely tokens), so every r_t = 1, std(r) = 0, every A_t = 0 and the gradient vanishes
     however far q is from p; on the way there the rare r_t = 0 tokens get the large advantage
     -mean(r)/std(r) and push the draft flatter still.
   - tvdpp_onpolicy: y_t ~ q_t, the draft's own samples (REINFORCE), batch-normalised advantage.
     With a constant b, E_{y~q}[-(r(y) - b) grad log q(y)] = grad TVD exactly. The batch mean
     contains r_t itself; other positions are independent with zero-mean score, so
     E[(r_t - mean r) grad log q_t(y_t)] = (1 - 1/N) E[r_t grad log q_t(y_t)]: still along grad TVD.
     Dividing by the batch std (random, correlated with the r's) makes it biased but aligned; the
     tests check cosine ~ 1 by Monte Carlo.
   At draft == target exactly, every r = 0 (strict >), so all three give loss 0, gradient 0.

4. The acceptance-rate losses (PAPER.md 3.5; Samarin et al. 2026, "LK losses", arXiv 2602.23881,
   as their authors' reference code computes them). With alpha_t = sum_x min(p_t, q_t) = 1 - TVD_t:
   - lk: the negative log acceptance, loss = mean_t -log alpha_t. grad = -grad alpha_t / alpha_t
     = grad TVD_t / alpha_t: TVD's gradient, amplified where acceptance is low (TVD's own gradient
     -q * (r - E_q r) is small where the draft puts little mass, exactly where a poorly aligned
     draft is). A position with alpha_t = 0 (disjoint supports) adds 0 and no gradient.
   - lk_hybrid: loss = lambda KL(p||q) + (1 - lambda) TVD (each the mean over positions),
     lambda = exp(-eta stopgrad(mean_t alpha_t)), eta = 3 (the authors' recommended value).
     Far from the target (alpha small, lambda ~ 1) it is mostly KL, whose gradient q - p does not
     vanish there; near it (alpha -> 1, lambda -> e^-3 = 0.05) mostly TVD, the quantity that
     matters. grad = lambda (q - p) + (1 - lambda) grad TVD, lambda held fixed. One lambda per
     call (a micro-batch), as in the reference code (which averages alpha over the batch).

5. Closed-form gradients of the divergences on the logits (checked in tests/test_losses.py):
   KL(p||q)  = sum p log(p/q)        grad = q - p          (mass-covering: q must cover p)
   KL(q||p)  = sum q log(q/p)        grad = q * (log(q/p) - KL(q||p))      (mode-seeking)
   JSD       = KL(p||m)/2 + KL(q||m)/2, m = (p + q)/2, dJSD/dq(x) = log(q(x)/m(x))/2,
                                     grad = q * (log(q/m) - KL(q||m)) / 2  (value <= log 2)
   TVD                               grad = -q * (r - E_q[r]),  r = 1[p > q]

Practicalities
- Interface: fn(draft_logits (B,T,V), target_logits (B,T,V), tokens (B,T), mask (B,T) bool,
  generator=None, *, max_chunk_elems) -> scalar float32, the average over masked positions.
  mask=None trains every position: train.py passes the logits of the masked positions alone,
  (1, N, V), which its models computed only there (model.Llama.forward's `keep`).
  logits[:, t] is the distribution over tokens[:, t] (the caller shifts). target_logits never gets
  a gradient. `generator` (on the logits' device) is used only by tvdpp_onpolicy (None: torch's
  global RNG); the other losses accept and ignore it, so train.py can call them all alike.
- Temperature is the caller's business: divide BOTH logits by T before calling to distil at T.
  The TVD = rejection identity holds for whichever distributions the sampler will use.
- Masked-out positions may hold garbage: rows are selected with the mask BEFORE any softmax.
  If the mask selects nothing the loss is a 0 that still depends on draft_logits (backward works).
- Precision: selected rows are upcast to float32 (softmax's dtype= argument, .float()); autocast
  only lowers matmul-like ops, none of which appear here, so results are float32 under bf16 autocast.
- Memory: boolean selection copies the masked rows once, in the input dtype (mask=None copies
  nothing). Then the rows are processed in chunks of positions of at most max_chunk_elems
  elements, each creating a few float32 (chunk, V) temporaries. Honest caveat: autograd keeps
  what each chunk saved for backward (about one or two float32 (chunk, V) tensors) until backward
  runs, so the saved state still totals roughly one or two float32 copies of the selected rows;
  chunking bounds the transient peak, not that. Chunked and one-shot results are identical up to float rounding.
"""

import math
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]
DEFAULT_MAX_CHUNK_ELEMS = 2**26  # 256 MiB per float32 (chunk, V) temporary; ~2k rows at V = 32000
ADVANTAGE_EPS = 1e-6  # A = (r - mean) / (std + eps), PAPER.md 3.4
LK_ETA = 3.0          # lambda = exp(-eta * alpha) of lk_hybrid, PAPER.md 3.5 (the LK authors' value)


# ----------------------------------------------------------------------------- plumbing

def _select_positions(draft_logits: torch.Tensor, target_logits: torch.Tensor,
                      tokens: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Check shapes; return the masked rows (every row if mask is None): draft (N, V), target
    (N, V) detached, tokens (N,)."""
    if draft_logits.dim() != 3 or draft_logits.shape != target_logits.shape:
        raise ValueError(f"draft_logits and target_logits must both be (B, T, V); got "
                         f"{tuple(draft_logits.shape)} and {tuple(target_logits.shape)}")
    batch_time, vocab = draft_logits.shape[:2], draft_logits.shape[2]
    if tokens.shape != batch_time or (mask is not None and mask.shape != batch_time):
        raise ValueError(f"tokens and mask must be (B, T) = {tuple(batch_time)}; got "
                         f"{tuple(tokens.shape)} and {None if mask is None else tuple(mask.shape)}")
    if mask is None:                  # every position: views of the inputs, nothing copied
        rows = draft_logits.flatten(0, 1), target_logits.detach().flatten(0, 1), tokens.flatten().long()
    elif mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}; pass mask.bool()")
    else:                             # only masked tokens must be ids; padding may be -100
        rows = draft_logits[mask], target_logits.detach()[mask], tokens[mask].long()
    token_rows = rows[2]              # (N,)
    if token_rows.numel() and (token_rows.min() < 0 or token_rows.max() >= vocab):
        raise ValueError(f"tokens at masked positions must lie in [0, {vocab}); got values in "
                         f"[{int(token_rows.min())}, {int(token_rows.max())}]")
    return rows


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


def _acceptance_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    draft_probs = F.softmax(draft_rows, dim=-1, dtype=torch.float32)
    target_probs = F.softmax(target_rows, dim=-1, dtype=torch.float32)
    return torch.minimum(target_probs, draft_probs).sum(-1)          # alpha = sum_x min(p, q) = 1 - TVD


def _lk_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    alpha = _acceptance_rows(draft_rows, target_rows)
    # -log alpha; a position of alpha 0 (disjoint supports) adds 0, as in the reference code
    return torch.where(alpha > 0, -alpha.clamp(min=torch.finfo(alpha.dtype).tiny).log(), torch.zeros_like(alpha))


def _kld_and_tvd_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    return torch.stack([_kld_rows(draft_rows, target_rows), _tvd_rows(draft_rows, target_rows)], dim=-1)  # (n, 2)


def _tvdpp_rows(draft_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
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
                target_logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None,
                max_chunk_elems: int | None) -> torch.Tensor:
    draft_rows, target_rows, _ = _select_positions(draft_logits, target_logits, tokens, mask)
    return _mean_over_positions(rows_fn, draft_rows, target_rows, max_chunk_elems=max_chunk_elems)


def kld(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
        mask: torch.Tensor | None, generator: torch.Generator | None = None, *,
        max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """Forward KL(p || q), standard KD. Gradient on the draft logits: q - p."""
    return _divergence(_kld_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def rkl(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
        mask: torch.Tensor | None, generator: torch.Generator | None = None, *,
        max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """Reverse KL(q || p). Gradient: q * (log(q/p) - KL(q||p))."""
    return _divergence(_rkl_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def jsd(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
        mask: torch.Tensor | None, generator: torch.Generator | None = None, *,
        max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """Jensen-Shannon, m = (p+q)/2. Gradient: q * (log(q/m) - KL(q||m)) / 2."""
    return _divergence(_jsd_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def tvd(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
        mask: torch.Tensor | None, generator: torch.Generator | None = None, *,
        max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """TVD(p, q) = 1/2 sum |p - q| = the rejection probability. Gradient: -q * (r - E_q r)."""
    return _divergence(_tvd_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def tvdpp_datatoken(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
                    mask: torch.Tensor | None, generator: torch.Generator | None = None, *,
                    max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """TVD++ with the data tokens as samples and a batch-normalised advantage (off-policy; stalls)."""
    draft_rows, target_rows, token_rows = _select_positions(draft_logits, target_logits, tokens, mask)
    return _normalised_advantage_loss(draft_rows, target_rows, token_rows, max_chunk_elems)


def tvdpp_onpolicy(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
                   mask: torch.Tensor | None, generator: torch.Generator | None = None, *,
                   max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """TVD++ with y_t ~ q_t sampled from the draft (tokens are only validated). E[grad] ~ grad TVD."""
    draft_rows, target_rows, _ = _select_positions(draft_logits, target_logits, tokens, mask)
    with torch.no_grad():
        uniforms = torch.rand(draft_rows.shape[0], generator=generator, device=draft_rows.device)
        sampled = _map_positions(_sample_rows, draft_rows, uniforms, max_chunk_elems=max_chunk_elems)
    return _normalised_advantage_loss(draft_rows, target_rows, sampled, max_chunk_elems)


def tvdpp(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
          mask: torch.Tensor | None, generator: torch.Generator | None = None, *,
          max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """TVD++ (PAPER.md 3.4): exact over the vocabulary, advantage normalised per position under q.
    Gradient: grad TVD_t / (std_t + eps)."""
    return _divergence(_tvdpp_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def lk(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
       mask: torch.Tensor | None, generator: torch.Generator | None = None, *,
       max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS) -> torch.Tensor:
    """mean_t -log alpha_t, alpha_t = sum_x min(p, q) (PAPER.md 3.5). Gradient: grad TVD_t / alpha_t."""
    return _divergence(_lk_rows, draft_logits, target_logits, tokens, mask, max_chunk_elems)


def lk_hybrid(draft_logits: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
              mask: torch.Tensor | None, generator: torch.Generator | None = None, *,
              max_chunk_elems: int | None = DEFAULT_MAX_CHUNK_ELEMS, eta: float = LK_ETA) -> torch.Tensor:
    """lambda KL(p||q) + (1 - lambda) TVD, lambda = exp(-eta stopgrad(mean alpha)) (PAPER.md 3.5)."""
    draft_rows, target_rows, _ = _select_positions(draft_logits, target_logits, tokens, mask)
    if draft_rows.shape[0] == 0:
        return draft_rows.float().sum()  # 0.0, still attached to draft_logits
    per_position = _map_positions(_kld_and_tvd_rows, draft_rows, target_rows, max_chunk_elems=max_chunk_elems)
    kl, total_variation = per_position.mean(0)                                 # means over positions
    weight = torch.exp(-eta * (1 - total_variation.detach()))                  # lambda; alpha = 1 - TVD
    return weight * kl + (1 - weight) * total_variation


LOSSES: dict[str, LossFn] = {
    "kld": kld, "tvd": tvd, "tvdpp": tvdpp,                          # the paper's three
    "lk": lk, "lk_hybrid": lk_hybrid,                                # the acceptance-rate losses
    "rkl": rkl, "jsd": jsd, "tvdpp_datatoken": tvdpp_datatoken, "tvdpp_onpolicy": tvdpp_onpolicy,
}
ALIASES = {"tvd++": "tvdpp"}


def get_loss(name: str) -> LossFn:
    """Look a loss up by name (as train.py's --loss flag spells it); 'tvd++' means 'tvdpp'."""
    canonical = ALIASES.get(name, name)
    if canonical not in LOSSES:
        valid = ", ".join(list(LOSSES) + list(ALIASES))
        raise ValueError(f"unknown loss {name!r}; valid names: {valid}")
    return LOSSES[canonical]
