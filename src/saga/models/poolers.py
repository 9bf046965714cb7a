"""Poolers: an image's variable number of encoder tokens -> one embedding.

Both take padded tokens (B, T, D) and a (B, T) bool mask (True at real tokens; `EncoderOutput.padded()` gives
both) and return a `PoolerOutput`. The baselines use mean pooling (docs/method.md). SAGA's pooler is
`AttentionPooler`, whose weights over the tokens are what the L_KL term pulls towards the judge's attention over
the same tokens; its embedding is exactly the weighted sum under those weights, so the aligned distribution is
the one that makes the embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saga.errors import ConfigError
from saga.registry import Registry


@dataclass
class PoolerOutput:
    """embedding: (B, E), not normalised. attention: (B, T) pooling weights, each row summing to 1 over the real
    tokens and 0 at padding; None for poolers without learned attention."""

    embedding: Tensor
    attention: Tensor | None


class MeanPooler(nn.Module):
    """Masked mean of the tokens; no parameters. E = D. A row without real tokens pools to zeros."""

    def __init__(self, dim: int | None = None, *, num_heads: int = 1, embed_dim: int | None = None) -> None:
        super().__init__()
        if embed_dim is not None:
            raise ConfigError(f"pooler 'mean' has no projection; embed_dim must be unset, not {embed_dim}")
        self.dim = dim

    def spec(self) -> dict:
        """The constructor arguments, for a saved model to rebuild this pooler."""
        return {"name": "mean", "dim": self.dim, "num_heads": 1, "embed_dim": None}

    def forward(self, tokens: Tensor, mask: Tensor) -> PoolerOutput:
        weights = mask.to(tokens.dtype)
        total = (tokens * weights[..., None]).sum(1)
        return PoolerOutput(total / weights.sum(1, keepdim=True).clamp(min=1), None)


class AttentionPooler(nn.Module):
    """Learned-query attention pooling.

    Each of H heads scores every token with a learned query against a projected key,
        w_h = softmax_t(q_h . k_h(LN(x_t)) / sqrt(D / H))   over the real tokens,
    and the pooler's attention is the mean over heads, a = (1/H) sum_h w_h (one distribution per image, the shape
    of the judge's attention it is aligned to). The embedding is proj(sum_t a_t x_t): values are the tokens
    themselves, so the embedding stays a convex combination of encoder tokens and `attention` is exactly what
    produced it. The queries start at zero, i.e. uniform attention: the pooler starts out as mean pooling.
    proj is a linear map to `embed_dim`, or the identity when embed_dim is None (E = D).
    """

    def __init__(self, dim: int, *, num_heads: int = 1, embed_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"pooler: token width {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.embed_dim = dim, num_heads, embed_dim
        self.query = nn.Parameter(torch.zeros(num_heads, dim // num_heads))
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, embed_dim) if embed_dim is not None else nn.Identity()

    def spec(self) -> dict:
        """The constructor arguments, for a saved model to rebuild this pooler."""
        return {"name": "attention", "dim": self.dim, "num_heads": self.num_heads, "embed_dim": self.embed_dim}

    def forward(self, tokens: Tensor, mask: Tensor) -> PoolerOutput:
        b, t, d = tokens.shape
        keys = self.key(self.norm(tokens)).view(b, t, self.num_heads, d // self.num_heads)
        scores = torch.einsum("bthc,hc->bht", keys, self.query) / math.sqrt(d // self.num_heads)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        # A row with no real token would be all -inf (NaN after softmax); nan_to_num makes its weights zero.
        attention = torch.softmax(scores, dim=-1).nan_to_num(0.0).mean(1)
        pooled = torch.einsum("bt,btd->bd", attention, tokens)
        return PoolerOutput(self.proj(pooled), attention)


POOLERS: Registry[type[nn.Module]] = Registry("pooler")
POOLERS.register("mean", MeanPooler)
POOLERS.register("attention", AttentionPooler)


def build_pooler(name: str, dim: int, *, num_heads: int = 1, embed_dim: int | None = None) -> nn.Module:
    """A pooler by its registered name, for tokens of width `dim`."""
    return POOLERS.get(name)(dim, num_heads=num_heads, embed_dim=embed_dim)
