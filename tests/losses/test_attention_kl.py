"""Attention-alignment KL against hand-computed values (REFERENCE.md section 1, L_KL)."""

import math

import pytest
import torch

from saga.losses.attention_kl import attention_kl


def test_forward_kl_by_hand_with_unnormalised_judge():
    # judge weights (2, 1, 1) -> q = (0.5, 0.25, 0.25); pooler p = (0.25, 0.25, 0.5)
    judge = torch.tensor([[2.0, 1.0, 1.0]])
    pooler = torch.tensor([[0.25, 0.25, 0.5]], requires_grad=True)
    out = attention_kl(pooler, judge, torch.ones(1, 3, dtype=torch.bool))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(1.0) + 0.25 * math.log(0.25 / 0.5)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    q_entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert out["judge_entropy"].item() == pytest.approx(q_entropy, rel=1e-5)
    assert out["pooler_entropy"].item() == pytest.approx(q_entropy, rel=1e-5)  # same multiset of values


def test_reverse_direction_by_hand():
    judge = torch.tensor([[2.0, 1.0, 1.0]])
    pooler = torch.tensor([[0.25, 0.25, 0.5]])
    out = attention_kl(pooler, judge, torch.ones(1, 3, dtype=torch.bool), direction="reverse")
    expected = 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(1.0) + 0.5 * math.log(0.5 / 0.25)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_zero_when_equal_and_padding_ignored():
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    judge = torch.tensor([[3.0, 1.0, 50.0, 7.0], [1.0, 1.0, 2.0, 9.0]])
    # pooler equal to the judge on valid tokens after renormalisation, arbitrary on padding
    pooler = torch.tensor([[0.75, 0.25, 0.9, 0.1], [0.25, 0.25, 0.5, 0.6]])
    assert attention_kl(pooler, judge, mask)["loss"].item() == pytest.approx(0.0, abs=1e-6)
    # changing padded positions on either side changes nothing
    judge2, pooler2 = judge.clone(), pooler.clone()
    judge2[~mask], pooler2[~mask] = float("nan"), float("inf")
    assert attention_kl(pooler2, judge2, mask)["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_batch_mean_over_rows_with_a_target():
    mask = torch.ones(3, 2, dtype=torch.bool)
    judge = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])  # row 1 has no judge mass: left out
    pooler = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.5, 0.5]])
    out = attention_kl(pooler, judge, mask)
    assert out["loss"].item() == pytest.approx((math.log(2.0) + 0.0) / 2, rel=1e-5)


def test_gradient_only_to_pooler():
    logits = torch.tensor([[0.1, -0.3, 0.7]], requires_grad=True)
    judge = torch.tensor([[0.2, 0.5, 0.3]], requires_grad=True)
    out = attention_kl(logits.softmax(-1), judge, torch.ones(1, 3, dtype=torch.bool))
    out["loss"].backward()
    assert judge.grad is None
    # forward KL through a softmax: d/dlogits = p - q
    assert torch.allclose(logits.grad, logits.softmax(-1).detach() - torch.tensor([[0.2, 0.5, 0.3]]), atol=1e-6)


def test_bad_direction_and_shapes():
    x = torch.ones(1, 2)
    with pytest.raises(ValueError, match="direction"):
        attention_kl(x, x, x.bool(), direction="both")
    with pytest.raises(ValueError, match="shapes"):
        attention_kl(x, torch.ones(1, 3), x.bool())
