"""Potential Field metric learning (Bhatnagar & Ahuja, CVPR 2025, arXiv 2405.18560): a RECONSTRUCTION.

There is no public code and the paper's exact normalisation was not found (docs/method.md, "L_DML"). What is known
and followed here: every embedding and K learnable proxies per class are charges; same-class charges attract with
a potential -1/d^alpha, other-class charges repel with +1/d^alpha within a radius delta; influence decays with
distance; training minimises the total energy. K = 15 proxies per class is the paper's CUB / Cars setting; the
embeddings are 512-d and L2-normalised.

Choices that are OURS (each a constructor argument):
  - distances are Euclidean between L2-normalised charges (embeddings and proxies), so d in [0, 2];
  - smoothing `eps` > 0: the potential is 1/(d + eps)^alpha, finite at d = 0 (two augmentations of one image);
  - energy normalisation: the potential is multiplied by eps^alpha, phi(d) = (1 + d / eps)^-alpha, so one pair's
    energy lies in [-1, 0] (attraction) or [0, 1] (repulsion) whatever eps and alpha;
  - the repulsion is shifted to vanish continuously at the radius, phi(d) - phi(delta) for d < delta and 0 beyond
    (the usual cut-off treatment of pair potentials in molecular dynamics), so no charge gets a jump in energy;
  - pairs are (batch embedding, any other charge): embedding-embedding and embedding-proxy; no proxy-proxy term
    (its same-class attraction would pull a class's K proxies onto each other, defeating their purpose of
    covering sub-populations; proxies move only by following the embeddings);
  - energy of each batch embedding z_i in the superposed field of all other charges, averaged over the batch:
        E = 1/B sum_i [ -w_att sum_{j same class} phi(d_ij) + w_rep sum_{j other class} [phi(d_ij) - phi(delta)]_+ ]
    Sums over charges (superposition, as in the paper), not means: with means the many other-class pairs dilute
    the repulsion and it needs a weight of ~10-50 to train (checked on a toy problem); with sums w_rep = 1 works.
    The scale grows with m - 1 + K (same-class charges per embedding): set the DML weight accordingly;
  - defaults alpha = 1, eps = 0.5, delta = 1.0 (cosine similarity 0.5), proxies drawn from a seeded normal.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from saga.losses.base import LossTerms, loss_terms
from saga.losses.dml import ProxyLoss


class PotentialField(ProxyLoss):
    """K proxies per training class; `forward(embeddings (B, D), labels (B,) dataset ids) -> LossTerms`.

    Diagnostics (per batch embedding): attraction (sum of same-class phi, higher = tighter classes), repulsion
    (sum of shifted other-class potentials, 0 when every other class is beyond the radius), frac_in_radius (share
    of other-class pairs inside the radius).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        num_proxies_per_class: int = 15,
        alpha: float = 1.0,
        eps: float = 0.5,
        radius: float = 1.0,
        attraction_weight: float = 1.0,
        repulsion_weight: float = 1.0,
        class_ids: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, class_ids)
        if num_proxies_per_class < 0 or alpha <= 0 or eps <= 0 or radius <= 0:
            raise ValueError("need num_proxies_per_class >= 0 and alpha, eps, radius > 0")
        self.alpha, self.eps, self.radius = alpha, eps, radius
        self.attraction_weight, self.repulsion_weight = attraction_weight, repulsion_weight
        generator = torch.Generator().manual_seed(seed)
        self.proxies = nn.Parameter(torch.randn(num_classes * num_proxies_per_class, embedding_size,
                                                generator=generator))
        # Proxy row r belongs to class r // K.
        self.register_buffer("proxy_rows", torch.arange(num_classes).repeat_interleave(num_proxies_per_class),
                             persistent=False)

    def proxy_parameters(self) -> Iterator[nn.Parameter]:
        yield self.proxies

    def potential(self, d: torch.Tensor) -> torch.Tensor:
        """phi(d) = eps^alpha / (d + eps)^alpha = (1 + d / eps)^-alpha: decays with distance, phi(0) = 1."""
        return (1.0 + d / self.eps) ** (-self.alpha)

    def compute(self, embeddings: torch.Tensor, rows: torch.Tensor) -> LossTerms:
        b = embeddings.shape[0]
        charges = F.normalize(torch.cat([embeddings, self.proxies.to(embeddings)]), dim=-1)
        charge_rows = torch.cat([rows, self.proxy_rows])
        z = charges[:b]
        # sqrt(2 - 2 cos) on the unit sphere; the clamp keeps sqrt differentiable at d = 0.
        d = (2.0 - 2.0 * z @ charges.T).clamp(min=1e-12).sqrt()
        not_self = torch.ones_like(d, dtype=torch.bool)
        not_self[:, :b].fill_diagonal_(False)
        same = (rows[:, None] == charge_rows[None, :]) & not_self
        other = rows[:, None] != charge_rows[None, :]

        phi = self.potential(d)
        # Attraction -phi (paper: -1/d^alpha) is lowest when same-class charges coincide.
        attraction = (phi * same).sum() / b
        # Repulsion +phi (paper: +1/d^alpha) inside the radius only, shifted to reach 0 at the radius.
        cutoff = self.potential(d.new_tensor(self.radius))
        repulsion = ((phi - cutoff).clamp(min=0) * other).sum() / b
        loss = -self.attraction_weight * attraction + self.repulsion_weight * repulsion
        in_radius = ((d < self.radius) & other).sum() / other.sum().clamp(min=1)
        return loss_terms(loss, attraction=attraction, repulsion=repulsion, frac_in_radius=in_radius)
