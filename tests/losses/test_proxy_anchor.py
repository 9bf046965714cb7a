"""Proxy Anchor: the library wrapper against the REFERENCE.md section 4 formula and a hand-computed value."""

import math

import pytest
import torch
import torch.nn.functional as F

from saga.errors import DataError
from saga.losses.proxy_anchor import ProxyAnchor


def reference_proxy_anchor(x, labels, proxies, alpha, delta):
    """Kim et al. 2020 eq. 4 written out with loops over proxies (REFERENCE.md section 4)."""
    s = F.normalize(x, dim=-1) @ F.normalize(proxies, dim=-1).T
    pos_terms, neg_terms = [], []
    for p in range(proxies.shape[0]):
        pos, neg = s[labels == p, p], s[labels != p, p]
        if len(pos):
            pos_terms.append(torch.log1p(torch.exp(-alpha * (pos - delta)).sum()))
        neg_terms.append(torch.log1p(torch.exp(alpha * (neg + delta)).sum()))
    return sum(pos_terms) / len(pos_terms) + sum(neg_terms) / proxies.shape[0]


def test_matches_reference_formula():
    g = torch.Generator().manual_seed(0)
    loss = ProxyAnchor(5, 8, seed=3)
    x = torch.randn(12, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2])  # class 3 and 4 have no positives
    expected = reference_proxy_anchor(x, labels, loss.proxies.detach(), alpha=32.0, delta=0.1)
    assert loss(x, labels)["loss"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)


def test_two_proxy_example_by_hand():
    loss = ProxyAnchor(2, 2, alpha=2.0, margin=0.1)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # cosine ignores the norm
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # x0 (class 0) on p0; x1 (class 1) at 45 degrees
    c = math.cos(math.pi / 4)
    pos = (math.log(1 + math.exp(-2 * (1 - 0.1))) + math.log(1 + math.exp(-2 * (c - 0.1)))) / 2
    neg = (math.log(1 + math.exp(2 * (c + 0.1))) + math.log(1 + math.exp(2 * (0 + 0.1)))) / 2
    out = loss(x, torch.tensor([0, 1]))
    assert out["loss"].item() == pytest.approx(pos + neg, rel=1e-6)
    assert out["pos_sim"].item() == pytest.approx((1 + c) / 2, rel=1e-6)
    assert out["neg_sim"].item() == pytest.approx((0 + c) / 2, rel=1e-6)


def test_labels_are_remapped_from_dataset_ids():
    by_id = ProxyAnchor(2, 4, class_ids=[105, 100], seed=1)  # sorted: 100 -> row 0, 105 -> row 1
    by_row = ProxyAnchor(2, 4, seed=1)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    a = by_id(x, torch.tensor([100, 105, 105, 100]))["loss"]
    b = by_row(x, torch.tensor([0, 1, 1, 0]))["loss"]
    assert a.item() == pytest.approx(b.item())
    with pytest.raises(DataError, match=r"\[101\]"):
        by_id(x, torch.tensor([100, 101, 105, 100]))


def test_proxies_are_their_own_parameter_group_and_learn():
    loss = ProxyAnchor(3, 4, seed=0)
    params = list(loss.proxy_parameters())
    assert len(params) == 1 and params[0] is loss.proxies and params[0].requires_grad
    x = torch.randn(6, 4, requires_grad=True, generator=torch.Generator().manual_seed(0))
    loss(x, torch.tensor([0, 0, 1, 1, 2, 2]))["loss"].backward()
    assert loss.proxies.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_seeded_initialisation_and_dtype_kept():
    assert torch.equal(ProxyAnchor(3, 4, seed=7).proxies, ProxyAnchor(3, 4, seed=7).proxies)
    assert not torch.equal(ProxyAnchor(3, 4, seed=7).proxies, ProxyAnchor(3, 4, seed=8).proxies)
    loss = ProxyAnchor(3, 4)
    loss(torch.randn(3, 4).bfloat16(), torch.tensor([0, 1, 2]))
    assert loss.proxies.dtype == torch.float32  # the library would have cast them to bf16 in place
