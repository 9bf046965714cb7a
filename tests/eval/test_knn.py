"""Exact cosine kNN: brute-force reference, chunking, self-exclusion by index, torch vs FAISS."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from saga.errors import DataError
from saga.eval.knn import knn, search


def _random(n: int, d: int, seed: int) -> np.ndarray:
    # Continuous Gaussian data: no two similarities tie, so neighbour order is unique (see knn's tie note).
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full N x N cosine matrix in float64, diagonal removed, full argsort."""
    u = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 200, 1000])
def test_torch_matches_brute_force_for_any_chunk_size(chunk_size):
    x = _random(200, 12, seed=0)
    ref_sims, ref_idx = _brute_force(x, k=9)
    sims, idx = knn(torch.from_numpy(x), 9, chunk_size=chunk_size)
    assert idx.dtype == torch.int64 and sims.dtype == torch.float32
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sims.numpy(), ref_sims, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_search_queries_against_a_database(backend):
    # Hand-computed: database rows along x, y and the diagonal. The query (2, 1) is nearest the diagonal
    # (3 / sqrt 10), then x (2 / sqrt 5).
    database = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    sims, idx = search(np.array([[2, 1], [0, -3]], dtype=np.float32), database, 2, backend=backend)
    assert idx[0].tolist() == [2, 0]
    np.testing.assert_allclose(sims[0].numpy(), [3 / 10**0.5, 2 / 5**0.5], atol=1e-6)
    # (0, -3) is orthogonal to x and opposite to y: x (0) comes first, then the diagonal (-1/sqrt 2).
    assert idx[1].tolist() == [0, 2]
    np.testing.assert_allclose(sims[1].numpy(), [0, -(0.5**0.5)], atol=1e-6)
    assert search(database[:1], database, 10)[1].shape == (1, 3)  # k beyond the database: all of it
    with pytest.raises(DataError, match="queries have 3 dimensions, the database 2"):
        search(np.ones((1, 3)), database, 1)
    with pytest.raises(ValueError, match="at least one neighbour"):
        search(database, database, 0)


def test_chunk_size_from_memory_budget():
    x = _random(150, 8, seed=1)
    # A budget of 3 rows of 150 float32 similarities gives chunks of 3 queries; a tiny one gives chunks of 1.
    ref = knn(x, 5, chunk_size=150)[1]
    for budget in (3 * 150 * 4, 1):
        np.testing.assert_array_equal(knn(x, 5, memory_budget=budget)[1].numpy(), ref.numpy())


def test_faiss_matches_torch():
    x = _random(300, 16, seed=2)
    t_sims, t_idx = knn(x, 10, backend="torch")
    f_sims, f_idx = knn(x, 10, backend="faiss")
    np.testing.assert_array_equal(f_idx.numpy(), t_idx.numpy())
    np.testing.assert_allclose(f_sims.numpy(), t_sims.numpy(), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_self_excluded_by_index_and_duplicates_kept(backend):
    x = _random(40, 6, seed=3)
    x[17] = x[5]  # an exact duplicate: similarity 1 to row 5, exactly like row 5 itself
    sims, idx = knn(x, 4, backend=backend)
    rows = np.arange(40)[:, None]
    assert not (idx.numpy() == rows).any()
    assert idx[5, 0] == 17 and idx[17, 0] == 5
    assert sims[5, 0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_more_duplicates_than_k(backend):
    # Five identical rows and k = 2: FAISS may rank the query's own copy outside its k + 1 results.
    x = _random(30, 5, seed=4)
    group = [3, 8, 11, 20, 27]
    x[group] = x[3]
    _, idx = knn(x, 2, backend=backend)
    for q in group:
        assert q not in idx[q].tolist()
        assert set(idx[q].tolist()) <= set(group) - {q}


def test_without_self_exclusion_self_comes_first():
    x = _random(50, 7, seed=5)
    sims, idx = knn(x, 3, exclude_self=False)
    np.testing.assert_array_equal(idx[:, 0].numpy(), np.arange(50))
    np.testing.assert_allclose(sims[:, 0].numpy(), 1.0, atol=1e-6)
    np.testing.assert_array_equal(idx[:, 1:].numpy(), knn(x, 2)[1].numpy())


def test_cosine_ignores_row_scale():
    x = _random(60, 9, seed=6)
    scales = np.random.default_rng(7).uniform(0.01, 100.0, size=(60, 1)).astype(np.float32)
    np.testing.assert_array_equal(knn(x * scales, 5)[1].numpy(), knn(x, 5)[1].numpy())


def test_bad_input():
    x = _random(10, 4, seed=8)
    with pytest.raises(ValueError, match="at most 9"):
        knn(x, 10)
    with pytest.raises(ValueError, match="backend"):
        knn(x, 2, backend="annoy")
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="row 3"):
        knn(bad, 2)
    bad = x.copy()
    bad[6] = 0
    with pytest.raises(DataError, match="row 6"):
        knn(bad, 2)
    with pytest.raises(DataError, match="N x D"):
        knn(x[0], 2)


def test_faiss_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        knn(_random(10, 4, seed=9), 2, backend="faiss")
