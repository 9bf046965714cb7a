"""GRPO: group-relative advantages and the clipped policy-gradient loss (docs/method.md, "L_GRPO").

Formulas are those of DeepSeekMath (Shao et al. 2024, arXiv 2402.03300, eq. 3 and section 4.1.2) as implemented by
Hugging Face TRL's `GRPOTrainer` (`_generate_and_score_completions` for the advantages, `_compute_loss` for the
loss and its `loss_type` aggregations), so that a TRL user reads the same numbers here. In SAGA the "policy" is the
frozen judge seen through the trainable encoder's image tokens: the gradient of `loss` reaches the encoder only.
"""

from __future__ import annotations

from typing import Literal

import torch

from saga.losses.base import LossTerms, loss_terms

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale_rewards: ScaleRewards = "group",
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantages A_i = (r_i - mean(group)) / (std + eps), one per completion (docs/method.md, "L_GRPO").

    rewards: (P * G,) with the G completions of a prompt contiguous, or (P, G). Returns (advantages (P * G,), stats).

    The standard deviation is the *unbiased* one (`torch.std`, Bessel's correction), as in TRL; a group of one has
    std 0. scale_rewards: "group" divides by each group's std (TRL default), "batch" by the std of all rewards
    (the mean is still the group's), "none" only centres (Dr. GRPO, Liu et al. 2025).

    stats: reward_mean, reward_std (mean of the per-group stds, or the batch std under "batch", as TRL logs it),
    frac_reward_zero_std: share of groups whose rewards are all equal. Those groups get advantage 0 and so no
    gradient. (TRL's "batch" mode logs the global-std test instead; the per-group share is the useful number.)
    NaN rewards count in none of these and get advantage 0.
    """
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    grouped = rewards.detach().float().reshape(-1, group_size)
    # A NaN reward (a reward that could not be computed) is left out of its group's mean and std and gets
    # advantage 0, as TRL does, instead of turning the whole group into NaN.
    valid = ~torch.isnan(grouped)
    values = grouped.nan_to_num(0.0)
    count = valid.sum(dim=1, keepdim=True)
    mean = values.sum(dim=1, keepdim=True) / count.clamp(min=1)
    # Bessel's correction as torch.std; the std of fewer than two rewards is 0 (TRL: num_generations == 1).
    if scale_rewards == "batch":
        every = values[valid]
        std = every.std() if every.numel() > 1 else grouped.new_zeros(())
    else:
        var = ((values - mean) ** 2 * valid).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
        std = torch.where(count > 1, var.sqrt(), torch.zeros_like(var))
    std = std.expand_as(grouped)
    advantages = values - mean
    if scale_rewards != "none":
        advantages = advantages / (std + eps)  # eps = 1e-4 in TRL: an all-equal group stays exactly 0
    advantages = advantages.masked_fill(~valid, 0.0)
    inf = torch.finfo(values.dtype).max
    all_equal = values.masked_fill(~valid, -inf).amax(dim=1) <= values.masked_fill(~valid, inf).amin(dim=1)
    stats = {
        "reward_mean": values.sum() / valid.sum().clamp(min=1),
        "reward_std": std.mean(),
        "frac_reward_zero_std": all_equal.float().mean(),
    }
    return advantages.reshape(-1), stats


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimator k3 = exp(ref - logp) - (ref - logp) - 1 >= 0 (Schulman 2020; DeepSeekMath eq. 4)."""
    diff = ref_logps - logps
    return torch.exp(diff) - diff - 1


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, epsilon_low: float,
                      epsilon_high: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate with DAPO's asymmetric clip range (DeepSeekMath eq. 3; TRL coef_1 / coef_2):
    -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), rho = exp(logps - old_logps); advantages (N, 1). Returns
    (per-token loss, low-clipped, high-clipped), the last two float masks of the tokens whose clipped branch is
    active (no gradient), as TRL counts them."""
    rho = torch.exp(logps - old_logps)
    rho_clipped = torch.clamp(rho, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(rho * advantages, rho_clipped * advantages)
    low = ((rho < 1 - epsilon_low) & (advantages < 0)).to(logps.dtype)
    high = ((rho > 1 + epsilon_high) & (advantages > 0)).to(logps.dtype)
    return per_token, low, high


def grpo_loss(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: LossType = "grpo",
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    max_completion_length: int | None = None,
) -> LossTerms:
    """Clipped surrogate loss of GRPO, aggregated over tokens as TRL's `loss_type` does.

    logps: (N, T) log-probabilities of the sampled completion tokens under the current policy (with grad);
    advantages: (N,); mask: (N, T), 1 on completion tokens. SAGA makes one update per rollout, so the sampling
    policy is the current one (old = logps.detach()): rho == 1, the clip never binds, and the gradient is
    A * grad(logp), REINFORCE with the group baseline. The clipped form is kept so the loss is TRL's formula.

    Aggregation (TRL `_compute_loss`; the trainer handles gradient accumulation, so no division by its steps here):
      grpo     mean over sequences of the per-sequence token mean (DeepSeekMath eq. 3)
      bnpo     sum over tokens / active tokens of this batch
      dr_grpo  sum / (N * max_completion_length), a constant normaliser (Dr. GRPO); max_completion_length required
      dapo     sum / active tokens of the whole accumulated batch (DAPO, Yu et al. 2025); without gradient
               accumulation, those of this batch

    Diagnostics (TRL's names): clip_ratio (+ _low / _high), completion_length (mean active tokens), kl (masked
    mean k3, when ref_logps is given).
    """
    if loss_type not in ("grpo", "bnpo", "dr_grpo", "dapo"):
        raise ValueError(f"loss_type must be grpo, bnpo, dr_grpo or dapo, got {loss_type!r}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps (the reference policy's per-token log-probs)")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length (the generation limit)")
    # Padding positions may hold anything (-inf from a masked log-softmax): zero them before any arithmetic, since
    # multiplying by the mask afterwards would still turn the sums (and gradients) into NaN.
    active = mask.to(device=logps.device, dtype=torch.bool)
    logps = logps.float().masked_fill(~active, 0.0)
    mask = active.to(logps)
    adv = advantages.to(logps).unsqueeze(1)
    per_token, low, high = clipped_surrogate(logps, logps.detach(), adv, epsilon_low, epsilon_high)
    kl = None
    if ref_logps is not None:
        kl = kl_k3(logps, ref_logps.to(logps).masked_fill(~active, 0.0))
        if beta != 0.0:
            per_token = per_token + beta * kl

    total = (per_token * mask).sum()
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = total / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = total / (per_token.shape[0] * max_completion_length)
    else:
        loss = total / mask.sum().clamp(min=1.0)

    # Diagnostics as TRL logs them: a token is "clipped" when the clipped branch is active (no gradient).
    tokens = mask.sum().clamp(min=1.0)
    diagnostics = {
        "clip_ratio": ((low + high) * mask).sum() / tokens,
        "clip_ratio_low": (low * mask).sum() / tokens,
        "clip_ratio_high": (high * mask).sum() / tokens,
        "completion_length": mask.sum(-1).mean(),
    }
    if kl is not None:
        diagnostics["kl"] = (kl * mask).sum() / tokens
    return loss_terms(loss, **diagnostics)
