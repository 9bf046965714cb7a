"""Batch samplers for training: m images per class (DML), and same/different image pairs (the judge, GRPO).

Both yield whole batches, for `DataLoader(dataset, batch_sampler=sampler)` (MPerClassSampler) or for the pair
step (PairSampler). Both are rank-aware without a DistributedSampler: every rank builds the same global stream
of batches from (seed, epoch) and keeps batches rank, rank + W, rank + 2W, ... so the shards are disjoint and,
interleaved, are exactly the single-process stream. Call `set_epoch(epoch)` before each epoch, as with
DistributedSampler; the stream is a deterministic function of (labels, seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch.utils.data import Sampler
from tqdm import tqdm

from saga.errors import ConfigError

Pair = tuple[int, int, bool]


class _RankedBatchSampler(Sampler):
    """Seed, epoch and the rank's share of `num_batches` global batches (dropping the remainder of W)."""

    def __init__(self, labels: ArrayLike, num_batches: int, *, rank: int, world_size: int, seed: int) -> None:
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.num_global = num_batches - num_batches % world_size
        if self.num_global == 0:
            raise ConfigError(f"{len(self.labels)} images give {num_batches} batches per epoch, fewer than the "
                              f"{world_size} rank(s): use smaller batches or more data")
        _, self._class_of, self._class_sizes = np.unique(self.labels, return_inverse=True, return_counts=True)
        self._members = np.argsort(self._class_of, kind="stable")  # image ids grouped by class
        self._class_start = np.concatenate([[0], np.cumsum(self._class_sizes)[:-1]])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_global // self.world_size

    def _class_members(self, c: int) -> np.ndarray:
        return self._members[self._class_start[c]: self._class_start[c] + self._class_sizes[c]]


class MPerClassSampler(_RankedBatchSampler):
    """Batches of `batch_size // m` classes with m images each (Proxy Anchor / Potential Field batches).

    Classes are balanced: each batch takes the classes used least so far this epoch (ties broken at random), so
    over an epoch every class appears equally often, +-1. Images are drawn without replacement inside a batch;
    a class with fewer than m images contributes all of them plus draws with replacement. An epoch is
    len(labels) // batch_size global batches (about one pass over the images), batch_size being per rank.

    neighbours: optional (C, k) table of each class's nearest classes (`nearest_classes`; class indexes in sorted
    label order). Each least-used class then brings one of its k neighbours (at random among those not yet in the
    batch), so half of a batch's classes are near misses of the other half; a class that is many classes' neighbour
    is then drawn more often than the others. Random classes of a fine-grained dataset are rarely siblings: without
    this, an in-batch hard negative is seldom one attribute away.
    """

    def __init__(self, labels: ArrayLike, m: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, neighbours: np.ndarray | None = None) -> None:
        if m < 1 or batch_size < 1 or batch_size % m != 0:
            raise ConfigError(f"batch_size ({batch_size}) must be a positive multiple of m ({m})")
        labels = np.asarray(labels)
        super().__init__(labels, len(labels) // batch_size, rank=rank, world_size=world_size, seed=seed)
        self.m, self.batch_size = m, batch_size
        self.classes_per_batch = batch_size // m
        if self.classes_per_batch > len(self._class_sizes):
            raise ConfigError(f"batch_size {batch_size} with m {m} needs {self.classes_per_batch} classes per "
                              f"batch; the labels have {len(self._class_sizes)}")
        if neighbours is not None and (neighbours.ndim != 2 or len(neighbours) != len(self._class_sizes)):
            raise ValueError(f"neighbours must be (classes={len(self._class_sizes)}, k), got {neighbours.shape}")
        self.neighbours = neighbours

    def _draw(self, c: int, rng: np.random.Generator) -> np.ndarray:
        members = self._class_members(c)
        if len(members) >= self.m:
            return rng.choice(members, self.m, replace=False)
        return np.concatenate([members, rng.choice(members, self.m - len(members), replace=True)])

    def global_batches(self) -> list[list[int]]:
        """The whole epoch's stream, identical on every rank."""
        rng = np.random.default_rng([self.seed, self.epoch])
        uses = np.zeros(len(self._class_sizes))
        batches = []
        for _ in range(self.num_global):
            chosen = self._classes(uses, rng)
            uses[chosen] += 1
            batches.append([int(i) for c in chosen for i in self._draw(c, rng)])
        return batches

    def _classes(self, uses: np.ndarray, rng: np.random.Generator) -> list[int]:
        # uses + U[0, 1): least-used classes first, random among equals.
        order = np.argsort(uses + rng.random(len(uses)))
        if self.neighbours is None:
            return [int(c) for c in order[: self.classes_per_batch]]
        chosen: list[int] = []
        for c in order:
            if len(chosen) == self.classes_per_batch:
                break
            if c in chosen:
                continue
            chosen.append(int(c))
            free = [int(n) for n in self.neighbours[c] if n not in chosen]
            if free and len(chosen) < self.classes_per_batch:
                chosen.append(free[rng.integers(len(free))])
        return chosen

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.global_batches()[self.rank:: self.world_size]


def nearest_classes(embeddings: np.ndarray, labels: ArrayLike, k: int) -> np.ndarray:
    """(C, k): for each class (sorted label order) the k classes whose mean normalised embedding is the most
    cosine-similar, nearest first. The table `MPerClassSampler(neighbours=...)` takes."""
    labels = np.asarray(labels)
    classes, class_of = np.unique(labels, return_inverse=True)
    if not 1 <= k < len(classes):
        raise ConfigError(f"{k} nearest classes need between 1 and {len(classes) - 1} (classes - 1)")
    emb = F.normalize(torch.as_tensor(np.asarray(embeddings, dtype=np.float32)), dim=-1)
    means = torch.zeros(len(classes), emb.shape[1]).index_add_(0, torch.as_tensor(class_of), emb)
    means = F.normalize(means, dim=-1)
    sims = (means @ means.T).fill_diagonal_(-float("inf"))
    return sims.topk(k, dim=1).indices.numpy()


class PairSampler(_RankedBatchSampler):
    """Batches of (i, j, same) image pairs: positives are two distinct images of one class, negatives two classes.

    `same_fraction` of each batch is positive. Of the negatives, `hard_negative_fraction` are hard: j is drawn
    among the `num_candidates` images of other classes most similar to i under the embeddings last given to
    `update_embeddings` (random negatives until then). Anchors are uniform over images. An epoch is
    `num_batches` global batches (default len(labels) // (2 * pairs_per_batch): each image about once).
    Each batch uses its own generator seeded by (seed, epoch, batch index), so a rank builds only its own.
    """

    def __init__(self, labels: ArrayLike, *, pairs_per_batch: int, same_fraction: float = 0.5,
                 hard_negative_fraction: float = 0.0, num_candidates: int = 10, num_batches: int | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if pairs_per_batch < 1 or not 0 <= same_fraction <= 1 or not 0 <= hard_negative_fraction <= 1:
            raise ConfigError("need pairs_per_batch >= 1 and same_fraction, hard_negative_fraction in [0, 1]")
        labels = np.asarray(labels)
        num_batches = len(labels) // (2 * pairs_per_batch) if num_batches is None else num_batches
        super().__init__(labels, num_batches, rank=rank, world_size=world_size, seed=seed)
        self.num_same = round(pairs_per_batch * same_fraction)
        self.num_diff = pairs_per_batch - self.num_same
        self.num_hard = round(self.num_diff * hard_negative_fraction)
        self.num_candidates = num_candidates
        self.hard_candidates: np.ndarray | None = None  # (N, k) image ids, set by update_embeddings
        self._anchors_with_partner = np.flatnonzero(self._class_sizes[self._class_of] >= 2)
        # Position of each image inside its class block of `_members`.
        self._slot_in_class = np.empty(len(self.labels), dtype=np.int64)
        self._slot_in_class[self._members] = np.arange(len(self.labels))
        self._slot_in_class -= self._class_start[self._class_of]
        if self.num_same and len(self._anchors_with_partner) == 0:
            raise ConfigError("positive pairs need a class with at least two images; none has")
        if self.num_diff and len(self._class_sizes) < 2:
            raise ConfigError("negative pairs need at least two classes")

    @torch.no_grad()
    def update_embeddings(self, embeddings: np.ndarray | torch.Tensor, chunk_size: int = 1024) -> None:
        """Hard-negative table from embeddings (N, D) of the images `labels` describes, in the same order.

        For each image, the `num_candidates` most cosine-similar images of other classes. Under DDP pass the same
        (gathered) embeddings on every rank. Batches built after the call use it (a DataLoader prefetches a few).
        """
        if isinstance(embeddings, torch.Tensor):
            emb = embeddings.detach().cpu().float()
        else:
            emb = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
        if emb.ndim != 2 or emb.shape[0] != len(self.labels):
            raise ValueError(f"embeddings must be ({len(self.labels)}, D), got {tuple(emb.shape)}")
        emb = F.normalize(emb, dim=-1)
        k = min(self.num_candidates, len(self.labels) - int(self._class_sizes.max()))
        labels = torch.as_tensor(self.labels)
        table = []
        starts = range(0, len(emb), chunk_size)
        for start in tqdm(starts, desc="hard negatives", disable=len(starts) < 2, leave=False):
            sims = emb[start: start + chunk_size] @ emb.T
            sims[labels[start: start + chunk_size, None] == labels[None, :]] = -float("inf")
            table.append(sims.topk(k, dim=1).indices)
        self.hard_candidates = torch.cat(table).numpy()

    def _positives(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        i = rng.choice(self._anchors_with_partner, n)
        c = self._class_of[i]
        # Uniform over the class's other images: skip the anchor's own slot.
        slot = rng.integers(0, self._class_sizes[c] - 1)
        slot += slot >= self._slot_in_class[i]
        return i, self._members[self._class_start[c] + slot]

    def _random_negatives(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        i = rng.integers(0, len(self.labels), n)
        c = self._class_of[i]
        # Uniform over images of other classes: skip the anchor's class block in the class-grouped order.
        slot = rng.integers(0, len(self.labels) - self._class_sizes[c])
        slot += (slot >= self._class_start[c]) * self._class_sizes[c]
        return i, self._members[slot]

    def _hard_negatives(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        i = rng.integers(0, len(self.labels), n)
        pick = rng.integers(0, self.hard_candidates.shape[1], n)
        return i, self.hard_candidates[i, pick]

    def batch(self, index: int) -> list[Pair]:
        """Global batch `index` of the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        num_hard = self.num_hard if self.hard_candidates is not None else 0
        parts = [self._positives(rng, self.num_same), self._random_negatives(rng, self.num_diff - num_hard)]
        if num_hard:
            parts.append(self._hard_negatives(rng, num_hard))
        i = np.concatenate([p[0] for p in parts])
        j = np.concatenate([p[1] for p in parts])
        order = rng.permutation(len(i))  # positives and negatives interleaved
        return [(int(i[o]), int(j[o]), bool(self.labels[i[o]] == self.labels[j[o]])) for o in order]

    def __iter__(self) -> Iterator[list[Pair]]:
        for index in range(self.rank, self.num_global, self.world_size):
            yield self.batch(index)
