"""Potential Field (our reconstruction): hand-computed energies, force directions, cut-off, learnable proxies."""

import math

import pytest
import torch
import torch.nn.functional as F

from saga.losses.potential_field import PotentialField


def phi(d, eps, alpha=1.0):
    return (1 + d / eps) ** (-alpha)


def test_three_points_by_hand():
    loss = PotentialField(2, 2, num_proxies_per_class=0, eps=0.5, radius=1.5)
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]])  # unit directions (1,0), (0,1), (-1,0)
    out = loss(x, torch.tensor([0, 0, 1]))
    r2 = math.sqrt(2)
    # same class: (0,1) and (1,0); other class: d(0,2) = 2 beyond the radius, d(1,2) = sqrt(2) inside, both ways
    attraction = 2 * phi(r2, 0.5) / 3
    repulsion = 2 * (phi(r2, 0.5) - phi(1.5, 0.5)) / 3
    assert out["loss"].item() == pytest.approx(-attraction + repulsion, rel=1e-5)
    assert out["attraction"].item() == pytest.approx(attraction, rel=1e-5)
    assert out["repulsion"].item() == pytest.approx(repulsion, rel=1e-5)
    assert out["frac_in_radius"].item() == pytest.approx(0.5)


def test_embedding_and_proxies_by_hand_with_alpha_2():
    loss = PotentialField(2, 2, num_proxies_per_class=1, alpha=2.0, eps=0.5, radius=1.0)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[0.0, 2.0], [1.0, 1.0]]))  # class 0 proxy, class 1 proxy
    out = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    d_same, d_other = math.sqrt(2), math.sqrt(2 - math.sqrt(2))  # chord lengths at 90 and 45 degrees
    expected = -phi(d_same, 0.5, 2) + (phi(d_other, 0.5, 2) - phi(1.0, 0.5, 2))
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def _step(x, labels, loss, lr=0.05):
    x = x.clone().requires_grad_()
    loss(x, labels)["loss"].backward()
    return (x - lr * x.grad).detach()


def test_same_class_attract_and_other_classes_repel_inside_radius():
    loss = PotentialField(2, 2, num_proxies_per_class=0, radius=1.5)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 90 degrees apart, d = sqrt(2) < radius
    cos = lambda z: F.cosine_similarity(z[0], z[1], dim=0).item()  # noqa: E731
    assert cos(_step(x, torch.tensor([0, 0]), loss)) > cos(x)
    assert cos(_step(x, torch.tensor([0, 1]), loss)) < cos(x)
    # moving a same-class point towards its partner lowers the energy; towards another class raises it
    closer = torch.tensor([[1.0, 0.0], [0.3, 1.0]])
    assert loss(closer, torch.tensor([0, 0]))["loss"] < loss(x, torch.tensor([0, 0]))["loss"]
    assert loss(closer, torch.tensor([0, 1]))["loss"] > loss(x, torch.tensor([0, 1]))["loss"]


def test_repulsion_is_zero_beyond_the_radius():
    loss = PotentialField(2, 2, num_proxies_per_class=0, radius=1.0)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)  # d = sqrt(2) > 1
    out = loss(x, torch.tensor([0, 1]))
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and out["frac_in_radius"].item() == 0.0
    assert torch.equal(x.grad, torch.zeros(2, 2))


def test_coincident_points_are_finite():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    out = PotentialField(1, 2, num_proxies_per_class=0)(x, torch.tensor([0, 0]))
    out["loss"].backward()
    assert out["loss"].item() == pytest.approx(-1.0, rel=1e-5)  # phi(0) = 1, two directed pairs over B = 2
    assert torch.isfinite(x.grad).all()


def test_proxies_are_learnable():
    loss = PotentialField(3, 4, num_proxies_per_class=5, seed=0)
    (proxies,) = loss.proxy_parameters()
    assert proxies is loss.proxies and proxies.shape == (15, 4) and proxies.requires_grad
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    loss(x, torch.tensor([0, 0, 1, 1, 2, 2]))["loss"].backward()
    assert proxies.grad.abs().sum() > 0


def test_training_separates_classes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 8, generator=g).requires_grad_()
    labels = torch.arange(3).repeat_interleave(4)
    loss = PotentialField(3, 8, num_proxies_per_class=2, seed=0)
    sims = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T
    sims.fill_diagonal_(-2)
    assert not torch.equal(labels[sims.argmax(1)], labels)  # random start: some neighbours of other classes
    first = loss(x, labels)["loss"].item()
    params = [x, loss.proxies]
    for _ in range(100):  # plain gradient descent (torch.optim's first use costs ~1 s of imports)
        grads = torch.autograd.grad(loss(x, labels)["loss"], params)
        with torch.no_grad():
            for p, grad in zip(params, grads):
                p -= 2.0 * grad
    assert loss(x, labels)["loss"].item() < first
    sims = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T
    sims.fill_diagonal_(-2)
    assert torch.equal(labels[sims.argmax(1)], labels)  # now every point's nearest neighbour is of its class
