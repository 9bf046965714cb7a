"""Embed a dataset split: images -> encoder -> pooler -> L2-normalised embeddings (the deployed model, DESIGN.md).

One path serves both uses: `embed_split(backbone, split)` evaluates a pre-trained backbone (its vision tower with
mean pooling over the merged tokens, the paper's "pre-trained backbone" row), and `embed_split(None, split,
encoder=..., pooler=..., processor=...)` evaluates a trained encoder and pooler. Images are decoded and
preprocessed in DataLoader batches; the encoder sees whole batches under `torch.inference_mode`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from saga.data.base import ImageDataset, Split
from saga.errors import DataError
from saga.models.backbone import load_processor
from saga.models.encoder import VisionEncoder
from saga.models.poolers import MeanPooler
from saga.models.preprocess import ImagePreprocessor


@dataclass
class EmbedResult:
    """embeddings: (N, E) float32, rows of unit L2 norm, in the split's order; labels: (N,) int64; paths: N image
    paths; images_per_s: throughput of the embedding loop (decoding included, model loading excluded)."""

    embeddings: np.ndarray
    labels: np.ndarray
    paths: list[str]
    images_per_s: float


class _Collate:
    """[(image, label), ...] -> (tower inputs, labels); a class, not a closure, so DataLoader workers can pickle it."""

    def __init__(self, preprocessor: ImagePreprocessor) -> None:
        self.preprocessor = preprocessor

    def __call__(self, batch: list[tuple]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        images, labels = zip(*batch, strict=True)
        return self.preprocessor(images), torch.tensor(labels, dtype=torch.int64)


def embed_split(backbone: str | Path | None, split: Split, *, image_size: int = 224, batch_size: int = 32,
                device: str = "auto", dtype: str | torch.dtype = "auto", trust_remote_code: bool = False,
                pooler: nn.Module | None = None, encoder: VisionEncoder | None = None, processor=None,
                num_workers: int | None = None) -> EmbedResult:
    """Embed every image of `split`.

    backbone: hub id or checkpoint directory; its vision tower is loaded unless `encoder` is given, and its image
        processor unless `processor` is given.
    encoder, pooler: an already built encoder (used on its own device and dtype; device/dtype are then ignored)
        and pooler (default: `MeanPooler`). Their train/eval modes are restored afterwards.
    num_workers: DataLoader worker processes; None = 0 on CPU (the model needs the cores), else up to 8.
    """
    if len(split) == 0:
        raise DataError(f"split {split.name!r} has no images to embed")
    if encoder is None or processor is None:
        if backbone is None:
            raise ValueError("embed_split: give a backbone, or both encoder= and processor=")
        if encoder is None:
            encoder = VisionEncoder.from_pretrained(backbone, device=device, dtype=dtype)
        if processor is None:
            processor = load_processor(backbone, trust_remote_code=trust_remote_code)
    pooler = pooler if pooler is not None else MeanPooler()
    if num_workers is None:
        num_workers = 0 if encoder.device.type == "cpu" else min(8, os.cpu_count() or 1)
    loader = DataLoader(ImageDataset(split), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_Collate(ImagePreprocessor(processor, image_size)),
                        pin_memory=encoder.device.type == "cuda")
    pooler_param = next(pooler.parameters(), None)
    pool_dtype = pooler_param.dtype if pooler_param is not None else torch.float32

    modes = encoder.training, pooler.training
    encoder.eval(), pooler.eval()
    chunks, labels = [], []
    start = time.perf_counter()
    try:
        with torch.inference_mode(), tqdm(total=len(split), desc=f"embed {split.name}", unit="img",
                                          disable=None) as bar:
            for inputs, batch_labels in loader:
                tokens, mask = encoder(inputs["pixel_values"], inputs["image_grid_thw"]).padded()
                embedding = pooler(tokens.to(pool_dtype), mask).embedding
                chunks.append(F.normalize(embedding.float(), dim=-1).cpu())
                labels.append(batch_labels)
                bar.update(len(batch_labels))
    finally:
        encoder.train(modes[0]), pooler.train(modes[1])
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
