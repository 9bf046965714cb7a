"""What one training step sees: its m-per-class batch of train images, and the image pairs the judge compares.

Data order is a pure function of (seed, step): step s reads batch s mod E of epoch s // E of an
`MPerClassSampler` (E batches per epoch), and the pairs of step s are drawn with a generator seeded by
(seed, step). A resumed run therefore needs no sampler state to continue exactly where it stopped.

Pair mining is in-batch (docs/design.md, "One SAGA step"): the pairs are formed from the images the encoder
has already run on, so the vision tower runs once per image per step and the judge's gradient and the DML loss
reach the same forward pass. Hard negatives are the most similar different-class image of the batch under the
current, detached embeddings. A global miner (PairSampler with periodic re-embedding of the train split) would find
harder negatives, but its pairs would need a second tower pass and embeddings that are up to a refresh period
stale. In-batch mining finds near misses only if the batch holds near classes: random classes seldom do (in the
synthetic world 2 of 26 logged negatives were siblings), so `dml.neighbour_classes` builds batches of classes
paired with one of their nearest classes under the initial encoder (`class_neighbours`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from saga.data.base import Split
from saga.data.samplers import MPerClassSampler, nearest_classes
from saga.errors import ConfigError
from saga.models import ImagePreprocessor, MeanPooler, RetrievalModel, VisionEncoder, embed_split


class StepBatches:
    """batch(step) -> image ids of the split: the step-indexed stream of m-per-class batches (with `neighbours`,
    each class paired with a near one: `MPerClassSampler`); with world_size > 1, this rank's share of each."""

    def __init__(self, labels: np.ndarray, *, m: int, batch_size: int, seed: int,
                 neighbours: np.ndarray | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.sampler = MPerClassSampler(labels, m, batch_size, seed=seed, neighbours=neighbours, rank=rank,
                                        world_size=world_size)
        self._epoch: int | None = None
        self._batches: list[list[int]] = []

    def batch(self, step: int) -> list[int]:
        epoch, index = divmod(step, len(self.sampler))
        if epoch != self._epoch:  # one epoch's stream is built at once; keep it for its E steps
            self.sampler.set_epoch(epoch)
            self._batches, self._epoch = self.sampler.global_batches(), epoch
        return self.sampler.shard(self._batches[index])

    def steps(self, start: int, stop: int) -> Iterator[list[int]]:
        """The batches of steps start..stop-1 (a DataLoader `batch_sampler`)."""
        return (self.batch(step) for step in range(start, stop))


def class_neighbours(encoder: VisionEncoder, preprocessor: ImagePreprocessor, split: Split, *, k: int,
                     batch_size: int, images_per_class: int = 10) -> np.ndarray:
    """The (C, k) nearest-class table of `split` under `encoder` (mean-pooled tokens, before any training step):
    class means of the first `images_per_class` images of each class, which is enough to rank classes and costs a
    fraction of a pass over the split. A resumed run reads back the table its first attempt wrote."""
    keep = np.concatenate([np.flatnonzero(split.labels == c)[:images_per_class] for c in np.unique(split.labels)])
    keep.sort()
    subset = Split(split.name, [split.paths[i] for i in keep], split.labels[keep], split.class_names)
    res = embed_split(RetrievalModel(encoder, MeanPooler(), preprocessor), subset, batch_size=batch_size)
    return nearest_classes(res.embeddings, res.labels, k)


@dataclass
class Pairs:
    """P image pairs, as positions in the step's batch. same: same class; hard: a mined hardest negative."""

    a: list[int]
    b: list[int]
    same: list[bool]
    hard: list[bool]

    def __len__(self) -> int:
        return len(self.a)

    def interleaved(self) -> list[int]:
        """a0, b0, a1, b1, ...: the image order the judge's rollout and scoring expect."""
        return [i for pair in zip(self.a, self.b, strict=True) for i in pair]


def step_rng(seed: int, step: int, stream: int, rank: int = 0) -> np.random.Generator:
    """An independent generator for (seed, step, stream) and, in data-parallel training, the rank: reproducible
    without saved state. Rank 0 draws what a single process draws."""
    return np.random.default_rng([seed, step, stream] + ([rank] if rank else []))


def _anchors(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n anchors from `pool` in random order, each used once before any is used again."""
    return np.resize(rng.permutation(pool), n) if n else pool[:0]


def mine_pairs(embeddings: torch.Tensor, labels: torch.Tensor, *, num_pairs: int, same_fraction: float,
               hard_negative_fraction: float, rng: np.random.Generator) -> Pairs:
    """Draw `num_pairs` pairs from one batch: round(P * same_fraction) positives (an anchor and a random classmate),
    the rest negatives, of which round(negatives * hard_negative_fraction) pair the anchor with its most cosine-
    similar image of another class and the others with a random image of another class. Anchors are distinct
    while the batch has enough images."""
    labels = labels.cpu()
    same_class = labels[:, None] == labels[None, :]
    classmates = same_class & ~torch.eye(len(labels), dtype=torch.bool)
    num_same = round(num_pairs * same_fraction)
    num_diff = num_pairs - num_same
    num_hard = round(num_diff * hard_negative_fraction)
    with_partner = torch.nonzero(classmates.any(1)).flatten().numpy()
    if num_same and len(with_partner) == 0:
        raise ConfigError("same-class pairs need m_per_class >= 2")
    if num_diff and bool(same_class.all()):
        raise ConfigError("different-class pairs need at least two classes per batch (batch_size / m_per_class)")

    sims = F.normalize(embeddings.detach().float().cpu(), dim=-1)
    sims = (sims @ sims.T).masked_fill(same_class, -float("inf"))
    rows: list[tuple[int, int, bool, bool]] = []  # (a, b, same, hard)
    for i in _anchors(with_partner, num_same, rng):
        rows.append((int(i), int(rng.choice(torch.nonzero(classmates[i]).flatten().numpy())), True, False))
    for k, i in enumerate(_anchors(np.arange(len(labels)), num_diff, rng)):
        is_hard = k < num_hard
        j = sims[i].argmax() if is_hard else rng.choice(torch.nonzero(~same_class[i]).flatten().numpy())
        rows.append((int(i), int(j), False, is_hard))
    a, b, same, hard = (list(column) for column in zip(*rows, strict=True)) if rows else ([], [], [], [])
    return Pairs(a, b, same, hard)
