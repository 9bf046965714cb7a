"""L_ATTR: the negative log-likelihood of a known answer, teacher-forced through the frozen judge.

Not the paper's loss: an oracle diagnostic (`weights.attribute_nll`, default 0). L_GRPO learns from the judge's own
sampled answers and their 0/1 rewards, an estimate of the reward's gradient whose batch-to-batch noise is most of
its norm at our scale (bench/grad_alignment.py). This term differentiates log p(true answer | images) directly:
the answer is the pair's true comparison (`prompts.format_comparison` of the classes' attributes, then the right
verdict), so it needs per-class attributes and uses supervision the paper's method does not have. It asks whether
the path through the judge can teach the encoder anything for retrieval once the noise is gone.
"""

from __future__ import annotations

import torch

from saga.losses.base import LossTerms, loss_terms


def answer_nll(logps: torch.Tensor, mask: torch.Tensor) -> LossTerms:
    """logps, mask: (N, Lc) per-token log-probs of the answers and their valid tokens.

    loss: the mean NLL per answer token over the batch (every token weighs the same, as in next-token
    pretraining). Diagnostics: answer_nll, the mean NLL of a whole answer (its tokens summed), and
    answer_token_prob, exp(-loss), the geometric mean probability of an answer token."""
    mask = mask.to(logps.dtype)
    per_answer = -(logps * mask).sum(1)
    loss = per_answer.sum() / mask.sum().clamp(min=1)
    return loss_terms(loss, answer_nll=per_answer.mean(), answer_token_prob=torch.exp(-loss.detach()))
