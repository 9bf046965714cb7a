"""GRPO advantages and loss against hand-computed numbers (TRL semantics, REFERENCE.md section 2)."""

import math

import pytest
import torch

from saga.losses.grpo import clipped_surrogate, group_advantages, grpo_loss, kl_k3

EPS = 1e-4


def test_group_advantages_unbiased_std_by_hand():
    # rewards [1, 0, 0, 1]: mean 0.5; unbiased std = sqrt((4 * 0.25) / 3) = sqrt(1/3) (torch.std, as in TRL).
    adv, stats = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    a = 0.5 / (math.sqrt(1 / 3) + EPS)
    assert torch.allclose(adv, torch.tensor([a, -a, -a, a]), atol=1e-6)
    assert stats["reward_mean"].item() == pytest.approx(0.5)
    assert stats["reward_std"].item() == pytest.approx(math.sqrt(1 / 3), rel=1e-6)
    assert stats["frac_reward_zero_std"].item() == 0.0


def test_zero_std_groups_get_zero_advantage_and_are_counted():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # (P, G) input
    adv, stats = group_advantages(rewards, group_size=3)
    assert adv.shape == (9,)
    assert torch.equal(adv[:6], torch.zeros(6))
    # last group: mean 1/3, unbiased std = sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    s = math.sqrt(1 / 3)
    assert torch.allclose(adv[6:], torch.tensor([(2 / 3) / (s + EPS), (-1 / 3) / (s + EPS), (-1 / 3) / (s + EPS)]))
    assert stats["frac_reward_zero_std"].item() == pytest.approx(2 / 3)


def test_batch_and_none_scaling_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # batch: group means 0.5 and 1; std of all 8 rewards (mean 0.75): sqrt((6 * 0.0625 + 2 * 0.5625) / 7)
    batch_std = math.sqrt(1.5 / 7)
    adv, stats = group_advantages(rewards, group_size=4, scale_rewards="batch")
    a = 0.5 / (batch_std + EPS)
    assert torch.allclose(adv, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]), atol=1e-6)
    assert stats["reward_std"].item() == pytest.approx(batch_std, rel=1e-6)
    assert stats["frac_reward_zero_std"].item() == pytest.approx(0.5)
    adv, _ = group_advantages(rewards, group_size=4, scale_rewards="none")
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), group_size=3)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), group_size=2, scale_rewards="global")


# A 2 x 3 example: sequence 0 has 2 completion tokens, sequence 1 has 1. On-policy with beta = 0 every token's
# loss is -A_i: tokens (-1, -1 | 0.5). Sum over active tokens = -1.5.
ADV = torch.tensor([1.0, -0.5])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])
LOGPS = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.8, 0.1, 0.3]]))


@pytest.mark.parametrize(("loss_type", "kwargs", "expected"), [
    ("grpo", {}, (-1.0 + 0.5) / 2),                               # mean of per-sequence means (-1, 0.5)
    ("bnpo", {}, -1.5 / 3),                                       # sum / 3 active tokens
    ("dr_grpo", {"max_completion_length": 4}, -1.5 / (2 * 4)),    # sum / (B * L_max)
    ("dapo", {}, -1.5 / 3),                                       # active tokens of the batch
])
def test_aggregations_by_hand(loss_type, kwargs, expected):
    out = grpo_loss(LOGPS.clone().requires_grad_(), ADV, MASK, loss_type=loss_type, **kwargs)
    assert out["loss"].item() == pytest.approx(expected)
    assert out["completion_length"].item() == pytest.approx(1.5)
    assert out["clip_ratio"].item() == 0.0


@pytest.mark.parametrize(("loss_type", "normaliser"), [
    ("grpo", torch.tensor([[2.0 * 2], [1.0 * 2]])),   # per-token 1 / (n_i * B)
    ("bnpo", torch.tensor([[3.0], [3.0]])),
    ("dr_grpo", torch.tensor([[8.0], [8.0]])),
])
def test_on_policy_gradient_is_advantage_times_grad_logp(loss_type, normaliser):
    logps = LOGPS.clone().requires_grad_()
    grpo_loss(logps, ADV, MASK, loss_type=loss_type, max_completion_length=4)["loss"].backward()
    expected = -ADV[:, None] * MASK / normaliser  # d(-rho A)/d logp with rho == 1
    assert torch.allclose(logps.grad, expected)


def test_clipping_of_the_surrogate():
    # rho = 1.5 and 0.5 on the two tokens of each sequence; eps 0.2 -> clip range [0.8, 1.2].
    old = torch.zeros(2, 2)
    logps = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[2.0], [-2.0]])
    per_token, low, high = clipped_surrogate(logps, old, adv, 0.2, 0.2)
    # A > 0: rho 1.5 clipped -> -1.2 A = -2.4 (no grad); rho 0.5 not clipped -> -0.5 A = -1.0 (grad -A rho = -1)
    # A < 0: rho 1.5 not clipped -> -1.5 A = 3.0 (grad -A rho = 3); rho 0.5 clipped -> -0.8 A = 1.6 (no grad)
    assert torch.allclose(per_token, torch.tensor([[-2.4, -1.0], [3.0, 1.6]]))
    per_token.sum().backward()
    assert torch.allclose(logps.grad, torch.tensor([[0.0, -1.0], [3.0, 0.0]]))
    assert high.tolist() == [[1.0, 0.0], [0.0, 0.0]] and low.tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_k3_value_zero_at_reference_and_added_with_beta():
    logps = torch.log(torch.tensor([[0.5, 0.25]]))
    assert torch.allclose(kl_k3(logps, logps), torch.zeros(1, 2))
    ref = logps + math.log(2.0)  # ref - logp = ln 2 -> k3 = 2 - ln 2 - 1
    k3 = 1 - math.log(2.0)
    assert torch.allclose(kl_k3(logps, ref), torch.full((1, 2), k3))
    out = grpo_loss(logps, torch.tensor([0.0]), torch.ones(1, 2), ref_logps=ref, beta=0.1)
    assert out["loss"].item() == pytest.approx(0.1 * k3)
    assert out["kl"].item() == pytest.approx(k3)


def test_beta_without_reference_and_dr_grpo_without_length_are_errors():
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(LOGPS, ADV, MASK, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(LOGPS, ADV, MASK, loss_type="dr_grpo")


def test_diagnostics_are_detached():
    out = grpo_loss(LOGPS.clone().requires_grad_(), ADV, MASK, ref_logps=LOGPS, beta=0.1)
    assert out["kl"].item() == 0.0
    assert out["loss"].requires_grad
    assert all(not v.requires_grad and v.dim() == 0 for k, v in out.items() if k != "loss")


def test_padding_values_cannot_poison_loss_or_gradient():
    logps = LOGPS.clone()
    logps[~MASK.bool()] = float("-inf")
    logps.requires_grad_()
    ref = torch.full_like(LOGPS, float("nan"))
    ref[MASK.bool()] = LOGPS[MASK.bool()]
    out = grpo_loss(logps, ADV, MASK, loss_type="bnpo", ref_logps=ref, beta=0.1)
    out["loss"].backward()
    assert out["loss"].item() == pytest.approx(-1.5 / 3)
    assert torch.isfinite(logps.grad).all() and torch.equal(logps.grad[~MASK.bool()], torch.zeros(3))


def test_a_nan_reward_is_left_out_of_its_group_and_gets_advantage_zero():
    # Group 1: rewards 1, 0, NaN -> mean 0.5 and std sqrt(0.5) over the two valid ones; group 2 is untouched.
    rewards = torch.tensor([1.0, 0.0, float("nan"), 1.0, 0.0, 0.0])
    adv, stats = group_advantages(rewards, 3)
    std1 = math.sqrt(0.5)
    assert torch.allclose(adv[:3], torch.tensor([0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), 0.0]))
    expected2, _ = group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3)
    assert torch.allclose(adv[3:], expected2)
    assert stats["reward_mean"].item() == pytest.approx(2 / 5)
    assert torch.isfinite(adv).all()
    # a group whose only valid reward is one: std 0, advantage 0 everywhere, counted as all equal
    adv, stats = group_advantages(torch.tensor([float("nan"), 1.0, float("nan")]), 3)
    assert adv.tolist() == [0.0, 0.0, 0.0] and stats["frac_reward_zero_std"].item() == 1.0
