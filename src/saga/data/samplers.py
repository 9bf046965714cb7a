"""The training batch sampler: m images per class (the batches of Proxy Anchor, Potential Field and SAGA), and the
nearest-class table that makes its batches hold near misses.

`MPerClassSampler` yields whole batches, for `DataLoader(dataset, batch_sampler=sampler)`. It is rank-aware without
a DistributedSampler: every rank builds the same global stream of batches from (seed, epoch) and keeps batches
rank, rank + W, rank + 2W, ... so the shards are disjoint and, interleaved, are exactly the single-process stream.
Call `set_epoch(epoch)` before each epoch, as with DistributedSampler; the stream is a deterministic function of
(labels, seed, epoch). SAGA's image pairs are mined inside each batch (saga.train.batches).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch.utils.data import Sampler

from saga.errors import ConfigError


class MPerClassSampler(Sampler):
    """Batches of `batch_size // m` classes with m images each (Proxy Anchor / Potential Field batches).

    Classes are balanced: each batch takes the classes used least so far this epoch (ties broken at random), so
    over an epoch every class appears equally often, +-1. Images are drawn without replacement inside a batch;
    a class with fewer than m images contributes all of them plus draws with replacement. An epoch is
    len(labels) // batch_size batches (about one pass over the images).

    batch_size is the global batch. With `world_size` W > 1 every rank builds the same global stream and yields its
    share of each batch: whole classes, `batch_size // m // W` of them (rank r the r-th block), so the W shards of
    a batch are exactly the single-process batch (saga.train.distributed).

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
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.m, self.batch_size, self.classes_per_batch = m, batch_size, batch_size // m
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        if self.classes_per_batch % world_size:
            raise ConfigError(f"a batch of {self.classes_per_batch} classes (dml.batch_size / dml.m_per_class) does "
                              f"not split into whole classes over {world_size} processes")
        self.num_global = len(self.labels) // batch_size
        if self.num_global == 0:
            raise ConfigError(f"{len(self.labels)} images are fewer than one batch of {batch_size}")
        _, self._class_of, self._class_sizes = np.unique(self.labels, return_inverse=True, return_counts=True)
        self._members = np.argsort(self._class_of, kind="stable")  # image ids grouped by class
        self._class_start = np.concatenate([[0], np.cumsum(self._class_sizes)[:-1]])
        if self.classes_per_batch > len(self._class_sizes):
            raise ConfigError(f"batch_size {batch_size} with m {m} needs {self.classes_per_batch} classes per "
                              f"batch; the labels have {len(self._class_sizes)}")
        if neighbours is not None and (neighbours.ndim != 2 or len(neighbours) != len(self._class_sizes)):
            raise ValueError(f"neighbours must be (classes={len(self._class_sizes)}, k), got {neighbours.shape}")
        self.neighbours = neighbours

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_global

    def _class_members(self, c: int) -> np.ndarray:
        return self._members[self._class_start[c]: self._class_start[c] + self._class_sizes[c]]

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's share of a global batch (which is class-major: m images per class, in order)."""
        size = len(batch) // self.world_size
        return batch[self.rank * size:(self.rank + 1) * size]

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
        yield from map(self.shard, self.global_batches())


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
