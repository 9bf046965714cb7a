"""L_KL: pull the pooler's attention over an image's tokens towards the judge's (docs/method.md).

The frozen MLLM's attention over each image's tokens, taken from the tokens that decide the verdict, is a target
distribution; the pooler's attention over the same tokens is trained towards it. Both are renormalised over the
valid (unpadded) tokens, so the judge's raw attention mass on the image (which also attends to text) and any mass
either side puts on padding do not matter.

Direction (the paper does not say; our choice, exposed as `direction`):
  "forward" (default) KL(judge || pooler) = sum_t q_t log(q_t / p_t), the distillation direction: mass-covering,
      the pooler must attend wherever the judge does; its gradient with respect to softmax logits is p - q, so it
      stays well-behaved when the pooler starts near uniform and the judge is peaked.
  "reverse" KL(pooler || judge): mode-seeking, the pooler may concentrate on a subset of the judge's tokens; log q
      needs `eps` where the judge gives a token ~0 attention, which makes it stiffer.
The judge's attention is a target only: it is detached, so gradient reaches the pooler side alone.
"""

from __future__ import annotations

from typing import Literal

import torch

from saga.losses.base import LossTerms, loss_terms


def _normalise(weights: torch.Tensor, mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Distribution over the valid tokens of each row, and the raw mass that was there (B,)."""
    # masked_fill, not a product: padding may hold NaN / inf, which a multiplication by 0 would keep.
    masked = weights.float().clamp(min=0).masked_fill(~mask, 0.0)
    mass = masked.sum(-1)
    return masked / mass.clamp(min=eps).unsqueeze(-1), mass


def _entropy(dist: torch.Tensor, eps: float) -> torch.Tensor:
    # 0 log 0 = 0; the clamp keeps the gradient finite at 0 (xlogy(p, p) would give 0/0 there).
    return -(dist * dist.clamp(min=eps).log()).sum(-1)


def attention_kl(
    pooler_attn: torch.Tensor,
    judge_attn: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-8,
    direction: Literal["forward", "reverse"] = "forward",
) -> LossTerms:
    """Mean over images of KL between the judge's (target) and the pooler's attention over valid tokens.

    pooler_attn, judge_attn: (B, T) non-negative weights (need not sum to 1); mask: (B, T), true on valid tokens.
    Rows with no valid token or no judge mass on them have no target and are left out of the mean.
    Diagnostics: judge_entropy, pooler_entropy (nats, mean over the rows used) to see how peaked each side is.
    """
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    if not (pooler_attn.shape == judge_attn.shape == mask.shape):
        raise ValueError(f"shapes differ: pooler {tuple(pooler_attn.shape)}, judge {tuple(judge_attn.shape)}, "
                         f"mask {tuple(mask.shape)}")
    valid = mask.to(device=pooler_attn.device, dtype=torch.bool)
    q, judge_mass = _normalise(judge_attn.detach(), valid, eps)
    p, _ = _normalise(pooler_attn, valid, eps)
    used = (judge_mass > 0).float()
    rows = used.sum().clamp(min=1.0)

    log_q, log_p = q.clamp(min=eps).log(), p.clamp(min=eps).log()
    if direction == "forward":
        kl = (q * (log_q - log_p)).sum(-1)  # KL(q || p), Kullback & Leibler 1951
    else:
        kl = (p * (log_p - log_q)).sum(-1)  # KL(p || q)
    loss = (kl * used).sum() / rows
    return loss_terms(
        loss,
        judge_entropy=(_entropy(q, eps) * used).sum() / rows,
        pooler_entropy=(_entropy(p, eps) * used).sum() / rows,
    )
