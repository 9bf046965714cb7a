"""Embed images with an ONNX export of the retrieval model: ONNX Runtime, numpy and PIL, no torch.

    from saga.deploy.onnx_runtime import OnnxRetrievalModel
    model = OnnxRetrievalModel.from_pretrained("exports/cub-onnx")
    embeddings = model.embed(["a.jpg", "b.jpg"])      # (2, E) float32, unit rows

or from a shell (image files and/or folders, searched recursively):

    python -m saga.deploy.onnx_runtime exports/cub-onnx a.jpg photos/ --out embeddings.npz

The folder is what `saga.deploy.onnx_export.export_onnx` writes: `model.onnx` (maybe with `model.onnx.data`) and
`saga_onnx.json`. The graph takes normalised square images (B, 3, S, S) float32 and returns L2-normalised
embeddings (B, E); this module does the rest of `saga.models.preprocess.ImagePreprocessor` with the same
arithmetic, so the pixels match it exactly: PIL bicubic resize to S x S, x * rescale_factor in float64 rounded to
float32, then (x - mean) / std in float32.

Nothing here may import torch (directly or through saga modules that do); a test checks it with torch blocked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from saga.errors import CheckpointError, DataError, SagaError
from saga.images import load_image

CONFIG = "saga_onnx.json"
FORMAT = "saga-onnx/1"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class OnnxPreprocessor:
    """PIL images -> (B, 3, side, side) float32, the ONNX graph's input."""

    side: int
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: dict) -> OnnxPreprocessor:
        return cls(int(config["image_size"]), float(config["rescale_factor"]), tuple(config["image_mean"]),
                   tuple(config["image_std"]))

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = np.empty((len(images), 3, self.side, self.side), dtype=np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        for i, image in enumerate(images):
            square = image.convert("RGB").resize((self.side, self.side), Image.Resampling.BICUBIC)
            # As transformers' rescale: upcast to float64 before scaling, round to float32 after.
            pixels = (np.asarray(square, dtype=np.uint8).astype(np.float64) * self.rescale_factor).astype(np.float32)
            out[i] = ((pixels - mean) / std).transpose(2, 0, 1)
        return out


class OnnxRetrievalModel:
    """An ONNX Runtime session of the exported graph + its preprocessing: images -> unit-norm embeddings."""

    def __init__(self, session, config: dict) -> None:
        self.session, self.config = session, config
        self.preprocessor = OnnxPreprocessor.from_config(config)
        self.input_name = config["input"]["name"]
        self.output_name = config["output"]["name"]
        self.embed_dim = int(config["embed_dim"])

    @property
    def image_size(self) -> int:
        return self.preprocessor.side

    @classmethod
    def from_pretrained(cls, path: str | Path, *, providers: Sequence[str] | None = None,
                        threads: int | None = None) -> OnnxRetrievalModel:
        """The export folder at `path`. providers: ONNX Runtime execution providers (default CPU only);
        threads: intra-op threads (default: ONNX Runtime's choice, all cores)."""
        import onnxruntime as ort

        config = read_config(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        model_file = Path(path) / config["model"]
        try:
            session = ort.InferenceSession(str(model_file), options,
                                           providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own, unexported exception types
            raise CheckpointError(f"{model_file}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None
        return cls(session, config)

    def embed(self, images: Sequence[Image.Image | str | Path], *, batch_size: int = 32) -> np.ndarray:
        """(N, E) float32 L2-normalised embeddings of PIL images or image files."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = [img if isinstance(img, Image.Image) else load_image(img)
                     for img in images[start:start + batch_size]]
            chunks.append(self.run(self.preprocessor(batch)))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embed_dim), dtype=np.float32)

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """The graph on preprocessed images (B, 3, S, S) -> (B, E) unit rows."""
        (embedding,) = self.session.run([self.output_name], {self.input_name: pixel_values})
        return embedding.astype(np.float32, copy=False)


def read_config(path: str | Path) -> dict:
    """The export folder's saga_onnx.json, checked for the keys this module reads."""
    file = Path(path) / CONFIG
    try:
        config = json.loads(file.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"format {config.get('format')!r}, expected {FORMAT!r}")
        for key in ("model", "image_size", "rescale_factor", "image_mean", "image_std", "embed_dim", "input",
                    "output"):
            if key not in config:
                raise KeyError(key)
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{file}: not a saga ONNX export ({type(e).__name__}: {e})") from None
    return config


def image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files and folders -> image files: a folder gives its images (by suffix, recursively, sorted,
    hidden entries skipped); a file is taken as given, whatever its suffix."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            paths.append(item)
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(item):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # in place: os.walk skips the rest
            found += [Path(dirpath) / f for f in filenames
                      if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise DataError(f"{item}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += sorted(found)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m saga.deploy.onnx_runtime",
                                     description="Embed images with a saga ONNX export (no torch needed).")
    parser.add_argument("model", help="export folder (model.onnx + saga_onnx.json)")
    parser.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--out", required=True, help=".npz to write: embeddings (N, E) float32, paths (N,)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = OnnxRetrievalModel.from_pretrained(args.model, threads=args.threads)
        paths = image_paths(args.images)
        embeddings = model.embed(paths, batch_size=args.batch_size)
    except SagaError as e:  # bad input: say what and where, no traceback
        print(f"saga: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.suffix != ".npz":  # np.savez would add it
        out = out.with_name(out.name + ".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, embeddings=embeddings, paths=np.array([str(p) for p in paths]))
    print(f"{len(paths)} embeddings of width {embeddings.shape[1]} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
