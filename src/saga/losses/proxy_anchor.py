"""Proxy Anchor loss (Kim et al., CVPR 2020), via pytorch-metric-learning (docs/method.md, "L_DML").

    loss = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
         + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))      (Kim et al. eq. 4)

s = cosine similarity, P+ = proxies with a positive in the batch, alpha = 32, delta (`margin`) = 0.1. The formula is
pytorch_metric_learning.losses.ProxyAnchorLoss; this wrapper adds the class-id remapping, a seeded proxy
initialisation and the proxy parameter group (trained with 100x the learning rate in the paper).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyAnchorLoss
from torch import nn

from saga.losses.base import LossTerms, loss_terms
from saga.losses.dml import ProxyLoss


class ProxyAnchor(ProxyLoss):
    """One proxy per training class; `forward(embeddings (B, D), labels (B,) dataset ids) -> LossTerms`.

    Diagnostics: pos_sim (mean cosine of an embedding to its own class proxy), neg_sim (to the other proxies).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        margin: float = 0.1,
        alpha: float = 32.0,
        class_ids: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, class_ids)
        self.loss_fn = ProxyAnchorLoss(num_classes, embedding_size, margin=margin, alpha=alpha)
        # Same initialisation as the library and the paper (kaiming normal, fan_out), but from our own generator:
        # the library draws from torch's global RNG, which would tie the proxies to unrelated seeding.
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            nn.init.kaiming_normal_(self.loss_fn.proxies, mode="fan_out", generator=generator)

    @property
    def proxies(self) -> nn.Parameter:
        return self.loss_fn.proxies

    def proxy_parameters(self) -> Iterator[nn.Parameter]:
        yield self.loss_fn.proxies

    def compute(self, embeddings: torch.Tensor, rows: torch.Tensor) -> LossTerms:
        # The library casts its proxies *in place* to the embeddings' dtype; the base class feeds float32 so that
        # fp32 proxies (and their optimizer state) are never silently turned into bf16.
        loss = self.loss_fn(embeddings, rows)
        with torch.no_grad():
            cos = F.normalize(embeddings, dim=-1) @ F.normalize(self.proxies, dim=-1).T
            own = F.one_hot(rows, self.num_classes).bool()
            neg_sim = cos[~own].mean() if self.num_classes > 1 else cos.new_zeros(())
        return loss_terms(loss, pos_sim=cos[own].mean(), neg_sim=neg_sim)
