"""InfoNCE over the m-per-class batch, with Explicit Gradient Amplification of hard negatives (docs/method.md,
"AGFF-Embed").

Every (anchor i, positive p) pair of the batch (same class, p != i) is one InfoNCE term against the anchor's
in-batch negatives N(i) (every image of another class); s is cosine similarity, tau the temperature:

    L_ip = -log( exp(s_ip / tau) / (exp(s_ip / tau) + sum_{n in N(i)} exp(s_in / tau)) ),    L = mean_{(i, p)} L_ip

EGA (arXiv 2506.02020) amplifies the gradient of hard negatives without changing the data. Its exact reweighting
was not available to us; this is OUR RECONSTRUCTION, in the paper's terms (a relative, similarity-based hardness
scales the negative's share of the gradient):

    h_inp = sigmoid((s_in - s_ip) / tau)             hardness of n relative to the positive, in (0, 1), detached
    dL_ip / ds_in = (1 + a * h_inp) * softmax_n / tau   instead of softmax_n / tau

The loss value is InfoNCE's; only the backward pass differs (`s.detach() + g * (s - s.detach())`), and a = 0 is
plain InfoNCE to the bit. h is the probability that n outranks p in a two-way InfoNCE: about 0 for an easy
negative, 1/2 at a tie, about 1 for a negative closer than the positive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saga.losses.base import LossTerms, loss_terms
from saga.losses.dml import ProxyLoss


def infonce_from_similarity(sim: Tensor, labels: Tensor, *, temperature: float = 0.02,
                            amplification: float = 0.0) -> LossTerms:
    """InfoNCE with EGA (module docstring) from a (B, B) similarity matrix and (B,) labels.

    Diagnostics: pos_sim, neg_sim (mean over pairs / negatives), violations (share of (anchor, positive, negative)
    triples where the negative is the closer one) and gain (mean gradient factor 1 + a * h over those triples).
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or labels.shape != sim.shape[:1]:
        raise ValueError(f"expected a (B, B) similarity matrix and (B,) labels, got {tuple(sim.shape)} and "
                         f"{tuple(labels.shape)}")
    labels = labels.to(sim.device)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=sim.device)
    anchor, positive = (same & ~eye).nonzero(as_tuple=True)
    if anchor.numel() == 0:
        raise ValueError("InfoNCE needs at least two images of one class in the batch (dml.m_per_class >= 2)")
    s_pos = sim[anchor, positive]                       # (P,)
    s_neg = sim[anchor]                                 # (P, B): row of the anchor, masked to its negatives below
    negative = ~same[anchor]
    hardness = torch.sigmoid((s_neg - s_pos[:, None]) / temperature).detach()
    gain = 1.0 + amplification * hardness
    if amplification:  # value unchanged, gradient x gain (explicit amplification, docs/method.md, "AGFF-Embed")
        s_neg = s_neg.detach() + gain * (s_neg - s_neg.detach())
    logits = torch.cat([s_pos[:, None], s_neg.masked_fill(~negative, float("-inf"))], dim=1) / temperature
    loss = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    with torch.no_grad():
        triples = negative.sum().clamp(min=1)
        violations = ((sim[anchor] > s_pos[:, None]) & negative).sum() / triples
        mean_gain = (gain * negative).sum() / triples
        neg_sim = sim[~same].mean() if (~same).any() else sim.new_zeros(())
    return loss_terms(loss, pos_sim=s_pos.mean(), neg_sim=neg_sim, violations=violations, gain=mean_gain)


class InfoNCE(ProxyLoss):
    """InfoNCE with EGA on L2-normalised embeddings, as a DML loss (`dml.loss: infonce`, AGFF-Embed's default).

    It has no proxies; the base class still checks that every label is a training class. temperature: tau
    (`dml.temperature`); amplification: EGA's a (`dml.ega`), 0 = plain InfoNCE.
    """

    def __init__(self, num_classes: int, embedding_size: int, *, temperature: float = 0.02,
                 amplification: float = 1.0, class_ids: Sequence[int] | None = None, seed: int = 0) -> None:
        super().__init__(num_classes, class_ids)
        if temperature <= 0 or amplification < 0:
            raise ValueError(f"temperature must be > 0 and amplification >= 0, got {temperature}, {amplification}")
        self.temperature, self.amplification = float(temperature), float(amplification)

    def proxy_parameters(self) -> Iterator[nn.Parameter]:
        yield from ()

    def compute(self, embeddings: Tensor, rows: Tensor) -> LossTerms:
        z = F.normalize(embeddings, dim=-1)
        return infonce_from_similarity(z @ z.T, rows, temperature=self.temperature,
                                       amplification=self.amplification)
