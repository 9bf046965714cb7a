"""Load a Qwen3-VL or Qwen2.5-VL checkpoint (Hugging Face hub id or local directory): the whole model, only its
processor, or only its vision tower.

The family is read from config.json's `model_type`. Processors are the image-only ones of
`saga.models.processor` for every checkpoint, so loading never needs torchvision (docs/method.md, "The judge"). A hub
id is resolved through the local Hugging Face cache, downloading only where a network exists; failures are
`CheckpointError`s that say what was tried.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import (AutoConfig, ProcessorMixin, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil,
                          Qwen3VLForConditionalGeneration)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

from saga.errors import CheckpointError
from saga.models.processor import IMAGE_ONLY_PROCESSORS
from saga.models.tokenizer import VISION_TOKENS
from saga.utils import resolve_device, resolve_dtype

# model_type -> (whole model, vision tower) classes.
FAMILIES: dict[str, tuple[type, type]] = {
    "qwen3_vl": (Qwen3VLForConditionalGeneration, Qwen3VLVisionModel),
    "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VisionTransformerPretrainedModel),
}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Files a checkpoint needs; never *.py (custom code) nor other weight formats.
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt"]
# Tower weights are stored as "model.visual.*" (transformers >= 4.52 layout) or "visual.*" (original Qwen layout).
_TOWER_KEY = re.compile(r"^(?:model\.)?visual\.")


def resolve_checkpoint(id_or_path: str | Path) -> Path:
    """The local directory of a checkpoint: `id_or_path` itself if it is a directory with a config.json, else a hub
    id ("owner/name") looked up in the Hugging Face cache (downloaded if a network is available)."""
    path = Path(id_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not a model directory (no config.json)")
        return path
    if path.exists():
        raise CheckpointError(f"{path}: is a file; give a model directory or a Hugging Face hub id")
    if not _HUB_ID.match(str(id_or_path)):
        raise CheckpointError(f"{id_or_path}: no such model directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(id_or_path), allow_patterns=_HUB_FILES))
    except Exception as e:  # hub errors are many (offline, gated, missing); all mean "not available here"
        raise CheckpointError(
            f"{id_or_path}: no such local directory, and as a Hugging Face hub id it is neither in the local cache "
            f"nor downloadable here ({type(e).__name__}). Download it on a machine with network access and pass "
            "the directory (or copy it into the cache of HF_HOME)") from None


def model_type(path: Path) -> str:
    """config.json's `model_type`, checked to be a supported family."""
    file = path / "config.json"
    try:
        kind = json.loads(file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read the model config ({e})") from None
    if kind not in FAMILIES:
        raise CheckpointError(f"{file}: model_type {kind!r} is not supported; supported: {sorted(FAMILIES)}")
    return kind


def check_checkpoint(id_or_path: str | Path) -> Path:
    """The local directory of a usable checkpoint: found (`resolve_checkpoint`), of a supported family, with its
    weights in safetensors. Weights only in pickle files (pytorch_model.bin) are refused: unpickling can run code,
    and a checkpoint is data. Cheap: it reads config.json and lists files, so a run can check its inputs first."""
    path = resolve_checkpoint(id_or_path)
    model_type(path)
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        what = f"only pickle weights ({', '.join(pickles)}), which saga does not load (unpickling can run code); " \
               "convert them to safetensors" if pickles else "no model weights (*.safetensors)"
        raise CheckpointError(f"{path}: {what}")
    return path


def assert_finite_weights(model: nn.Module, source: Path) -> None:
    """A checkpoint whose weights hold NaN or inf (a bad download, flipped bytes) fails at load time, naming the
    tensors, instead of poisoning the first training step."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} weight tensor(s) hold NaN or inf ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); the checkpoint is corrupt")


def load_processor(id_or_path: str | Path, *, trust_remote_code: bool = False) -> ProcessorMixin:
    """The checkpoint's tokenizer, chat template and image processor as an image-only processor.

    The image processor is always the PIL implementation: with torchvision installed (the GPU machine)
    transformers would pick its torchvision one, whose resizing differs slightly, and a judge pretrained on CPU
    would then see other pixels on GPU.
    """
    path = resolve_checkpoint(id_or_path)
    processor = IMAGE_ONLY_PROCESSORS[model_type(path)].from_pretrained(path, trust_remote_code=trust_remote_code)
    if not isinstance(processor.image_processor, Qwen2VLImageProcessorPil):  # both families use Qwen2-VL's
        processor.image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return processor


def load_vlm(id_or_path: str | Path, *, device: str = "auto", dtype: str | torch.dtype = "auto",
             attn_implementation: str = "sdpa", trust_remote_code: bool = False) -> tuple[nn.Module, ProcessorMixin]:
    """Load a Qwen3-VL or Qwen2.5-VL model (eval mode, on `device`) and its processor.

    dtype "auto" is bfloat16 on GPU and float32 on CPU. Use attn_implementation="eager" where attention weights
    must come back from the forward pass (sdpa returns none; docs/method.md, "The judge"). The model classes are
    transformers' own, so trust_remote_code only matters for a checkpoint whose tokenizer ships custom code.
    """
    path = check_checkpoint(id_or_path)
    model_cls = FAMILIES[model_type(path)][0]
    device_ = resolve_device(device)
    try:
        model = model_cls.from_pretrained(path, dtype=resolve_dtype(dtype, device_), use_safetensors=True,
                                          attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    except (OSError, SafetensorError, RuntimeError) as e:  # truncated or mismatched weight files
        raise CheckpointError(f"{path}: cannot load the model weights ({type(e).__name__}: {e})") from None
    assert_finite_weights(model, path)
    processor = load_processor(path, trust_remote_code=trust_remote_code)
    return model.to(device_).eval(), processor


def load_vision_tower(id_or_path: str | Path, *, device: str = "auto", dtype: str | torch.dtype = "auto",
                      attn_implementation: str = "sdpa") -> nn.Module:
    """Only the vision tower of a checkpoint (eval mode, on `device`), reading only the tower's tensors from the
    safetensors files: the 8B model's tower is 576 M of its 8.77 B parameters (docs/method.md, "The judge")."""
    path = check_checkpoint(id_or_path)
    tower_cls = FAMILIES[model_type(path)][1]
    device_ = resolve_device(device)
    config = AutoConfig.from_pretrained(path)
    tower = tower_cls._from_config(config.vision_config, dtype=resolve_dtype(dtype, device_),
                                   attn_implementation=attn_implementation)
    state = _tower_state_dict(path)
    missing, unexpected = tower.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: vision tower weights do not match the config "
                              f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
    assert_finite_weights(tower, path)
    return tower.to(device_).eval()


def _tower_state_dict(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({file for key, file in weight_map.items() if _TOWER_KEY.match(key)})
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    state = {}
    for file in files:
        try:
            with safe_open(path / file, framework="pt") as f:
                for key in f.keys():
                    if _TOWER_KEY.match(key):
                        state[_TOWER_KEY.sub("", key)] = f.get_tensor(key)
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"{path / file}: unreadable safetensors file ({e})") from None
    if not state:
        raise CheckpointError(f"{path}: no vision tower weights (keys model.visual.* or visual.*) in {files}")
    return state


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation (gradient) checkpointing on any transformers 5.x model or tower: 5.23 renamed
    `gradient_checkpointing_enable` to `activation_checkpointing_enable` (the old name warns), 5.17 has only the
    old one. It only takes effect on modules in train mode; keep a frozen judge in train mode (docs/method.md,
    "The judge")."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the vision special tokens, for `generate(suppress_tokens=...)`: a sampled <|image_pad|> breaks the
    re-forward of the completion (docs/method.md, "The judge")."""
    return [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
