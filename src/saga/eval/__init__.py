"""Zero-shot retrieval evaluation (docs/method.md, "Protocol"): kNN search, metrics, result tables.

``evaluate`` is the one entry point the CLI and the trainer use: one leave-one-out kNN search serves Recall@K, MAP@R
and R-precision; k-means serves NMI. Definitions are in ``saga.eval.metrics``, search details in ``saga.eval.knn``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from saga.errors import DataError
from saga.eval.knn import knn, l2_normalise, search
from saga.eval.metrics import neighbours_needed, nmi, retrieval_metrics

__all__ = ["evaluate", "knn", "load_embeddings", "search"]


def load_embeddings(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, labels) from an .npz holding arrays 'embeddings' (N x D) and 'labels' (N); no pickles."""
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:  # missing, not a NumPy file, or holding pickled objects
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz with 'embeddings' and 'labels'")
    with f:
        if "embeddings" not in f or "labels" not in f:
            raise DataError(f"{path}: needs arrays 'embeddings' and 'labels', has {sorted(f.files)}")
        try:
            embeddings, labels = f["embeddings"], f["labels"]
        except ValueError as e:  # an object array: loading it would unpickle
            raise DataError(f"{path}: 'embeddings' and 'labels' must be numeric arrays ({e})") from None
    if not np.issubdtype(embeddings.dtype, np.number) or embeddings.ndim != 2:
        raise DataError(f"{path}: 'embeddings' must be a numeric (N, D) array, got {embeddings.dtype} "
                        f"{embeddings.shape}")
    return embeddings, labels


def evaluate(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence,
    *,
    backend: str = "torch",
    ks: Sequence[int] = (1, 2, 4, 8),
    seed: int = 0,
) -> dict[str, float]:
    """Retrieval metrics of (N, D) embeddings with (N,) class labels, each item a query against all others.

    Returns python floats in [0, 1] under the keys "R@k" for k in ``ks``, "MAP@R", "RP" (R-precision) and "NMI".
    ``backend`` picks the kNN implementation ("torch" or "faiss"); ``seed`` fixes the k-means run behind NMI.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be one label per embedding (1-D), got shape {labels.shape}")
    x = l2_normalise(embeddings)  # also rejects NaN, infinite and all-zero rows
    if x.shape[0] != labels.shape[0]:
        raise DataError(f"{x.shape[0]} embeddings but {labels.shape[0]} labels")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive neighbour counts, got {tuple(ks)}")
    if labels.shape[0] < 2:
        raise DataError(f"retrieval needs at least 2 items, got {labels.shape[0]}")
    if len(np.unique(labels)) < 2:  # every neighbour would be right: every metric 100, meaning nothing
        raise DataError(f"retrieval needs at least 2 classes, got {len(np.unique(labels))}: every neighbour would be "
                        "of the query's class")
    # One search deep enough for every metric: K for Recall@K, R = largest class - 1 for MAP@R and R-precision;
    # never more than the N - 1 other items (then Recall@K for K >= N - 1 reads all of them).
    _, idx = knn(x, min(neighbours_needed(labels, ks), labels.shape[0] - 1), backend=backend)
    metrics = retrieval_metrics(idx, labels, ks)
    metrics["NMI"] = nmi(x, labels, seed=seed)
    return metrics
