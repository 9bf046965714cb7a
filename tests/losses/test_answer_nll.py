"""L_ATTR, the oracle diagnostic's teacher-forced NLL, against hand-computed values."""

import math

import pytest
import torch

from saga.losses.answer_nll import answer_nll


def test_token_mean_nll_and_per_answer_sums_by_hand():
    # answer 0: tokens at p = 0.5, 0.25; answer 1: one token at p = 1, then padding that must not count
    logps = torch.tensor([[math.log(0.5), math.log(0.25)], [0.0, -7.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    out = answer_nll(logps, mask)
    nll = math.log(2) + math.log(4)  # 3 log 2, over 3 tokens
    assert out["loss"].item() == pytest.approx(nll / 3)
    assert out["answer_nll"].item() == pytest.approx(nll / 2)  # (3 log 2 + 0) / 2 answers
    assert out["answer_token_prob"].item() == pytest.approx(0.5)  # geometric mean of 0.5, 0.25, 1
    out["loss"].backward()
    assert logps.grad.flatten().tolist() == pytest.approx([-1 / 3, -1 / 3, -1 / 3, 0.0])
