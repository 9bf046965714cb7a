"""m-per-class and pair samplers: balance, sharding across ranks, determinism, pair labels, hard negatives."""

from collections import Counter

import numpy as np
import pytest
import torch

from saga.data.samplers import MPerClassSampler, PairSampler, nearest_classes
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


def test_rank_shards_are_disjoint_and_interleave_to_the_single_rank_stream():
    labels = np.repeat(np.arange(6), 9)  # 54 images -> 6 global batches of 9
    single = list(MPerClassSampler(labels, m=3, batch_size=9, seed=5))
    shards = [list(MPerClassSampler(labels, m=3, batch_size=9, rank=r, world_size=3, seed=5)) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]
    interleaved = [shards[r][k] for k in range(2) for r in range(3)]
    assert interleaved == single


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


def test_pair_labels_and_fractions():
    sampler = PairSampler(LABELS, pairs_per_batch=8, same_fraction=0.25, seed=0, num_batches=20)
    assert len(sampler) == 20
    for batch in sampler:
        assert len(batch) == 8 and sum(same for _, _, same in batch) == 2
        for i, j, same in batch:
            assert same == (LABELS[i] == LABELS[j])
            assert i != j


def test_positive_partners_cover_the_class():
    labels = np.array([0, 0, 0, 1])
    sampler = PairSampler(labels, pairs_per_batch=4, same_fraction=1.0, num_batches=30)
    pairs = {(i, j) for batch in sampler for i, j, _ in batch}
    assert pairs == {(i, j) for i in range(3) for j in range(3) if i != j}


def test_pair_shards_and_determinism():
    kw = dict(pairs_per_batch=4, seed=9, num_batches=6)
    single = list(PairSampler(LABELS, **kw))
    assert single == list(PairSampler(LABELS, **kw))
    shards = [list(PairSampler(LABELS, rank=r, world_size=2, **kw)) for r in range(2)]
    assert [b for k in range(3) for b in (shards[0][k], shards[1][k])] == single
    other_epoch = PairSampler(LABELS, **kw)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != single


def _nearest_other_class(emb, labels, k):
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = e @ e.T
    sims[labels[:, None] == labels[None, :]] = -np.inf
    return np.argsort(-sims, axis=1)[:, :k]


def test_hard_negatives_come_from_the_nearest_other_class_images():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(LABELS), 5)).astype(np.float32)
    sampler = PairSampler(LABELS, pairs_per_batch=10, same_fraction=0.0, hard_negative_fraction=1.0,
                          num_candidates=2, num_batches=10, seed=1)
    sampler.update_embeddings(torch.from_numpy(emb))
    top2 = _nearest_other_class(emb, LABELS, 2)
    assert np.array_equal(np.sort(sampler.hard_candidates, axis=1), np.sort(top2, axis=1))
    for batch in sampler:
        for i, j, same in batch:
            assert not same and j in top2[i]


def test_hard_negatives_fall_back_to_random_before_embeddings():
    sampler = PairSampler(LABELS, pairs_per_batch=10, same_fraction=0.0, hard_negative_fraction=1.0,
                          num_candidates=1, num_batches=10, seed=1)
    pairs = [(i, j) for batch in sampler for i, j, same in batch if not same]
    assert len(pairs) == 100
    # random partners: many distinct partners per anchor class, not one nearest image
    assert len({j for _, j in pairs}) > 20
    with pytest.raises(ValueError, match=r"\(32, D\)"):
        sampler.update_embeddings(np.zeros((5, 3)))


def test_mixed_hard_and_random_negatives():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(len(LABELS), 4))
    sampler = PairSampler(LABELS, pairs_per_batch=10, same_fraction=0.0, hard_negative_fraction=0.5,
                          num_candidates=1, num_batches=40, seed=4)
    sampler.update_embeddings(emb)
    nearest = _nearest_other_class(emb, LABELS, 1)[:, 0]
    hits = sum(j == nearest[i] for batch in sampler for i, j, _ in batch)
    # 5 of 10 negatives per batch are hard (always the nearest); random ones hit it with probability ~1/26
    assert 200 <= hits < 260
