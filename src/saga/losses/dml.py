"""What the proxy-based metric-learning losses share (docs/method.md, "L_DML").

Datasets label images with dataset-wide class ids (CUB train classes 0..99, test 100..199; other datasets need
not be contiguous), while proxies are rows 0..C-1 of a matrix. `ProxyLoss` owns that mapping: it is built from
the training class ids and remaps labels in `forward`, so the caller passes `Split.labels` as they are. Proxies
are exposed through `proxy_parameters()` because they are trained in their own parameter group (Proxy Anchor:
100x the backbone learning rate).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from saga.errors import DataError
from saga.losses.base import LossTerms


class ProxyLoss(nn.Module, ABC):
    """Base class: class-id remapping and the proxy parameter group. Subclasses implement `compute`."""

    def __init__(self, num_classes: int, class_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        ids = torch.arange(num_classes) if class_ids is None else torch.as_tensor(list(class_ids), dtype=torch.long)
        if ids.numel() != num_classes or ids.unique().numel() != num_classes:
            raise ValueError(f"class_ids must be {num_classes} distinct ids, got {ids.numel()} "
                             f"({ids.unique().numel()} distinct)")
        self.num_classes = num_classes
        # Kept in the state dict: a checkpoint then records which dataset class each proxy row stands for.
        self.register_buffer("class_ids", ids.sort().values)

    def remap(self, labels: torch.Tensor) -> torch.Tensor:
        """Dataset class ids -> proxy rows 0..C-1; DataError naming the ids that are not training classes."""
        labels = labels.to(self.class_ids.device, torch.long)
        rows = torch.searchsorted(self.class_ids, labels).clamp(max=self.num_classes - 1)
        unknown = self.class_ids[rows] != labels
        if unknown.any():
            bad = sorted(set(labels[unknown].tolist()))[:10]
            raise DataError(f"labels {bad} are not among the {self.num_classes} training classes of the DML loss "
                            "(a test-class image in the training batch, or a wrong num_classes)")
        return rows

    @abstractmethod
    def proxy_parameters(self) -> Iterator[nn.Parameter]:
        """The proxies, for their own optimizer parameter group."""

    @abstractmethod
    def compute(self, embeddings: torch.Tensor, rows: torch.Tensor) -> LossTerms:
        """The loss on embeddings (B, D) with labels already remapped to proxy rows (B,)."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        # float32: the losses exponentiate scaled similarities (alpha = 32), too coarse in bf16.
        return self.compute(embeddings.float(), self.remap(labels))
