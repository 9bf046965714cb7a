import math

import pytest
import torch

from saga.errors import ConfigError
from saga.models import AttentionPooler, MeanPooler, build_pooler

TOKENS = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                       [[-1.0, 0.0], [5.0, 5.0], [2.0, -2.0]]])
MASK = torch.tensor([[True, True, False], [True, True, True]])


def test_mean_pooler_hand_computed():
    out = MeanPooler()(TOKENS, MASK)
    assert torch.allclose(out.embedding, torch.tensor([[2.0, 3.0], [2.0, 1.0]]))
    assert out.attention is None
    assert list(MeanPooler().parameters()) == []


def test_mean_pooler_empty_row_is_zero():
    out = MeanPooler()(TOKENS, torch.tensor([[False] * 3, [True] * 3]))
    assert torch.equal(out.embedding[0], torch.zeros(2))


def test_attention_pooler_starts_as_mean_pooling():
    pooler = AttentionPooler(2)
    out = pooler(TOKENS, MASK)
    assert torch.allclose(out.attention, torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    assert torch.allclose(out.embedding, MeanPooler()(TOKENS, MASK).embedding)


def test_attention_pooler_hand_computed_two_heads():
    pooler = AttentionPooler(2, num_heads=2)
    with torch.no_grad():
        pooler.norm.weight.fill_(1.0), pooler.norm.bias.zero_()
        pooler.key.weight.copy_(torch.eye(2)), pooler.key.bias.zero_()
        pooler.query.copy_(torch.tensor([[1.0], [-2.0]]))  # head 0 looks at channel 0, head 1 at channel 1
    tokens = torch.tensor([[[1.0, 3.0], [2.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    out = pooler(tokens, mask)
    # LayerNorm of (1, 3) and (2, 0): (-1, 1) and (1, -1) (eps aside). Head dim 1, so no scaling.
    # head 0 scores: -1, 1 -> softmax (1/(1+e^2), e^2/(1+e^2)); head 1 scores: -2, 2 -> (1/(1+e^4), e^4/(1+e^4))
    h0 = torch.tensor([1.0, math.e ** 2]) / (1 + math.e ** 2)
    h1 = torch.tensor([1.0, math.e ** 4]) / (1 + math.e ** 4)
    a = (h0 + h1) / 2
    assert torch.allclose(out.attention[0, :2], a, atol=1e-4) and out.attention[0, 2] == 0
    expected = a[0] * tokens[0, 0] + a[1] * tokens[0, 1]
    assert torch.allclose(out.embedding[0], expected, atol=1e-4)


def test_attention_sums_to_one_over_valid_tokens_and_is_zero_on_padding():
    torch.manual_seed(0)
    pooler = AttentionPooler(8, num_heads=4, embed_dim=5)
    torch.nn.init.normal_(pooler.query)
    tokens = torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    out = pooler(tokens, mask)
    assert out.embedding.shape == (3, 5) and out.attention.shape == (3, 6)
    assert torch.allclose(out.attention.sum(1), torch.ones(3))
    assert torch.all(out.attention[~mask] == 0) and torch.all(out.attention[mask] > 0)
    assert torch.allclose(out.attention[2, 0], torch.tensor(1.0))
    # padding content never matters
    noisy = tokens.clone()
    noisy[~mask] = 1e3
    assert torch.allclose(pooler(noisy, mask).embedding, out.embedding, atol=1e-5)


def test_attention_pooler_gradients_reach_query_key_and_tokens():
    torch.manual_seed(0)
    pooler = AttentionPooler(4, num_heads=2, embed_dim=3)
    tokens = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = pooler(tokens, mask)
    (out.embedding.square().sum() + (out.attention * torch.arange(5.0)).sum()).backward()
    assert pooler.query.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0


def test_build_pooler():
    assert isinstance(build_pooler("mean", 16), MeanPooler)
    pooler = build_pooler("attention", 16, num_heads=4, embed_dim=8)
    assert isinstance(pooler, AttentionPooler) and pooler.num_heads == 4
    with pytest.raises(ConfigError, match="unknown pooler"):
        build_pooler("max", 16)
    with pytest.raises(ConfigError, match="embed_dim"):
        build_pooler("mean", 16, embed_dim=8)
    with pytest.raises(ConfigError, match="divisible"):
        AttentionPooler(10, num_heads=3)
