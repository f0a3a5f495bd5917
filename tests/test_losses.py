"""Tests for losses.py: values, gradients and the derivations its comments claim (PAPER.md section 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from losses import LK_ETA, LOSSES, get_loss, jsd, kld, lk, lk_hybrid, rkl, tvd, tvdpp, tvdpp_datatoken, tvdpp_onpolicy

EPS = 1e-6  # the advantage epsilon of PAPER.md 3.4


def random_case(batch=3, time=6, vocab=7, seed=0):
    """Random logits, tokens and a mask with some positions off (the last one always off)."""
    g = torch.Generator().manual_seed(seed)
    draft_logits = 2 * torch.randn(batch, time, vocab, generator=g)
    target_logits = 2 * torch.randn(batch, time, vocab, generator=g)
    tokens = torch.randint(0, vocab, (batch, time), generator=g)
    mask = torch.rand(batch, time, generator=g) > 0.3
    mask[0, 0], mask[-1, -1] = True, False
    return draft_logits, target_logits, tokens, mask


def loss_and_grad(loss_fn, draft_logits, target_logits, tokens, mask, seed=0, **kwargs):
    """Value and d value / d draft_logits; a fixed generator makes the on-policy loss repeatable."""
    draft_logits = draft_logits.detach().clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    value = loss_fn(draft_logits, target_logits, tokens, mask, generator, **kwargs)
    value.backward()
    return value.detach(), draft_logits.grad


def probs64(logits, mask):
    """softmax in float64 of the masked rows: (N, V)."""
    return torch.softmax(logits[mask].double(), dim=-1)


# ----------------------------------------------------------------------------- values

def test_hand_computed_values_with_a_garbage_masked_position():
    # position 0: p = (1/2, 1/2), q = (1/4, 3/4); position 1 is masked out and holds garbage
    draft_logits = torch.tensor([[[math.log(0.25), math.log(0.75)], [1e30, -1e30]]])
    target_logits = torch.tensor([[[0.0, 0.0], [-1e30, 3e29]]])
    tokens = torch.tensor([[0, -100]])
    mask = torch.tensor([[True, False]])
    std = math.sqrt(0.25 * 0.75)  # r = (1, 0) under q: mean 1/4
    expected = {
        "kld": 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75),
        "rkl": 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5),
        "jsd": 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625))
        + 0.5 * (0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625)),
        "tvd": 0.25,
        # -sum_x q A log q with A = ((1 - 1/4), (0 - 1/4)) / (std + eps)
        "tvdpp": -(0.25 * 0.75 * math.log(0.25) - 0.75 * 0.25 * math.log(0.75)) / (std + EPS),
        # alpha = min(1/2, 1/4) + min(1/2, 3/4) = 3/4
        "lk": -math.log(0.75),
        "lk_hybrid": math.exp(-LK_ETA * 0.75) * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
        + (1 - math.exp(-LK_ETA * 0.75)) * 0.25,
    }
    for name, value in expected.items():
        got = LOSSES[name](draft_logits, target_logits, tokens, mask)
        assert got.item() == pytest.approx(value, rel=1e-5), name


def test_tvdpp_datatoken_hand_computed():
    # four positions, vocab 2, data token 0: (p(y), q(y)) chosen so only the first has r = 1
    p_at_token = [0.8, 0.3, 0.5, 0.2]
    q_at_token = [0.4, 0.6, 0.9, 0.5]
    to_logits = lambda probs: torch.tensor([[[math.log(x), math.log(1 - x)] for x in probs]])
    tokens = torch.zeros(1, 4, dtype=torch.long)
    mask = torch.ones(1, 4, dtype=torch.bool)
    value = tvdpp_datatoken(to_logits(q_at_token), to_logits(p_at_token), tokens, mask)
    # r = (1, 0, 0, 0): mean 1/4, population std sqrt(3)/4, A = (3/4, -1/4, -1/4, -1/4) / (std + eps)
    advantages = [a / (math.sqrt(3) / 4 + EPS) for a in (0.75, -0.25, -0.25, -0.25)]
    expected = -sum(a * math.log(q) for a, q in zip(advantages, q_at_token)) / 4
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_tvd_is_half_l1_and_the_rejection_probability_of_speculative_sampling():
    draft_logits, target_logits, tokens, mask = random_case()
    target_probs, draft_probs = probs64(target_logits, mask), probs64(draft_logits, mask)
    half_l1 = 0.5 * (target_probs - draft_probs).abs().sum(-1).mean()
    assert tvd(draft_logits, target_logits, tokens, mask).item() == pytest.approx(half_l1.item(), abs=1e-6)

    # one position at temperature 1: propose x ~ q, accept with probability min(1, p(x)/q(x))
    q, p = draft_probs[0], target_probs[0]
    exact_rejection = (q * (1 - torch.clamp(p / q, max=1))).sum().item()
    g = torch.Generator().manual_seed(1)
    n = 200_000
    proposals = torch.multinomial(q, n, replacement=True, generator=g)
    accepted = torch.rand(n, generator=g, dtype=torch.float64) < (p / q)[proposals]
    simulated_rejection = 1 - accepted.double().mean().item()
    one_position = tvd(draft_logits[:1, :1], target_logits[:1, :1], tokens[:1, :1], mask[:1, :1]).item()
    assert one_position == pytest.approx(exact_rejection, abs=1e-6)
    standard_error = math.sqrt(one_position * (1 - one_position) / n)
    assert abs(simulated_rejection - one_position) < 4 * standard_error


def test_kld_matches_torch_kl_div():
    draft_logits, target_logits, tokens, mask = random_case(seed=2)
    reference = F.kl_div(F.log_softmax(draft_logits[mask], -1), F.log_softmax(target_logits[mask], -1),
                         log_target=True, reduction="batchmean")
    value = kld(draft_logits, target_logits, tokens, mask)
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)


def test_rkl_and_jsd_match_float64_transcriptions():
    draft_logits, target_logits, tokens, mask = random_case(seed=3)
    p, q = probs64(target_logits, mask), probs64(draft_logits, mask)
    m = (p + q) / 2
    reverse_kl = (q * (q / p).log()).sum(-1).mean()
    jensen_shannon = (0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)).mean()
    for loss_fn, reference in ((rkl, reverse_kl), (jsd, jensen_shannon)):
        value = loss_fn(draft_logits, target_logits, tokens, mask)
        assert value.item() == pytest.approx(reference.item(), rel=1e-5), loss_fn.__name__


def test_tvdpp_datatoken_matches_direct_transcription_of_its_formula():
    draft_logits, target_logits, tokens, mask = random_case(batch=4, time=8, seed=4)
    value, grad = loss_and_grad(tvdpp_datatoken, draft_logits, target_logits, tokens, mask)

    draft64 = draft_logits.double().requires_grad_(True)
    q_y = torch.softmax(draft64, -1).gather(-1, tokens[..., None]).squeeze(-1)                     # (B, T)
    p_y = torch.softmax(target_logits.double(), -1).gather(-1, tokens[..., None]).squeeze(-1)
    m = mask.double()
    r = (p_y > q_y).double().detach()                                     # r_t = 1[p_t(y_t) > q_t(y_t)]
    mean = (m * r).sum() / m.sum()
    std = ((m * (r - mean) ** 2).sum() / m.sum()).sqrt()                  # population std
    advantage = (r - mean) / (std + EPS)
    assert 0 < mean < 1  # the case exercises both rewards
    reference = -(m * advantage * q_y.log()).sum() / m.sum()
    reference.backward()
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(grad, draft64.grad.float(), atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------- gradients

def test_tvd_gradient_equals_policy_gradient_surrogate():
    draft_logits, target_logits, tokens, mask = random_case(seed=5)
    _, grad = loss_and_grad(tvd, draft_logits, target_logits, tokens, mask)
    # surrogate whose gradient is -sum_x q r grad log q, averaged over masked positions
    draft = draft_logits.detach().clone().requires_grad_(True)
    log_q = torch.log_softmax(draft[mask], -1)
    reward = (torch.softmax(target_logits[mask], -1) > log_q.exp()).float()
    surrogate = -((log_q.exp() * reward).detach() * log_q).sum() / mask.sum()
    surrogate.backward()
    torch.testing.assert_close(grad, draft.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["kld", "rkl", "jsd", "tvd"])
def test_closed_form_gradients_from_the_module_docstring(name):
    draft_logits, target_logits, tokens, mask = random_case(seed=6)
    _, grad = loss_and_grad(LOSSES[name], draft_logits, target_logits, tokens, mask)
    p, q = probs64(target_logits, mask), probs64(draft_logits, mask)
    if name == "kld":
        expected = q - p
    elif name == "rkl":
        log_ratio = (q / p).log()
        expected = q * (log_ratio - (q * log_ratio).sum(-1, keepdim=True))
    elif name == "jsd":
        log_ratio = (2 * q / (p + q)).log()  # log(q/m)
        expected = 0.5 * q * (log_ratio - (q * log_ratio).sum(-1, keepdim=True))
    else:
        r = (p > q).double()
        expected = -q * (r - (q * r).sum(-1, keepdim=True))
    full = torch.zeros_like(grad, dtype=torch.float64)
    full[mask] = expected / mask.sum()
    torch.testing.assert_close(grad, full.float(), atol=1e-6, rtol=1e-4)


def test_tvdpp_matches_direct_transcription_of_paper_formula():
    """PAPER.md 3.4 written out in float64: r, mu_t, sigma_t, A_t under q_t, per position."""
    draft_logits, target_logits, tokens, mask = random_case(batch=4, time=8, seed=4)
    value, grad = loss_and_grad(tvdpp, draft_logits, target_logits, tokens, mask)
    draft64 = draft_logits.double().requires_grad_(True)
    q = torch.softmax(draft64, -1)
    p = torch.softmax(target_logits.double(), -1)
    r = (p > q).double().detach()                                         # r_t(x) = 1[p_t(x) > q_t(x)]
    mu = (q * r).sum(-1, keepdim=True).detach()
    sigma = (q * (r - mu) ** 2).sum(-1, keepdim=True).sqrt().detach()
    advantage = (r - mu) / (sigma + EPS)
    per_position = -((q * advantage).detach() * q.log()).sum(-1)         # (B, T)
    reference = (per_position * mask).sum() / mask.sum()
    reference.backward()
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(grad, draft64.grad.float(), atol=1e-6, rtol=1e-4)


def test_lk_losses_match_direct_transcription_of_paper_formula():
    """PAPER.md 3.5 in float64: lk = mean -log alpha_t; lk_hybrid = lambda KL + (1 - lambda) TVD,
    lambda = exp(-eta stopgrad(mean alpha))."""
    draft_logits, target_logits, tokens, mask = random_case(batch=4, time=8, seed=3)
    for loss_fn in (lk, lk_hybrid):
        value, grad = loss_and_grad(loss_fn, draft_logits, target_logits, tokens, mask)
        draft64 = draft_logits.double().requires_grad_(True)
        q, p = torch.softmax(draft64[mask], -1), torch.softmax(target_logits[mask].double(), -1)
        alpha = torch.minimum(p, q).sum(-1)
        if loss_fn is lk:
            reference = -alpha.log().mean()
        else:
            weight = torch.exp(-LK_ETA * alpha.mean().detach())
            kl = (p * (p / q).log()).sum(-1).mean()
            reference = weight * kl + (1 - weight) * (1 - alpha).mean()
        reference.backward()
        assert value.item() == pytest.approx(reference.item(), rel=1e-5), loss_fn.__name__
        torch.testing.assert_close(grad, draft64.grad.float(), atol=1e-6, rtol=1e-4)


def test_lk_gradient_is_grad_tvd_over_alpha_per_position():
    draft_logits, target_logits, tokens, mask = random_case(seed=7)
    _, grad_lk = loss_and_grad(lk, draft_logits, target_logits, tokens, mask)
    _, grad_tvd = loss_and_grad(tvd, draft_logits, target_logits, tokens, mask)
    alpha = torch.minimum(probs64(target_logits, mask), probs64(draft_logits, mask)).sum(-1, keepdim=True)
    torch.testing.assert_close(grad_lk[mask], (grad_tvd[mask] / alpha).float(), atol=1e-6, rtol=1e-4)


def test_lk_hybrid_leans_on_kl_far_from_the_target_and_on_tvd_near_it():
    draft_logits, target_logits, tokens, mask = random_case(seed=7)
    for target, share_of_kl in ((target_logits, "large"), (draft_logits + 0.01 * target_logits, "small")):
        _, grad = loss_and_grad(lk_hybrid, draft_logits, target, tokens, mask)
        _, grad_kld = loss_and_grad(kld, draft_logits, target, tokens, mask)
        _, grad_tvd = loss_and_grad(tvd, draft_logits, target, tokens, mask)
        alpha = torch.minimum(probs64(target, mask), probs64(draft_logits, mask)).sum(-1).mean()
        weight = math.exp(-LK_ETA * float(alpha))                        # lambda
        torch.testing.assert_close(grad, (weight * grad_kld + (1 - weight) * grad_tvd), atol=1e-6, rtol=1e-4)
        assert (weight > 0.1) if share_of_kl == "large" else (weight < 0.06)


def test_tvdpp_gradient_is_grad_tvd_divided_by_the_per_position_std():
    draft_logits, target_logits, tokens, mask = random_case(seed=7)
    _, grad_exact = loss_and_grad(tvdpp, draft_logits, target_logits, tokens, mask)
    _, grad_tvd = loss_and_grad(tvd, draft_logits, target_logits, tokens, mask)
    p, q = probs64(target_logits, mask), probs64(draft_logits, mask)
    mass_under_estimated = (q * (p > q)).sum(-1, keepdim=True)       # E_q[r] for binary r
    std = (mass_under_estimated * (1 - mass_under_estimated)).sqrt()  # std_q[r]
    expected = (grad_tvd[mask] / (std + EPS)).float()
    torch.testing.assert_close(grad_exact[mask], expected, atol=1e-6, rtol=1e-4)
    cosine = F.cosine_similarity(grad_exact[mask], grad_tvd[mask], dim=-1)
    assert torch.all(cosine > 1 - 1e-5)  # parallel per position


def test_onpolicy_average_gradient_points_along_grad_tvd_unlike_the_data_token_variant():
    draft_logits, target_logits, tokens, mask = random_case(batch=2, time=8, vocab=6, seed=8)
    _, grad_tvd = loss_and_grad(tvd, draft_logits, target_logits, tokens, mask)
    generator = torch.Generator().manual_seed(0)
    target_probs = torch.softmax(target_logits, -1).reshape(-1, 6)

    def summed_gradient(loss_fn, draw_tokens, samples):
        draft = draft_logits.clone().requires_grad_(True)
        for _ in range(samples):  # gradients accumulate in draft.grad
            loss_fn(draft, target_logits, draw_tokens(), mask, generator).backward()
        return draft.grad.flatten()

    # on-policy: y ~ q drawn inside the loss (the tokens argument is unused)
    grad_onpolicy = summed_gradient(tvdpp_onpolicy, lambda: tokens, samples=600)
    assert F.cosine_similarity(grad_onpolicy, grad_tvd.flatten(), dim=0) > 0.95
    # the data-token variant, with fresh data tokens y ~ p each time: it weights by p, not q
    draw_from_target = lambda: torch.multinomial(target_probs, 1, generator=generator).reshape(2, 8)
    grad_paper = summed_gradient(tvdpp_datatoken, draw_from_target, samples=300)
    assert F.cosine_similarity(grad_paper, grad_tvd.flatten(), dim=0) < 0.9


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_with_zero_gradient_when_draft_equals_target(name):
    draft_logits, _, tokens, mask = random_case(seed=9)
    value, grad = loss_and_grad(LOSSES[name], draft_logits, draft_logits.clone(), tokens, mask)
    assert abs(value.item()) < 1e-6 and grad.abs().max() < 1e-6
    if name.startswith("tvdpp"):
        # TVD++ aside: p == q makes every reward 0 (strict >), so every advantage is exactly 0
        assert value.item() == 0 and grad.abs().max() == 0


def test_tvdpp_datatoken_has_no_gradient_once_the_draft_underestimates_every_data_token():
    # documented behaviour, the reason the data-token reading of TVD++ stalls far from the target
    # (losses.py section 3, docs/findings.md): data tokens written by the target at low temperature are
    # its most likely tokens, a draft flatter than the target gives each of them less
    # probability (every reward 1), std(r) = 0, every advantage 0 -- however far q is from p.
    # KLD, TVD++ (exact, per position) and the LK losses still pull such a draft toward the
    # target: a small gradient step on any of them lowers its TVD.
    target_logits = 4 * random_case(seed=11)[1]                      # a sharp target
    draft_logits = 0.25 * target_logits                              # the same ranking, flatter
    tokens = target_logits.argmax(-1)                                 # greedy (T=0) data tokens
    mask = torch.ones(tokens.shape, dtype=torch.bool)
    assert tvd(draft_logits, target_logits, tokens, mask) > 0.3       # far from the target
    value, grad = loss_and_grad(tvdpp_datatoken, draft_logits, target_logits, tokens, mask)
    assert value.item() == 0 and grad.abs().max() == 0
    for other in (kld, tvdpp, lk, lk_hybrid):
        step = loss_and_grad(other, draft_logits, target_logits, tokens, mask)[1]
        moved = draft_logits - 0.5 * step / step.norm()
        assert tvd(moved, target_logits, tokens, mask) < tvd(draft_logits, target_logits, tokens, mask) - 1e-3


def test_tvdpp_datatoken_gradient_does_not_shrink_near_the_target():
    # documented behaviour: dividing by std(r) makes the step size scale free, unlike KL's q - p
    draft_logits, _, tokens, mask = random_case(seed=10)
    noise = torch.randn(draft_logits.shape, generator=torch.Generator().manual_seed(0))
    target_logits = draft_logits + 1e-3 * noise
    _, grad_tvdpp = loss_and_grad(tvdpp_datatoken, draft_logits, target_logits, tokens, mask)
    _, grad_kld = loss_and_grad(kld, draft_logits, target_logits, tokens, mask)
    assert grad_tvdpp.norm() > 100 * grad_kld.norm()


# ----------------------------------------------------------------------------- plumbing

@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_positions_influence_neither_value_nor_gradient(name):
    draft_logits, target_logits, tokens, mask = random_case(seed=11)
    value, grad = loss_and_grad(LOSSES[name], draft_logits, target_logits, tokens, mask)
    garbage_draft, garbage_target = draft_logits.clone(), target_logits.clone()
    garbage_tokens = tokens.clone()
    garbage_draft[~mask] = 1e30
    garbage_target[~mask] = -3e29
    garbage_tokens[~mask] = -100  # padding id: out of range, allowed where the mask is off
    garbage_value, garbage_grad = loss_and_grad(LOSSES[name], garbage_draft, garbage_target,
                                                garbage_tokens, mask)
    assert garbage_value.item() == pytest.approx(value.item(), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(garbage_grad, grad)
    assert garbage_grad[~mask].abs().max() == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_mask_none_on_the_selected_rows_equals_the_mask_on_the_whole_batch(name):
    """train.py hands the losses the masked rows alone, (1, N, V), with mask=None: the same value,
    and the same gradient on those rows, as the mask over the whole (B, T, V) batch."""
    draft_logits, target_logits, tokens, mask = random_case(seed=16)
    value, grad = loss_and_grad(LOSSES[name], draft_logits, target_logits, tokens, mask)
    rows_value, rows_grad = loss_and_grad(LOSSES[name], draft_logits[mask][None], target_logits[mask][None],
                                          tokens[mask][None], None)
    assert rows_value.item() == pytest.approx(value.item(), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(rows_grad[0], grad[mask])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_chunked_path_matches_one_shot(name):
    draft_logits, target_logits, tokens, mask = random_case(seed=12)
    vocab = draft_logits.shape[-1]
    one_shot = loss_and_grad(LOSSES[name], draft_logits, target_logits, tokens, mask, max_chunk_elems=None)
    for budget in (1, 3 * vocab, 4 * vocab + 1):  # 1 row per chunk, 3 rows, 4 rows (uneven split)
        value, grad = loss_and_grad(LOSSES[name], draft_logits, target_logits, tokens, mask,
                                    max_chunk_elems=budget)
        assert value.item() == pytest.approx(one_shot[0].item(), rel=1e-5, abs=1e-7)
        torch.testing.assert_close(grad, one_shot[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_autocast_computes_in_float32(name):
    draft_logits, target_logits, tokens, mask = random_case(seed=13)
    draft_bf16, target_bf16 = draft_logits.bfloat16(), target_logits.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, grad = loss_and_grad(LOSSES[name], draft_bf16, target_bf16, tokens, mask)
    reference, _ = loss_and_grad(LOSSES[name], draft_bf16.float(), target_bf16.float(), tokens, mask)
    assert value.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert value.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_mask_gives_a_differentiable_zero(name):
    draft_logits, target_logits, tokens, mask = random_case(seed=14)
    value, grad = loss_and_grad(LOSSES[name], draft_logits, target_logits, tokens, torch.zeros_like(mask))
    assert value.item() == 0 and value.dtype == torch.float32 and grad.abs().max() == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_target_receives_no_gradient(name):
    draft_logits, target_logits, tokens, mask = random_case(seed=15)
    draft_logits.requires_grad_(True)
    target_logits.requires_grad_(True)
    LOSSES[name](draft_logits, target_logits, tokens, mask).backward()
    assert target_logits.grad is None and draft_logits.grad is not None


def test_get_loss_accepts_the_cli_alias_and_rejects_unknown_names():
    assert get_loss("tvd++") is tvdpp and get_loss("kld") is kld
    valid = "valid names: kld, tvd, tvdpp, lk, lk_hybrid, rkl, jsd, tvdpp_datatoken, tvdpp_onpolicy, tvd"
    with pytest.raises(ValueError, match=valid):
        get_loss("nope")


def test_bad_inputs_raise_one_clear_error():
    draft_logits, target_logits, tokens, mask = random_case()
    with pytest.raises(ValueError, match="must both be"):
        tvd(draft_logits, target_logits[..., :-1], tokens, mask)
    with pytest.raises(ValueError, match="tokens and mask"):
        tvd(draft_logits, target_logits, tokens[:, :-1], mask)
    with pytest.raises(ValueError, match="tokens and mask"):
        tvd(draft_logits, target_logits, tokens[:, :-1], None)
    with pytest.raises(ValueError, match="mask.bool"):
        tvd(draft_logits, target_logits, tokens, mask.long())
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        tvdpp_datatoken(draft_logits, target_logits, torch.full_like(tokens, 7), mask)
    with pytest.raises(ValueError, match="max_chunk_elems"):
        tvd(draft_logits, target_logits, tokens, mask, max_chunk_elems=0)
