"""Retrieval metrics against hand-computed answers and a brute-force reference; NMI of k-means."""

from __future__ import annotations

import numpy as np
import pytest

from saga.errors import DataError
from saga.eval import metrics
from saga.eval.knn import knn
from saga.eval.metrics import (kmeans_clusters, map_at_r, neighbours_needed, nmi, r_precision, recall_at_k,
                               retrieval_metrics)

# Six unit vectors in 2-D at these angles (degrees); cosine order = angular order. Classes A A A B B C.
ANGLES = np.array([0.0, 10.0, 50.0, 28.0, 95.0, 200.0])
LABELS = np.array([0, 0, 0, 1, 1, 2])
# Neighbours by angular distance (self excluded), class in brackets:
#   q0 (0):   1 A (10), 3 B (28), 2 A (50), 4 B (95), 5 C (160)     R = 2   rel 1 0 1 0 0
#   q1 (10):  0 A (10), 3 B (18), 2 A (40), 4 B (85), 5 C (170)     R = 2   rel 1 0 1 0 0
#   q2 (50):  3 B (22), 1 A (40), 4 B (45), 0 A (50), 5 C (150)     R = 2   rel 0 1 0 1 0
#   q3 (28):  1 A (18), 2 A (22), 0 A (28), 4 B (67), 5 C (172)     R = 1   rel 0 0 0 1 0
#   q4 (95):  2 A (45), 3 B (67), 1 A (85), 0 A (95), 5 C (105)     R = 1   rel 0 1 0 0 0
#   q5 (200): class C has no other member (R = 0): excluded from the retrieval metrics.
# Recall@1 = (1+1+0+0+0)/5 = 0.4   Recall@2 = (1+1+1+0+1)/5 = 0.8   Recall@3 = 0.8   Recall@4 = 1.0
# MAP@R: q0 (1/2)(P(1)=1) = 0.5, q1 0.5, q2 (1/2)(P(2)=1/2) = 0.25, q3 0, q4 0 -> 1.25/5 = 0.25
# R-precision: q0 1/2, q1 1/2, q2 1/2, q3 0, q4 0 -> 1.5/5 = 0.3
# (pytorch-metric-learning's precision_at_2 would be (.5+.5+.5+0+.5)/5 = 0.4, not Recall@2 = 0.8.)
EXPECTED = {"R@1": 0.4, "R@2": 0.8, "R@3": 0.8, "R@4": 1.0, "MAP@R": 0.25, "RP": 0.3}


def _points(angles: np.ndarray) -> np.ndarray:
    rad = np.deg2rad(angles)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def test_hand_computed_example():
    _, idx = knn(_points(ANGLES), neighbours_needed(LABELS, (1, 2, 3, 4)))
    np.testing.assert_array_equal(idx[:, :2].numpy(), [[1, 3], [0, 3], [3, 1], [1, 2], [2, 3], [4, 2]])
    got = retrieval_metrics(idx, LABELS, ks=(1, 2, 3, 4))
    assert got == pytest.approx(EXPECTED)


def test_map_at_r_hand_computed():
    # One query of class 0 with R = 3 other class-0 items; the columns are its neighbours' classes.
    labels = np.array([0, 0, 0, 0])
    # rel 1 0 1: (P(1) + P(3)) / R = (1 + 2/3) / 3;  rel 0 1 1: (1/2 + 2/3) / 3;  rel 1 1 1: 1
    for row, expected in [([0, 1, 0], (1 + 2 / 3) / 3), ([1, 0, 0], (1 / 2 + 2 / 3) / 3), ([0, 0, 0], 1.0)]:
        neighbour_labels = np.array([row] * 4)
        assert map_at_r(neighbour_labels, labels) == pytest.approx(expected)
        assert r_precision(neighbour_labels, labels) == pytest.approx(sum(c == 0 for c in row) / 3)


def test_neighbours_past_r_do_not_count():
    # R = 1 for both queries: a relevant 2nd neighbour adds nothing to MAP@R or R-precision, but counts for R@2.
    labels = np.array([0, 0, 1, 1])
    neighbour_labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    assert map_at_r(neighbour_labels, labels) == 0.0
    assert r_precision(neighbour_labels, labels) == 0.0
    assert recall_at_k(neighbour_labels, labels, 2) == 1.0


def test_singleton_classes_are_excluded():
    # Adding one more singleton class (a far-away point) leaves every retrieval metric unchanged.
    angles, labels = np.append(ANGLES, 300.0), np.append(LABELS, 7)
    _, idx = knn(_points(angles), 4)
    assert retrieval_metrics(idx, labels, ks=(1, 2, 3, 4)) == pytest.approx(EXPECTED)
    with pytest.raises(DataError, match="single item"):
        recall_at_k(np.zeros((3, 1)), np.array([0, 1, 2]), 1)


def test_too_few_neighbours():
    with pytest.raises(ValueError, match="need 2 neighbours"):
        map_at_r(np.zeros((6, 1)), LABELS)
    with pytest.raises(ValueError, match="Recall@3"):
        recall_at_k(np.zeros((6, 2)), LABELS, 3)


def _brute_force_metrics(x: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """The definitions, one query at a time, over a full N x N cosine matrix and a full sort."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = u.astype(np.float64) @ u.T.astype(np.float64)
    sums = dict.fromkeys([*(f"R@{k}" for k in ks), "MAP@R", "RP"], 0.0)
    queries = 0
    for q in range(len(x)):
        order = [j for j in np.argsort(-s[q], kind="stable") if j != q]
        rel = [labels[j] == labels[q] for j in order]
        r = int((labels == labels[q]).sum()) - 1
        if r == 0:
            continue
        queries += 1
        for k in ks:
            sums[f"R@{k}"] += float(any(rel[:k]))
        sums["MAP@R"] += sum(sum(rel[:i]) / i for i in range(1, r + 1) if rel[i - 1]) / r
        sums["RP"] += sum(rel[:r]) / r
    return {key: v / queries for key, v in sums.items()}


@pytest.mark.parametrize("chunk_size", [1, 13, 500])
def test_matches_brute_force_reference(chunk_size):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, size=150)  # uneven class sizes, maybe singletons
    x = (rng.standard_normal((12, 10))[labels] + 1.2 * rng.standard_normal((150, 10))).astype(np.float32)
    ks = (1, 2, 4, 8)
    _, idx = knn(x, neighbours_needed(labels, ks), chunk_size=chunk_size)
    got = retrieval_metrics(idx, labels, ks)
    assert got == pytest.approx(_brute_force_metrics(x, labels, ks), abs=1e-12)
    assert 0.2 < got["R@1"] < 0.95  # neither trivial nor hopeless, so the comparison means something


def _clusters(classes: int, per_class: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    x = rng.standard_normal((classes, 16))[labels] + noise * rng.standard_normal((classes * per_class, 16))
    return x.astype(np.float32), labels


def test_nmi_perfect_clustering_is_one():
    x, labels = _clusters(6, 10, noise=0.01, seed=0)
    assert nmi(x, labels, seed=0) == pytest.approx(1.0)
    assert nmi(x, labels * 7 + 3, seed=1) == pytest.approx(1.0)  # class ids are names, not numbers


def test_nmi_random_labels_is_low_and_seeded():
    x, labels = _clusters(6, 10, noise=0.01, seed=0)
    shuffled = np.random.default_rng(1).permutation(labels)
    assert nmi(x, shuffled, seed=0) < 0.4
    np.testing.assert_array_equal(kmeans_clusters(x, 6, seed=3), kmeans_clusters(x, 6, seed=3))


def test_nmi_seeding_on_a_sample(monkeypatch):
    # Force the large-set path: k-means++ seeding on a 4 x 6 = 24-item sample of 80, Lloyd on all 80.
    monkeypatch.setattr(metrics, "SEEDING_BUDGET", 24 * 4)
    monkeypatch.setattr(metrics, "SEEDING_PER_CLUSTER", 6)
    x, labels = _clusters(4, 20, noise=0.05, seed=2)
    assert nmi(x, labels, seed=0) == pytest.approx(1.0)
    np.testing.assert_array_equal(kmeans_clusters(x, 4, seed=5), kmeans_clusters(x, 4, seed=5))
