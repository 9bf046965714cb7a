"""m-per-class and pair samplers: balance, sharding across ranks, determinism, pair labels, hard negatives."""

from collections import Counter

import numpy as np
import pytest

from saga.data.samplers import MPerClassSampler, nearest_classes
from saga.errors import ConfigError

# 6 classes with dataset ids 10..15; class 15 has only 2 images (fewer than m = 4).
LABELS = np.array([10] * 8 + [11] * 6 + [12] * 5 + [13] * 7 + [14] * 4 + [15] * 2)  # 32 images


def test_m_per_class_batches():
    sampler = MPerClassSampler(LABELS, m=4, batch_size=8, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32 // 8
    for batch in batches:
        per_class = Counter(LABELS[batch].tolist())
        assert len(batch) == 8 and sorted(per_class.values()) == [4, 4]
        for c in per_class:
            members = [i for i in batch if LABELS[i] == c]
            if c == 15:  # too small: both images, then draws with replacement
                assert set(members) == {30, 31}
            else:
                assert len(set(members)) == 4  # no repeats when the class has enough images


def test_classes_are_balanced_over_an_epoch():
    labels = np.repeat(np.arange(5), 20)  # 100 images, 5 classes
    sampler = MPerClassSampler(labels, m=2, batch_size=6, seed=3)  # 3 classes per batch, 16 batches
    uses = Counter(c for batch in sampler for c in set(labels[batch].tolist()))
    assert sum(uses.values()) == 16 * 3
    assert max(uses.values()) - min(uses.values()) <= 1


def test_rank_shards_are_whole_classes_that_make_up_the_single_process_batch():
    labels = np.repeat(np.arange(6), 9)  # 54 images -> 6 global batches of 9 (3 classes x 3)
    single = list(MPerClassSampler(labels, m=3, batch_size=9, seed=5))
    shards = [list(MPerClassSampler(labels, m=3, batch_size=9, rank=r, world_size=3, seed=5)) for r in range(3)]
    assert [len(s) for s in shards] == [6, 6, 6]
    for k, batch in enumerate(single):  # batch k is the concatenation of the ranks' shards, one class each
        assert [i for r in range(3) for i in shards[r][k]] == batch
        assert all(len(set(labels[shards[r][k]])) == 1 for r in range(3))
    with pytest.raises(ConfigError, match="does not split into whole classes over 2 processes"):
        MPerClassSampler(labels, m=3, batch_size=9, rank=0, world_size=2)


def test_m_per_class_determinism_and_epochs():
    a = MPerClassSampler(LABELS, m=2, batch_size=6, seed=1)
    b = MPerClassSampler(LABELS, m=2, batch_size=6, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(MPerClassSampler(LABELS, m=2, batch_size=6, seed=2)) != first


def test_nearest_classes_rank_class_means_by_cosine():
    # Class means (1, 0), (0.9, 0.1) and (0, 1), as two images each; labels unsorted, ids not 0-based.
    emb = np.array([[1, 0], [0, 1], [0.9, 0.1], [1, 0], [0.9, 0.1], [0, 1]])
    labels = np.array([5, 9, 7, 5, 7, 9])
    assert nearest_classes(emb, labels, 1).tolist() == [[1], [0], [1]]  # 5 -> 7, 7 -> 5, 9 -> 7
    assert nearest_classes(emb, labels, 2).tolist() == [[1, 2], [0, 2], [1, 0]]
    with pytest.raises(ConfigError, match="between 1 and 2"):
        nearest_classes(emb, labels, 3)


def test_neighbour_batches_pair_each_class_with_a_neighbour_and_stay_balanced():
    labels = np.repeat(np.arange(8), 10)
    neighbours = np.array([[c ^ 1] for c in range(8)])  # 0-1, 2-3, 4-5, 6-7 are siblings
    sampler = MPerClassSampler(labels, m=2, batch_size=8, seed=0, neighbours=neighbours)  # 4 classes a batch
    uses = Counter()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            classes = set(labels[batch].tolist())
            assert len(classes) == 4 and all(c ^ 1 in classes for c in classes)
            uses.update(classes)
    assert max(uses.values()) - min(uses.values()) <= 2
    with pytest.raises(ValueError, match="neighbours must be"):
        MPerClassSampler(labels, m=2, batch_size=8, neighbours=neighbours[:4])


def test_m_per_class_config_errors():
    with pytest.raises(ConfigError, match="multiple of m"):
        MPerClassSampler(LABELS, m=3, batch_size=8)
    with pytest.raises(ConfigError, match="needs 8 classes"):
        MPerClassSampler(LABELS, m=2, batch_size=16)
    with pytest.raises(ValueError, match="rank"):
        MPerClassSampler(LABELS, m=2, batch_size=4, rank=2, world_size=2)
