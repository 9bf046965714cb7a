"""Exact cosine k-nearest neighbours of every item among all the others (leave-one-out retrieval), and of new
queries against a database (`search`).

The zero-shot protocol (docs/method.md, "Protocol") uses each test image as a query against all other test images, so
the query set and the database are the same N embeddings. Two backends return the same neighbours:

- ``torch``: embeddings are L2-normalised, then queries are processed in chunks: one (chunk x N) block of the cosine
  similarity matrix at a time, the query itself masked out *by index*, then ``topk``. Memory is bounded by the chunk
  (chosen from a byte budget), never N x N.
- ``faiss``: ``IndexFlatIP`` (exact inner product) on L2-normalised float32, i.e. cosine similarity. FAISS cannot
  mask the query, so it is asked for k + 1 neighbours and the query's own index is removed from each row.

Self-exclusion is by index, not by similarity value: an exact duplicate of the query (another image with the same
embedding, similarity 1) is kept as a neighbour; only the query's own row index is dropped.

Ties: neighbours with exactly equal similarity come back in an unspecified order (neither ``torch.topk`` nor FAISS
promises one), so with ties the two backends may list different, equally near items, and a metric that looks at
the K-th neighbour can differ between them. Continuous embeddings from a network have no ties in practice.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from saga.errors import DataError

# Bytes allowed for one chunk of the (chunk x N) float32 similarity block; 256 MiB keeps the whole evaluation of
# 50,000 x 512 embeddings well under 1 GiB while each chunk is still large enough for an efficient matrix product.
DEFAULT_MEMORY_BUDGET = 256 * 2**20

BACKENDS = ("torch", "faiss")


def knn(
    embeddings: torch.Tensor | np.ndarray,
    k: int,
    *,
    backend: str = "torch",
    chunk_size: int | None = None,
    exclude_self: bool = True,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar items of each item.

    Args:
        embeddings: (N, D) float array or tensor (searched on the CPU; a GPU tensor is copied over); normalised
            here, so any positive scale per row is fine.
        k: neighbours per item; at most N - 1 with ``exclude_self`` (N without).
        backend: "torch" or "faiss".
        chunk_size: queries per chunk for the torch backend; None picks it from ``memory_budget``.
        exclude_self: drop each item's own index from its neighbour list.
        memory_budget: bytes for one chunk's similarity block when ``chunk_size`` is None.

    Returns:
        (sims, idx): float32 (N, k) cosine similarities, most similar first, and int64 (N, k) row indices.
    """
    x = l2_normalise(embeddings)
    n = x.shape[0]
    k_max = n - 1 if exclude_self else n
    if not 1 <= k <= k_max:
        raise ValueError(f"k = {k} neighbours asked of {n} items (at most {k_max})")
    return _search(x, x, k, backend, chunk_size, memory_budget, exclude_self)


def search(queries: torch.Tensor | np.ndarray, database: torch.Tensor | np.ndarray, k: int, *,
           backend: str = "torch", memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar database items of each query (deployment: new images against a gallery).

    Returns (sims, idx) as `knn` does, with (Q, k) shapes and indices into `database`."""
    q, x = l2_normalise(queries), l2_normalise(database)
    if q.shape[1] != x.shape[1]:
        raise DataError(f"queries have {q.shape[1]} dimensions, the database {x.shape[1]}")
    if k < 1:
        raise ValueError(f"k = {k}: ask for at least one neighbour")
    k = min(k, x.shape[0])  # a database smaller than k: all of it, ranked
    return _search(q, x, k, backend, None, memory_budget, exclude_self=False)


def _search(q: torch.Tensor, x: torch.Tensor, k: int, backend: str, chunk_size: int | None, memory_budget: int,
            exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised queries q against normalised database x (q is x when exclude_self), on `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "faiss":
        return _knn_faiss(q, x, k, exclude_self)
    if chunk_size is None:
        chunk_size = max(1, memory_budget // (4 * x.shape[0]))  # float32 similarities, one row of N per query
    return _knn_torch(q, x, k, chunk_size, exclude_self)


def l2_normalise(embeddings: torch.Tensor | np.ndarray) -> torch.Tensor:
    """float32 (N, D) rows of unit length; DataError for input where cosine similarity is undefined."""
    x = torch.as_tensor(embeddings).detach().to(device="cpu", dtype=torch.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"embeddings must be a non-empty N x D matrix, got shape {tuple(x.shape)}")
    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        raise DataError(f"embeddings hold NaN or infinite values in {int(bad.sum())} rows "
                        f"(first: row {int(bad.nonzero()[0])})")
    zero = x.abs().amax(dim=1) == 0
    if zero.any():
        raise DataError(f"{int(zero.sum())} embeddings are all zeros (first: row {int(zero.nonzero()[0])}); "
                        "cosine similarity is undefined for them")
    return F.normalize(x, dim=1)


def _knn_torch(q: torch.Tensor, x: torch.Tensor, k: int, chunk_size: int,
               exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries q against database x (q is x when exclude_self)."""
    n = q.shape[0]
    sims = torch.empty(n, k, dtype=torch.float32)
    idx = torch.empty(n, k, dtype=torch.int64)
    block = torch.empty(min(chunk_size, n), x.shape[0], dtype=torch.float32)  # reused: no fresh page faults
    starts = range(0, n, chunk_size)
    for start in tqdm(starts, desc="kNN", unit="chunk", leave=False, disable=len(starts) < 2):
        stop = min(start + chunk_size, n)
        s = torch.mm(q[start:stop], x.T, out=block[: stop - start])
        if exclude_self:
            rows = torch.arange(stop - start)
            s[rows, start + rows] = float("-inf")  # by index: duplicates of the query stay eligible
        torch.topk(s, k, dim=1, out=(sims[start:stop], idx[start:stop]))
    return sims, idx


def _knn_faiss(q: torch.Tensor, x: torch.Tensor, k: int, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries q against database x (q is x when exclude_self)."""
    try:
        import faiss
    except ImportError:
        raise ImportError("the faiss kNN backend needs faiss: pip install faiss-cpu (or saga-retrieval[faiss]), "
                          "or use backend='torch'") from None
    data = np.ascontiguousarray(x.numpy())
    index = faiss.IndexFlatIP(data.shape[1])  # exact inner product = cosine on unit vectors
    index.add(data)
    sims, idx = index.search(np.ascontiguousarray(q.numpy()), k + 1 if exclude_self else k)
    if exclude_self:
        n = data.shape[0]
        is_self = idx == np.arange(n)[:, None]
        # Drop the query's own column; where exact duplicates pushed it out of the k + 1, drop the last one instead.
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
        keep = np.ones_like(is_self)
        keep[np.arange(n), drop] = False
        sims, idx = sims[keep].reshape(n, k), idx[keep].reshape(n, k)
    return torch.from_numpy(sims), torch.from_numpy(idx.astype(np.int64))
