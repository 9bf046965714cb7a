"""Embed a dataset split: images -> encoder -> pooler -> L2-normalised embeddings (the deployed model, docs/design.md).

One path serves every use: a pre-trained backbone (`RetrievalModel.from_backbone`: its vision tower with mean
pooling, the paper's "pre-trained backbone" row), a trained model (`load_model`) and the model being trained.
Images are decoded and preprocessed in DataLoader batches; the model sees whole batches under
`torch.inference_mode`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from saga.data.base import ImageDataset, Split
from saga.errors import DataError
from saga.models.retrieval import RetrievalModel
from saga.progress import progress


@dataclass
class EmbedResult:
    """embeddings: (N, E) float32, rows of unit L2 norm, in the split's order; labels: (N,) int64; paths: N image
    paths; images_per_s: throughput of the embedding loop (decoding included, model loading excluded)."""

    embeddings: np.ndarray
    labels: np.ndarray
    paths: list[str]
    images_per_s: float


def embed_split(model: RetrievalModel, split: Split, *, batch_size: int = 32,
                num_workers: int | None = None) -> EmbedResult:
    """Embed every image of `split` with `model` (on its device and dtype; its train/eval mode is restored
    afterwards). num_workers: DataLoader worker processes; None = 0 on CPU (the model needs the cores), else up
    to 8."""
    if len(split) == 0:
        raise DataError(f"split {split.name!r} has no images to embed")
    device = model.device
    if num_workers is None:
        num_workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    loader = DataLoader(ImageDataset(split), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=model.preprocessor.collate, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    chunks, labels = [], []
    start = time.perf_counter()
    try:
        with torch.inference_mode(), progress(total=len(split), desc=f"embed {split.name}", unit="img") as bar:
            for inputs, batch_labels in loader:
                embedding = model(inputs["pixel_values"], inputs["image_grid_thw"]).embedding
                chunks.append(F.normalize(embedding.float(), dim=-1).cpu())
                labels.append(batch_labels)
                bar.update(len(batch_labels))
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    return EmbedResult(
        embeddings=torch.cat(chunks).numpy().astype(np.float32),
        labels=torch.cat(labels).numpy(),
        paths=[str(p) for p in split.paths],
        images_per_s=len(split) / max(elapsed, 1e-9),
    )


def save_embeddings(path: str | Path, res: EmbedResult, *, model: str, kind: str, image_size: int) -> Path:
    """Write `res` as the .npz of `saga embed`: embeddings, labels, paths, and what embedded them (model: a hub id
    or folder; kind: "backbone" or "model", a `saga train` export; image_size), so that `saga search` embeds its
    query images the same way. A local folder is recorded as an absolute path."""
    if kind not in ("backbone", "model"):
        raise ValueError(f"kind must be 'backbone' or 'model', not {kind!r}")
    model = str(Path(model).resolve()) if Path(model).is_dir() else str(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, embeddings=res.embeddings, labels=res.labels, paths=np.array(res.paths), model=np.array(model),
             model_kind=np.array(kind), image_size=np.array(image_size))
    return path
