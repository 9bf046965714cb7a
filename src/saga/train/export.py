"""The deployable model: the trained encoder and pooler, without the judge (DESIGN.md: inference = encoder + pooler).

``<run>/export/`` holds
    encoder.safetensors       the vision tower's weights
    pooler.safetensors        the pooler's weights (empty for the mean pooler)
    preprocessor_config.json  the image processor (patch size, normalisation)
    saga_model.json           what to rebuild: tower family and config, pooler kind and sizes, image size, and a
                              record of the training run (method, dataset, steps, test metrics)

    encoder, pooler, preprocessor = load_trained("runs/cub/saga/export")
    inputs = preprocessor([image, ...])
    tokens, mask = encoder(**inputs).padded()
    embedding = torch.nn.functional.normalize(pooler(tokens, mask).embedding, dim=-1)

`saga.models.embed_split(None, split, encoder=encoder, pooler=pooler, processor=preprocessor.image_processor)`
embeds a whole split the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen2VLImageProcessorPil

from saga.errors import CheckpointError
from saga.models import AttentionPooler, ImagePreprocessor, MeanPooler, VisionEncoder, build_pooler
from saga.models.backbone import FAMILIES

MANIFEST = "saga_model.json"


def _pooler_spec(pooler: nn.Module, dim: int) -> dict:
    if isinstance(pooler, MeanPooler):
        return {"name": "mean", "dim": dim, "num_heads": 1, "embed_dim": None}
    if isinstance(pooler, AttentionPooler):
        embed_dim = pooler.proj.out_features if isinstance(pooler.proj, nn.Linear) else None
        return {"name": "attention", "dim": dim, "num_heads": pooler.num_heads, "embed_dim": embed_dim}
    raise TypeError(f"cannot export a pooler of type {type(pooler).__name__}")


def export_model(out_dir: str | Path, encoder: VisionEncoder, pooler: nn.Module, preprocessor: ImagePreprocessor,
                 run_info: dict) -> Path:
    """Write the deployable encoder + pooler to `out_dir` (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    family = next((k for k, (_, tower_cls) in FAMILIES.items() if isinstance(encoder.tower, tower_cls)), None)
    if family is None:
        raise TypeError(f"cannot export a tower of type {type(encoder.tower).__name__}")
    save_file({k: v.detach().contiguous() for k, v in encoder.tower.state_dict().items()},
              out / "encoder.safetensors")
    save_file({k: v.detach().contiguous() for k, v in pooler.state_dict().items()}, out / "pooler.safetensors")
    preprocessor.image_processor.save_pretrained(out)
    manifest = {
        "format": "saga-encoder/1",
        "tower": {"family": family, "config": encoder.tower.config.to_dict(), "dtype": str(encoder.dtype)},
        "pooler": _pooler_spec(pooler, encoder.out_dim),
        "image_size": preprocessor.side,
        "run": run_info,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def load_trained(path: str | Path, *, device: str | torch.device = "cpu",
                 ) -> tuple[VisionEncoder, nn.Module, ImagePreprocessor]:
    """(encoder, pooler, preprocessor) from an export folder, in eval mode on `device`."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / MANIFEST}: not a saga export folder ({e})") from None
    tower_cls = FAMILIES[manifest["tower"]["family"]][1]
    config = tower_cls.config_class.from_dict(manifest["tower"]["config"])
    dtype = getattr(torch, manifest["tower"]["dtype"].removeprefix("torch."))
    tower = tower_cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
    spec = manifest["pooler"]
    pooler = build_pooler(spec["name"], spec["dim"], num_heads=spec["num_heads"], embed_dim=spec["embed_dim"])
    try:
        tower.load_state_dict(load_file(path / "encoder.safetensors"), strict=True)
        pooler.load_state_dict(load_file(path / "pooler.safetensors"), strict=True)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not match {MANIFEST} ({e})") from None
    encoder = VisionEncoder(tower).to(device).eval()
    preprocessor = ImagePreprocessor(Qwen2VLImageProcessorPil.from_pretrained(path), manifest["image_size"])
    return encoder, pooler.to(device).eval(), preprocessor
