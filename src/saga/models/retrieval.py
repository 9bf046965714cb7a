"""The deployable model: encoder + pooler + preprocessing -> one L2-normalised embedding per image.

At inference only the encoder and the pooler remain (docs/method.md, "The method"); the judge is not part of it.

    import saga
    model = saga.load_model("runs/cub/saga/export")       # an export, a run folder, or a `saga export` folder
    model = saga.load_model("Qwen/Qwen3-VL-8B-Instruct", image_size=448)   # a checkpoint's tower, mean pooling
    embeddings = model.embed(images)                        # (N, E) float32, unit rows, on model.device

`RetrievalModel.forward` is the one place where encoder tokens become a pooled embedding: training steps, split
embedding and the report all call it. `load_model` also reads AGFF-Embed's folders (saga.models.agff: the MLLM
itself as the embedder), which share this interface: forward(...).embedding, embed, save_pretrained,
from_pretrained, image_size, preprocessor, device.

A saved model (`save_pretrained`) is a folder that needs nothing else:
    encoder.safetensors       the vision tower's weights
    pooler.safetensors        the pooler's weights (empty for the mean pooler)
    preprocessor_config.json  the image processor (patch size, normalisation)
    saga_model.json           what to rebuild: tower family and config, pooler spec, image size, and the training
                              run's record (method, dataset, steps, test metrics, config) when there is one
    README.md                 a model card written from that record
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import Qwen2VLImageProcessorPil

from saga.errors import CheckpointError
from saga.models.backbone import FAMILIES, load_processor, resolve_checkpoint
from saga.models.encoder import EncoderOutput, VisionEncoder
from saga.models.poolers import MeanPooler, build_pooler
from saga.models.preprocess import ImagePreprocessor
from saga.registry import Registry
from saga.utils import default_permissions, resolve_device

if TYPE_CHECKING:
    from saga.models.agff import AgffModel

MANIFEST = "saga_model.json"
FORMAT = "saga-encoder/1"


@dataclass
class RetrievalOutput:
    """embedding: (B, E), not normalised; attention: (B, T) the pooler's weights over the tokens (None for mean
    pooling); mask: (B, T) True at real tokens; features: the encoder's per-image outputs (what the judge reads)."""

    embedding: Tensor
    attention: Tensor | None
    mask: Tensor
    features: EncoderOutput


class RetrievalModel(nn.Module):
    """encoder (a trainable Qwen-VL vision tower) + pooler + the image preprocessing they were trained with."""

    def __init__(self, encoder: VisionEncoder, pooler: nn.Module, preprocessor: ImagePreprocessor) -> None:
        super().__init__()
        self.encoder, self.pooler, self.preprocessor = encoder, pooler, preprocessor

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def image_size(self) -> int:
        return self.preprocessor.side

    def forward(self, pixel_values: Tensor, image_grid_thw: Tensor) -> RetrievalOutput:
        features = self.encoder(pixel_values, image_grid_thw)
        tokens, mask = features.padded()
        # float32 pooling: the pooler and the losses after it are fp32 beside a bf16 tower.
        pooled = self.pooler(tokens.float(), mask)
        return RetrievalOutput(pooled.embedding, pooled.attention, mask, features)

    @property
    def embed_dim(self) -> int:
        """Width of the embedding."""
        return self.pooler.spec()["embed_dim"] or self.encoder.out_dim

    def embed(self, images: Sequence[Image.Image | str | Path], *, batch_size: int = 32) -> Tensor:
        """(N, E) float32 L2-normalised embeddings of PIL images or image files, on the model's device."""
        return embed_images(self, images, batch_size=batch_size)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """What a training checkpoint saves of this model, by file name (saga.train.checkpoint)."""
        return {"encoder": self.encoder, "pooler": self.pooler}

    # ------------------------------------------------------------ saving and loading
    def save_pretrained(self, path: str | Path, *, run: dict | None = None) -> Path:
        """Write the folder of the module docstring, atomically (a killed save leaves the previous folder or none).
        run: the training run's record (method, dataset, steps, test_metrics, config), kept in the manifest and
        written as a model card."""
        family = next((k for k, (_, tower_cls) in FAMILIES.items() if isinstance(self.encoder.tower, tower_cls)),
                      None)
        if family is None:
            raise TypeError(f"cannot save a tower of type {type(self.encoder.tower).__name__}")

        def write(tmp: Path) -> None:
            save_file({k: v.detach().contiguous() for k, v in self.encoder.tower.state_dict().items()},
                      tmp / "encoder.safetensors")
            save_file({k: v.detach().contiguous() for k, v in self.pooler.state_dict().items()},
                      tmp / "pooler.safetensors")
            self.preprocessor.image_processor.save_pretrained(tmp)
            manifest = {
                "format": FORMAT,
                "tower": {"family": family, "config": self.encoder.tower.config.to_dict(),
                          "dtype": str(self.encoder.dtype)},
                "pooler": self.pooler.spec(),
                "image_size": self.image_size,
                "run": run or {},
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            (tmp / "README.md").write_text(model_card(manifest))

        return write_folder(path, write)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu") -> RetrievalModel:
        """A saved model (see the module docstring), in eval mode on `device`."""
        path = Path(path)
        file = path / MANIFEST
        try:
            manifest = json.loads(file.read_text())
            tower_cls = FAMILIES[manifest["tower"]["family"]][1]
            config = tower_cls.config_class.from_dict(manifest["tower"]["config"])
            dtype = getattr(torch, manifest["tower"]["dtype"].removeprefix("torch."))
            spec = manifest["pooler"]
            pooler = build_pooler(spec["name"], spec["dim"], num_heads=spec["num_heads"], embed_dim=spec["embed_dim"])
            image_size = int(manifest["image_size"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{file}: not a saga export folder ({type(e).__name__}: {e})") from None
        tower = tower_cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
        load_tensors(tower, path / "encoder.safetensors")
        load_tensors(pooler, path / "pooler.safetensors")
        model = cls(VisionEncoder(tower), pooler, ImagePreprocessor(load_image_processor(path), image_size))
        return model.to(resolve_device(str(device))).eval()

    @classmethod
    def from_backbone(cls, id_or_path: str | Path, *, image_size: int = 224, device: str = "auto",
                      dtype: str | torch.dtype = "auto", trust_remote_code: bool = False) -> RetrievalModel:
        """A Qwen-VL checkpoint's own tower with mean pooling: the paper's "pre-trained backbone" row."""
        encoder = VisionEncoder.from_pretrained(id_or_path, device=device, dtype=dtype)
        processor = load_processor(id_or_path, trust_remote_code=trust_remote_code)
        return cls(encoder, MeanPooler(encoder.out_dim), ImagePreprocessor(processor, image_size)).eval()


# Saved-model classes by their manifest's "format"; saga.models.agff adds AGFF-Embed's.
MODEL_FORMATS: Registry[type[nn.Module]] = Registry("saved model format")
MODEL_FORMATS.register(FORMAT, RetrievalModel)


def manifest_format(folder: Path) -> str:
    """The "format" of a saved model folder's manifest (a folder from before the field was checked counts as
    "saga-encoder/1", the only format then)."""
    file = folder / MANIFEST
    try:
        return str(json.loads(file.read_text()).get("format", FORMAT))
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{file}: not a saga model manifest ({type(e).__name__}: {e})") from None


def load_model(path: str | Path, *, device: str | torch.device = "auto", image_size: int | None = None,
               dtype: str | torch.dtype = "auto", trust_remote_code: bool = False) -> RetrievalModel | AgffModel:
    """The retrieval model at `path`: a saved model folder (`saga export`, a run's export/; the class is chosen by
    its manifest's "format", `MODEL_FORMATS`), a `saga train` run folder (its export/), or else a Qwen-VL checkpoint
    (hub id or directory) whose tower is used with mean pooling.
    image_size: for a checkpoint, the square side images are resized to (default 224); a saved model keeps the
    size it was trained at unless given. dtype / trust_remote_code: checkpoints only."""
    folder = Path(path)
    for candidate in (folder, folder / "export"):
        if (candidate / MANIFEST).is_file():
            fmt = manifest_format(candidate)
            if fmt not in MODEL_FORMATS:
                raise CheckpointError(f"{candidate / MANIFEST}: format {fmt!r} is not one this saga reads "
                                      f"({', '.join(MODEL_FORMATS.names())})")
            model = MODEL_FORMATS.get(fmt).from_pretrained(candidate, device=device)
            if image_size is not None:
                model.preprocessor = ImagePreprocessor(model.preprocessor.image_processor, image_size)
            return model
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: neither a saga model folder ({MANIFEST}), a run folder with export/, nor "
                              "a model checkpoint (config.json)")
    resolve_checkpoint(path)  # a clear error for a path that is neither
    return RetrievalModel.from_backbone(path, image_size=image_size or 224, device=str(device), dtype=dtype,
                                        trust_remote_code=trust_remote_code)


def embed_images(model: nn.Module, images: Sequence[Image.Image | str | Path], *, batch_size: int = 32) -> Tensor:
    """(N, E) float32 L2-normalised embeddings of PIL images or image files through any saved-model class (its
    `preprocessor`, `forward(...).embedding`, `embed_dim`, `device`), on the model's device, in eval mode."""
    from saga.data.base import load_image

    was_training = model.training
    model.eval()
    try:
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = [img if isinstance(img, Image.Image) else load_image(img)
                         for img in images[start:start + batch_size]]
                chunks.append(F.normalize(model(**model.preprocessor(batch)).embedding.float(), dim=-1))
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, model.embed_dim, device=model.device)


def load_tensors(module: nn.Module, file: Path) -> None:
    """A saved folder's safetensors file into `module` (strict), or an error naming the file."""
    try:
        module.load_state_dict(load_file(file), strict=True)
    except (OSError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"{file}: unreadable, or its tensors do not match {MANIFEST} "
                              f"({type(e).__name__}: {e})") from None


def load_image_processor(path: Path) -> Qwen2VLImageProcessorPil:
    """A saved folder's image processor (preprocessor_config.json), or an error naming the folder."""
    try:
        return Qwen2VLImageProcessorPil.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: no readable preprocessor_config.json ({e})") from None


def write_folder(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a model folder atomically: `write(tmp)` fills a fresh sibling folder, which then replaces `path` (a
    killed save leaves the previous folder or none)."""
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    default_permissions(tmp)  # safetensors writes 0600
    old = out.with_name(out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def model_card(manifest: dict) -> str:
    """A README for a saved model: what it is, how it was trained and tested, how to use it."""
    run = manifest.get("run") or {}
    lines = [f"# saga retrieval model: {run.get('method', 'vision encoder')}"
             + (f" on {run['dataset']}" if run.get("dataset") else ""), "",
             "A vision encoder and pooler that map an image to one L2-normalised embedding; nearest neighbours by "
             "cosine similarity retrieve images of the same class. Trained with saga "
             "(SAGA, arXiv 2606.15134, and metric-learning baselines).", "",
             f"- tower: {manifest['tower']['family']} ({manifest['tower']['dtype']}), pooler: "
             f"{manifest['pooler']['name']}, input: {manifest['image_size']} px squares"]
    if run.get("steps") is not None:
        lines.append(f"- training: {run['steps']} steps")
    return card_tail(lines, run, shape="(2, E)", usage=[
        "", "or `saga embed --model <this folder> --dataset folder --root DIR --out gallery.npz`, then "
        "`saga search query.jpg --gallery gallery.npz`."])


def card_tail(lines: list[str], run: dict, *, shape: str, usage: Sequence[str] = ()) -> str:
    """A model card's `lines` followed by what every saved model's card ends with: the run's test metrics, how to
    use the folder (the embeddings' `shape`, then `usage`) and the training config."""
    metrics = run.get("test_metrics") or {}
    if metrics:
        lines += ["", "## Test metrics (zero-shot: test classes unseen in training)", "",
                  "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:.2f} |" for k, v in metrics.items()]
    lines += ["", "## Use", "", "```python", "import saga", "model = saga.load_model(\"<this folder>\")",
              f"embeddings = model.embed([\"a.jpg\", \"b.jpg\"])   # {shape}, unit rows", "```", *usage]
    if run.get("config"):
        lines += ["", "## Training config", "", "```yaml", yaml.safe_dump(run["config"], sort_keys=False).rstrip(),
                  "```"]
    return "\n".join(lines) + "\n"
