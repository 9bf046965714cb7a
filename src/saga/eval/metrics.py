"""Zero-shot retrieval metrics: Recall@K, MAP@R, R-precision (from neighbour lists) and NMI (from k-means).

Protocol (docs/method.md, "Protocol"): every item is a query against all the *other* items of the same set, so the
neighbour lists come from ``knn(..., exclude_self=True)`` over that set. For a query q:

- R(q) = number of other items of q's class (class size - 1), the number of relevant items.
- rel(q, i) = 1 if the i-th nearest neighbour of q has q's class, else 0; P(q, i) = (1/i) sum_{j<=i} rel(q, j).
- Recall@K: 1 if at least one of the K nearest neighbours has q's class, else 0; averaged over queries. This is
  the metric-learning papers' "Recall@K", NOT pytorch-metric-learning's precision_at_k (the share of the K
  neighbours that are relevant), which differs for K > 1.
- R-precision (Musgrave et al. 2020, "A Metric Learning Reality Check", section 3.2): P(q, R(q)).
- MAP@R (same paper): (1/R(q)) sum_{i<=R(q)} P(q, i) * rel(q, i), i.e. average precision over the first R(q)
  neighbours, where a missing relevant item counts as precision 0.

Queries whose class has no other member (R(q) = 0) have nothing to retrieve: they are EXCLUDED from Recall@K, MAP@R
and R-precision (the mean runs over the remaining queries); they still take part as database items (neighbours of
other queries) and in NMI. All classes having a single member is an error.

NMI: k-means on the L2-normalised embeddings with k = number of classes (scikit-learn: k-means++ seeding, on a
sample for large sets, then at most 20 Lloyd iterations; deterministic for a fixed seed), then scikit-learn's
``normalized_mutual_info_score`` (arithmetic mean normalisation) between k-means clusters and classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.metrics import normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from saga.errors import DataError
from saga.eval.knn import l2_normalise

# k-means++ seeding is sequential, one pass over the items per centre: on 50,000 items of 1,000 classes it alone
# takes longer than the whole kNN search (bench/eval_speed.py). So it runs on a seeded random sample of
# min(N, max(SEEDING_PER_CLUSTER * k, SEEDING_BUDGET // k)) items (sample size x centres bounds its work); Lloyd's
# iterations then use all items. The CUB, Cars and Aircraft test splits (< 10,000 items, 50-100 classes) get plain
# k-means++ seeding on every item; 1,000 classes get a 4,000-item sample.
SEEDING_BUDGET = 4_000_000
SEEDING_PER_CLUSTER = 4
# Lloyd iterations, as pytorch-metric-learning's FAISS k-means (niter=20), which most metric-learning papers' NMI
# comes from.
KMEANS_MAX_ITER = 20


def relevant_counts(labels: np.ndarray) -> np.ndarray:
    """R(q) for each item: how many *other* items share its class."""
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] - 1


def neighbours_needed(labels: np.ndarray, ks: Sequence[int]) -> int:
    """Neighbours per query that serve every metric here: max(max(ks), largest R)."""
    return int(max(max(ks), relevant_counts(labels).max()))


def _relevance(neighbour_labels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rel (Q, K) bool and R (Q,) for the queries with R > 0 only (see the module docstring)."""
    labels = np.asarray(labels).reshape(-1)
    neighbour_labels = np.asarray(neighbour_labels)
    if neighbour_labels.ndim != 2 or neighbour_labels.shape[0] != labels.shape[0]:
        raise ValueError(f"neighbour labels of shape {neighbour_labels.shape} for {labels.shape[0]} queries")
    r = relevant_counts(labels)
    has_relevant = r > 0
    if not has_relevant.any():
        raise DataError("every class has a single item: no query has anything to retrieve")
    rel = neighbour_labels[has_relevant] == labels[has_relevant, None]
    return rel, r[has_relevant]


def recall_at_k(neighbour_labels: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Recall@K: share of queries with at least one same-class item among their K nearest neighbours.

    ``neighbour_labels`` (N, >= K): class of each query's neighbours, nearest first, self excluded. With N - 1
    columns every other item is listed, so any K >= N - 1 reads them all (a set smaller than K + 1 items).
    """
    listed = np.shape(neighbour_labels)[1]
    if not 1 <= k <= listed and not (k > listed == np.shape(neighbour_labels)[0] - 1):
        raise ValueError(f"Recall@{k} needs at least {k} neighbours per query, got {np.shape(neighbour_labels)[1]}")
    rel, _ = _relevance(neighbour_labels, labels)
    return float(rel[:, :k].any(axis=1).mean())


def _precision_within_r(neighbour_labels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rel, P(i) and R over the first R(q) neighbours of each query (entries past R(q) are zeroed)."""
    rel, r = _relevance(neighbour_labels, labels)
    if rel.shape[1] < r.max():
        raise ValueError(f"MAP@R and R-precision need {r.max()} neighbours per query (the largest class minus one), "
                         f"got {rel.shape[1]}")
    rank = np.arange(1, rel.shape[1] + 1)
    within_r = rank[None, :] <= r[:, None]
    rel = rel & within_r
    precision = np.cumsum(rel, axis=1) / rank
    return rel, precision, r


def map_at_r(neighbour_labels: np.ndarray, labels: np.ndarray) -> float:
    """MAP@R (Musgrave et al. 2020): mean over queries of (1/R) sum_{i<=R} P(i) * rel(i)."""
    rel, precision, r = _precision_within_r(neighbour_labels, labels)
    return float(((precision * rel).sum(axis=1) / r).mean())


def r_precision(neighbour_labels: np.ndarray, labels: np.ndarray) -> float:
    """R-precision: mean over queries of (same-class items among the R nearest) / R."""
    rel, _, r = _precision_within_r(neighbour_labels, labels)
    return float((rel.sum(axis=1) / r).mean())


def retrieval_metrics(neighbour_idx: torch.Tensor | np.ndarray, labels: np.ndarray,
                      ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """{"R@k" for k in ks, "MAP@R", "RP"} from one leave-one-out neighbour list of >= neighbours_needed() columns."""
    labels = np.asarray(labels).reshape(-1)
    neighbour_labels = labels[np.asarray(neighbour_idx)]
    out = {f"R@{k}": recall_at_k(neighbour_labels, labels, k) for k in ks}
    out["MAP@R"] = map_at_r(neighbour_labels, labels)
    out["RP"] = r_precision(neighbour_labels, labels)
    return out


def kmeans_clusters(embeddings: torch.Tensor | np.ndarray, n_clusters: int, *, seed: int = 0) -> np.ndarray:
    """Cluster id per item: k-means++ seeding (on a sample for large sets, see SEEDING_BUDGET) then Lloyd.

    Deterministic for a fixed seed: the sample, the seeding and scikit-learn's Lloyd iterations all follow ``seed``.
    """
    x = l2_normalise(embeddings).numpy()  # Euclidean k-means on unit vectors: close to clustering by cosine
    rng = np.random.default_rng(seed)
    m = min(len(x), max(SEEDING_PER_CLUSTER * n_clusters, SEEDING_BUDGET // n_clusters))
    sample = np.sort(rng.choice(len(x), size=m, replace=False))
    # float64 sample: scikit-learn would otherwise up-cast float32 blocks to float64 again at every seeding step.
    # One BLAS thread: the seeding is k small sequential products, where thread hand-offs cost more than they gain
    # (5-10x slower with 2 threads on a busy 2-core machine).
    with threadpool_limits(1, user_api="blas"):
        centres, _ = kmeans_plusplus(x[sample].astype(np.float64), n_clusters, random_state=seed)
    km = KMeans(n_clusters, init=centres.astype(np.float32), n_init=1, max_iter=KMEANS_MAX_ITER, random_state=seed)
    return km.fit_predict(x)


def nmi(embeddings: torch.Tensor | np.ndarray, labels: np.ndarray, *, seed: int = 0) -> float:
    """NMI between classes and k-means clusters (k = number of classes); every item counts, singletons too."""
    labels = np.asarray(labels).reshape(-1)
    clusters = kmeans_clusters(embeddings, len(np.unique(labels)), seed=seed)
    return float(normalized_mutual_info_score(labels, clusters))
