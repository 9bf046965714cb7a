"""InfoNCE with Explicit Gradient Amplification (saga.losses.infonce) against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from saga.losses import DML_LOSSES, build_dml_loss, infonce_from_similarity

SIM = [[1.0, 0.8, 0.3, 0.9],
       [0.8, 1.0, -0.2, 0.1],
       [0.3, -0.2, 1.0, 0.5],
       [0.9, 0.1, 0.5, 1.0]]
LABELS = [0, 0, 1, 1]  # pairs (0, 1), (1, 0), (2, 3), (3, 2); each anchor has two negatives


def _by_hand(tau: float, a: float) -> tuple[float, list[list[float]]]:
    """Loss and d loss / d sim with scalar arithmetic: one InfoNCE term per (anchor, positive) pair; a negative's
    gradient share is scaled by 1 + a * sigmoid((s_in - s_ip) / tau)."""
    pairs = [(i, p) for i in range(4) for p in range(4) if i != p and LABELS[i] == LABELS[p]]
    loss, grad = 0.0, [[0.0] * 4 for _ in range(4)]
    for i, p in pairs:
        negatives = [n for n in range(4) if LABELS[n] != LABELS[i]]
        z = math.exp(SIM[i][p] / tau) + sum(math.exp(SIM[i][n] / tau) for n in negatives)
        loss += (-SIM[i][p] / tau + math.log(z)) / len(pairs)
        grad[i][p] += (math.exp(SIM[i][p] / tau) / z - 1) / tau / len(pairs)
        for n in negatives:
            hardness = 1 / (1 + math.exp(-(SIM[i][n] - SIM[i][p]) / tau))
            grad[i][n] += (1 + a * hardness) * math.exp(SIM[i][n] / tau) / z / tau / len(pairs)
    return loss, grad


@pytest.mark.parametrize("tau, a", [(0.5, 1.0), (0.1, 3.0), (0.5, 0.0)])
def test_loss_and_gradient_match_the_hand_computation(tau, a):
    sim = torch.tensor(SIM, dtype=torch.float64, requires_grad=True)
    terms = infonce_from_similarity(sim, torch.tensor(LABELS), temperature=tau, amplification=a)
    terms["loss"].backward()
    loss, grad = _by_hand(tau, a)
    assert terms["loss"].item() == pytest.approx(loss, rel=1e-12)
    torch.testing.assert_close(sim.grad, torch.tensor(grad, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    # the diagnostics: mean positive / negative cosine; anchor 0's negative 3 (0.9) beats its positive (0.8), and
    # anchor 3's negative 0 (0.9) beats its positive (0.5): 2 of the 8 (anchor, positive, negative) triples
    assert float(terms["pos_sim"]) == pytest.approx((0.8 + 0.8 + 0.5 + 0.5) / 4)
    assert float(terms["neg_sim"]) == pytest.approx((0.3 + 0.9 - 0.2 + 0.1) * 2 / 8)
    assert float(terms["violations"]) == pytest.approx(2 / 8)


def test_amplification_zero_is_plain_infonce_to_the_bit():
    torch.manual_seed(0)
    x = torch.randn(8, 16, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

    def run(a):
        e = x.clone().requires_grad_(True)
        z = F.normalize(e, dim=-1)
        loss = infonce_from_similarity(z @ z.T, labels, temperature=0.05, amplification=a)["loss"]
        loss.backward()
        return loss.detach(), e.grad

    plain_loss, plain_grad = run(0.0)
    # plain InfoNCE written out: cross-entropy over [positive, negatives] per (anchor, positive) pair
    e = x.clone().requires_grad_(True)
    z = F.normalize(e, dim=-1)
    s = z @ z.T
    rows = []
    for i in range(8):
        for p in range(8):
            if p != i and labels[p] == labels[i]:
                rows.append(torch.cat([s[i, p:p + 1], s[i][labels != labels[i]]]) / 0.05)
    reference = F.cross_entropy(torch.stack(rows), torch.zeros(len(rows), dtype=torch.long))
    reference.backward()
    assert plain_loss.item() == pytest.approx(reference.item(), rel=1e-14)
    torch.testing.assert_close(plain_grad, e.grad, rtol=1e-12, atol=1e-14)
    # EGA leaves the loss value as it is and only scales gradients: same value, larger gradient on the embeddings
    amplified_loss, amplified_grad = run(1.0)
    assert torch.equal(amplified_loss, plain_loss)
    assert not torch.allclose(amplified_grad, plain_grad)


def test_the_dml_loss_wraps_it_for_training():
    assert "infonce" in DML_LOSSES
    loss = build_dml_loss("infonce", 3, 4, class_ids=[10, 11, 12], temperature=0.1, amplification=2.0)
    assert list(loss.parameters()) == [] and list(loss.proxy_parameters()) == []
    e = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([10, 10, 11, 11, 12, 12])
    terms = loss(e, labels)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and e.grad.abs().sum() > 0
    assert 1.0 <= float(terms["gain"]) <= 3.0
    z = F.normalize(e.detach(), dim=-1)
    expected = infonce_from_similarity(z @ z.T, torch.tensor([0, 0, 1, 1, 2, 2]), temperature=0.1,
                                       amplification=2.0)["loss"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="at least two images of one class"):
        loss(e[:3], torch.tensor([10, 11, 12]))  # no positive pair
