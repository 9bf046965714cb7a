import math

import numpy as np
import pytest
import torch

from saga.data.samplers import MPerClassSampler
from saga.errors import ConfigError
from saga.train.batches import StepBatches, mine_pairs, step_rng

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
# Unit vectors at these angles (degrees). Hardest other-class neighbour of each, by hand:
#   0 (0 deg) -> 2 (10 deg); 1 (90) -> 4 (100); 2 (10) -> 0; 3 (180) -> 4 (cos 80 > 0 = cos 90);
#   4 (100) -> 1; 5 (300) -> 0 (cos 60 = 0.5 > cos 70 to image 2).
ANGLES = [0, 90, 10, 180, 100, 300]
HARDEST = {0: 2, 1: 4, 2: 0, 3: 4, 4: 1, 5: 0}


def _embeddings(scale=3.0):
    rad = torch.tensor(ANGLES, dtype=torch.float64) * math.pi / 180
    return scale * torch.stack([rad.cos(), rad.sin()], 1).float()  # not unit length: mining normalises


def test_all_hard_negatives_are_the_most_similar_other_class_image():
    pairs = mine_pairs(_embeddings(), LABELS, num_pairs=12, same_fraction=0.0, hard_negative_fraction=1.0,
                       rng=np.random.default_rng(0))
    assert len(pairs) == 12 and pairs.hard == [True] * 12 and pairs.same == [False] * 12
    assert all(b == HARDEST[a] for a, b in zip(pairs.a, pairs.b, strict=True))
    assert sorted(pairs.a) == sorted([0, 1, 2, 3, 4, 5] * 2)  # 12 anchors from 6 images: each twice


def test_positive_pairs_are_two_distinct_classmates():
    pairs = mine_pairs(_embeddings(), LABELS, num_pairs=5, same_fraction=1.0, hard_negative_fraction=1.0,
                       rng=np.random.default_rng(1))
    assert pairs.same == [True] * 5 and pairs.hard == [False] * 5
    assert all(b == a ^ 1 for a, b in zip(pairs.a, pairs.b, strict=True))  # classmates are (0,1), (2,3), (4,5)


def test_mixed_counts_and_random_negatives():
    for seed in range(5):
        pairs = mine_pairs(_embeddings(), LABELS, num_pairs=4, same_fraction=0.5, hard_negative_fraction=0.5,
                           rng=np.random.default_rng(seed))
        # round(4 * 0.5) = 2 positives; of the 2 negatives round(2 * 0.5) = 1 is hard
        assert pairs.same == [True, True, False, False] and pairs.hard == [False, False, True, False]
        for a, b, same in zip(pairs.a, pairs.b, pairs.same, strict=True):
            assert a != b and (LABELS[a] == LABELS[b]) == same
        assert pairs.b[2] == HARDEST[pairs.a[2]]
    assert pairs.interleaved() == [pairs.a[0], pairs.b[0], pairs.a[1], pairs.b[1], pairs.a[2], pairs.b[2],
                                   pairs.a[3], pairs.b[3]]


def test_mining_is_reproducible_from_seed_and_step():
    def draw(step):
        return mine_pairs(_embeddings(), LABELS, num_pairs=4, same_fraction=0.5, hard_negative_fraction=0.0,
                          rng=step_rng(7, step, 0))

    assert draw(3) == draw(3)
    assert any(draw(3) != draw(s) for s in range(4, 10))


def test_impossible_pairs_are_config_errors():
    one_class = torch.tensor([0, 0, 0])
    with pytest.raises(ConfigError, match="two classes"):
        mine_pairs(torch.randn(3, 2), one_class, num_pairs=2, same_fraction=0.5, hard_negative_fraction=0.0,
                   rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="m_per_class >= 2"):
        mine_pairs(torch.randn(3, 2), torch.tensor([0, 1, 2]), num_pairs=2, same_fraction=0.5,
                   hard_negative_fraction=0.0, rng=np.random.default_rng(0))


def test_step_batches_are_a_function_of_seed_and_step():
    labels = np.repeat(np.arange(3), 4)  # 12 images, batches of 6 -> 2 batches per epoch
    reference = MPerClassSampler(labels, 2, 6, seed=5)
    expected = []
    for epoch in range(3):
        reference.set_epoch(epoch)
        expected += reference.global_batches()
    stream = StepBatches(labels, m=2, batch_size=6, seed=5)
    assert [stream.batch(s) for s in range(6)] == expected
    fresh = StepBatches(labels, m=2, batch_size=6, seed=5)
    assert fresh.batch(5) == expected[5] and fresh.batch(1) == expected[1]  # any order, no state
    assert list(fresh.steps(2, 5)) == expected[2:5]
    for batch in expected:
        assert sorted(np.bincount(labels[batch]).tolist()) == [2, 2, 2]

