"""Export a `RetrievalModel` (encoder + pooler) to ONNX at a fixed square image size, and check it.

    from saga.deploy.onnx_export import export_onnx
    report = export_onnx(saga.load_model("runs/cub/saga"), "exports/cub-onnx")   # {"max_abs_diff": ..., ...}

writes
    model.onnx       the graph (weights inline; over ~1.8 GB they go to model.onnx.data beside it)
    saga_onnx.json   what `saga.deploy.onnx_runtime` needs to preprocess images without torch, and the check

Graph: pixel_values (B, 3, S, S) float32, images already resized to S x S, rescaled and normalised
-> embedding (B, E) float32, L2-normalised. The batch dimension B is dynamic; S is fixed at export.

Why this layout. The stock tower takes packed patches (sum of patches, C*T*P*P) plus `grid_thw` and derives
everything image-dependent from `grid_thw` with Python-level code, which the TorchScript tracer turns into
constants of the traced batch: `get_vision_position_ids` loops over `grid_thw.tolist()`, and the attention's
non-flash path splits q/k/v per image with `torch.split(..., lengths.tolist())`, so the number and lengths of the
per-image attention blocks (cu_seqlens) are frozen. Traced at 2 images, the stock tower's graph runs 2 images
correctly and fails in ONNX Runtime on 3 (its attention Split node expects the traced lengths). At a fixed image
size, however, every image has the same grid, so all of it is constant per image:
  - the learned position embeddings (interpolated to the grid) and the 2-D rotary cos/sin are the same for every
    image; they are recorded once from the tower itself (`_grid_constants`) and broadcast over the batch;
  - "attention within each image" (cu_seqlens = 0, N, 2N, ...) is ordinary batched attention over (B, N) tokens.
So `_BatchedTower` runs the tower's own modules (patch embedding, blocks' norms / qkv / proj / MLP, merger) on
(B, N, D) tensors with batched attention, which traces to a graph with a dynamic batch. The patchify step of
Qwen2VLImageProcessor (a still image repeated temporal_patch_size times, then 2x2-merge-window patch order) is a
pure reshape/permute and is done in the graph, so the runtime only resizes and normalises.

Only Qwen3-VL towers are supported: Qwen2.5-VL's window attention reorders patches into windows with their own
cu_seqlens, which `_BatchedTower` does not reproduce. DeepStack features are not exported (the retrieval
embedding does not use them). The tower runs in float32 in the graph (a bfloat16 model is exported from a float32
copy, and checked against that copy).

Uses the TorchScript-based exporter (`dynamo=False`), which needs no onnxscript.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from saga.deploy.onnx_runtime import CONFIG, FORMAT, OnnxRetrievalModel
from saga.errors import CheckpointError
from saga.models.preprocess import ImagePreprocessor
from saga.models.retrieval import RetrievalModel

OPSET = 17  # LayerNormalization is a single op from 17 on
TOLERANCE = 1e-4  # max |ONNX Runtime - torch| over the L2-normalised embeddings of the check images
INPUT, OUTPUT = "pixel_values", "embedding"
# Above this many bytes of weights the graph stores them in model.onnx.data (one protobuf is limited to 2 GB).
EXTERNAL_DATA_BYTES = 1_800_000_000


def export_onnx(model: RetrievalModel, out_dir: str | Path, *, image_size: int | None = None, check_images: int = 4,
                seed: int = 0) -> dict:
    """Write `model` as `out_dir/model.onnx` + `out_dir/saga_onnx.json` (see the module docstring) and check ONNX
    Runtime against torch on `check_images` random images (0: no check).

    image_size: the square side images are resized to (default: the model's), rounded like ImagePreprocessor.
    Returns the manifest written to saga_onnx.json; its "check" entry holds "max_abs_diff", the largest absolute
    difference between the L2-normalised embeddings of ONNX Runtime and torch. Raises CheckpointError when it
    exceeds 1e-4, writing no file. Other files in out_dir are kept, so a saved model's folder can hold its ONNX
    export too. The model is left as it was (its train/eval modes included)."""
    _require_qwen3vl(model)
    out = Path(out_dir)
    tmp = out / ".onnx-export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    modes = {module: module.training for module in model.modules()}
    try:
        reference = _float32_cpu(model, image_size)
        manifest = _manifest(model, reference)
        _export_graph(_BatchedTower(reference).eval(), reference.image_size, manifest["embed_dim"], tmp)
        _write_json(tmp / CONFIG, manifest)
        if check_images > 0:
            manifest["check"] = _check(reference, tmp, check_images, seed)
            _write_json(tmp / CONFIG, manifest)
        _move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for module, training in modes.items():  # the reference may share (and set to eval) the model's modules
            module.training = training
    return manifest


# ------------------------------------------------------------------ the exported module
class _BatchedTower(nn.Module):
    """(B, 3, S, S) normalised images -> (B, E) L2-normalised embeddings, with the tower's and pooler's modules.

    Same arithmetic as `RetrievalModel.forward` + `F.normalize` for images of side S, but on (B, N, D) tensors,
    so that nothing depends on the batch size except the leading dimension."""

    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        self.tower, self.pooler = model.encoder.tower, model.pooler
        config = self.tower.config
        # Python ints, so the traced graph's shapes are constants except the batch.
        self.patch, self.temporal, self.merge = config.patch_size, config.temporal_patch_size, config.spatial_merge_size
        self.channels, self.width, self.out_width = config.in_channels, config.hidden_size, config.out_hidden_size
        self.grid = model.image_size // self.patch
        pos, cos, sin = _grid_constants(self.tower, self.grid)
        self.register_buffer("pos", pos, persistent=False)  # (N, D) learned position embeddings at this grid
        self.register_buffer("cos", cos, persistent=False)  # (N, head_dim) 2-D rotary embedding
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        n = self.grid * self.grid
        hidden = self.tower.patch_embed(self.patchify(pixel_values)).view(-1, n, self.width) + self.pos
        for block in self.tower.blocks:
            hidden = hidden + self.attention(block.attn, block.norm1(hidden))
            hidden = hidden + block.mlp(block.norm2(hidden))
        # The merger concatenates each 2x2 window of consecutive patches: n / merge^2 tokens per image.
        tokens = self.tower.merger(hidden).view(-1, n // self.merge**2, self.out_width)
        mask = torch.ones_like(tokens[..., 0], dtype=torch.bool)  # every image has all its tokens
        return F.normalize(self.pooler(tokens.float(), mask).embedding, dim=-1)

    def patchify(self, images: Tensor) -> Tensor:
        """(B, C, S, S) -> (B * N, C * T * P * P) in Qwen2VLImageProcessor's order: a still image is repeated T
        times; patches go in row-major merge windows, each window's patches row-major inside it."""
        c, p, t, m, g = self.channels, self.patch, self.temporal, self.merge, self.grid
        x = images[:, None].expand(-1, t, -1, -1, -1)  # (B, T, C, S, S)
        x = x.reshape(-1, t, c, g // m, m, p, g // m, m, p)  # (B, T, C, win_row, row, P, win_col, col, P)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (B, win_row, win_col, row, col, C, T, P, P)
        return x.reshape(-1, c * t * p * p)

    def attention(self, attn: nn.Module, x: Tensor) -> Tensor:
        """Qwen3VLVisionAttention over each image's tokens: x (B, N, D) -> (B, N, D)."""
        n, d = self.grid * self.grid, self.width
        q, k, v = attn.qkv(x).view(-1, n, 3, attn.num_heads, d // attn.num_heads).unbind(2)  # (B, N, H, hd)
        q, k = _rotate(q, self.cos, self.sin), _rotate(k, self.cos, self.sin)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=attn.scaling)
        return attn.proj(out.transpose(1, 2).reshape(-1, n, d))


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding as the vision tower applies it: x (B, N, H, hd), cos/sin (N, hd) shared by the heads."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class _Captured(Exception):
    """Raised by the hook of `_grid_constants` to stop the tower once the first block's inputs are known."""


def _grid_constants(tower: nn.Module, grid: int) -> tuple[Tensor, Tensor, Tensor]:
    """(position embeddings (N, D), rotary cos (N, hd), rotary sin (N, hd)) of one grid x grid image, in the
    tower's patch order, recorded from the tower's own forward (whatever its transformers version computes): with
    the patch embedding zeroed, the first block's input is exactly the position embedding."""
    captured: dict[str, Tensor] = {}

    def zero_patches(module, args, output):
        return torch.zeros_like(output)

    def first_block(module, args, kwargs):
        captured["pos"] = args[0] if args else kwargs.get("hidden_states")
        captured["cos"], captured["sin"] = kwargs.get("position_embeddings") or (None, None)
        raise _Captured

    config = tower.config
    pixels = torch.zeros(grid * grid, config.in_channels * config.temporal_patch_size * config.patch_size**2)
    hooks = [tower.patch_embed.register_forward_hook(zero_patches),
             tower.blocks[0].register_forward_pre_hook(first_block, with_kwargs=True)]
    try:
        with torch.no_grad():
            tower(pixels, grid_thw=torch.tensor([[1, grid, grid]]))
    except _Captured:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    if any(captured.get(key) is None for key in ("pos", "cos", "sin")):
        raise CheckpointError(f"{type(tower).__name__}: its first block is not called as block(hidden_states, ..., "
                              "position_embeddings=(cos, sin)); this transformers version is not supported by the "
                              "ONNX export")
    return captured["pos"].clone(), captured["cos"].float().clone(), captured["sin"].float().clone()


# ------------------------------------------------------------------ export, check, files
def _require_qwen3vl(model: RetrievalModel) -> None:
    from transformers import Qwen3VLVisionModel

    if not isinstance(model.encoder.tower, Qwen3VLVisionModel):
        raise CheckpointError(f"ONNX export supports Qwen3-VL vision towers, not {type(model.encoder.tower).__name__} "
                              "(Qwen2.5-VL's window attention is not reproduced by the batched export graph)")


def _float32_cpu(model: RetrievalModel, image_size: int | None) -> RetrievalModel:
    """The model as exported and checked: float32, on the CPU, in eval mode, preprocessing at `image_size`.
    Shares the modules when the model already is float32 on the CPU."""
    encoder, pooler = model.encoder, model.pooler
    if encoder.dtype != torch.float32 or encoder.device.type != "cpu" or any(
            p.dtype != torch.float32 or p.device.type != "cpu" for p in pooler.parameters()):
        encoder, pooler = copy.deepcopy(encoder).float().cpu(), copy.deepcopy(pooler).float().cpu()
    image_processor = model.preprocessor.image_processor
    preprocessor = ImagePreprocessor(image_processor, image_size or model.image_size)
    return RetrievalModel(encoder, pooler, preprocessor).eval()


def _export_graph(module: nn.Module, side: int, embed_dim: int, out: Path) -> None:
    """Trace `module` at a batch of 2 (not 1, which the tracer could fold into broadcasts) to out/model.onnx."""
    raw = out / "raw"
    raw.mkdir()
    example = torch.zeros(2, 3, side, side)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one (which needs onnxscript).
        warnings.simplefilter("ignore", DeprecationWarning)
        # Tracer warnings are about sizes frozen into the graph (e.g. the pooler's sqrt(head width)); all sizes but
        # the batch are fixed here, and the check runs the graph at other batch sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), str(raw / "model.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    _save_onnx(raw / "model.onnx", out / "model.onnx", embed_dim)
    shutil.rmtree(raw)


def _save_onnx(source: Path, target: Path, embed_dim: int) -> None:
    """Rewrite the exported graph as one file, or, for large weights, as model.onnx + one model.onnx.data (the
    exporter itself would scatter them over one file per tensor)."""
    import onnx

    proto = onnx.load(str(source))
    # The exporter's shape inference loses the embedding width after the pooler's division; state it.
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = embed_dim
    weight_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(target), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=target.name + ".data")
    onnx.checker.check_model(str(target))


def _manifest(model: RetrievalModel, reference: RetrievalModel) -> dict:
    """saga_onnx.json: what the torch-free runtime needs, and where the graph came from."""
    import transformers

    proc = reference.preprocessor.image_processor
    config = reference.encoder.tower.config
    side = reference.image_size
    embed_dim = reference.pooler.spec()["embed_dim"] or reference.encoder.out_dim
    return {
        "format": FORMAT,
        "model": "model.onnx",
        "image_size": side,
        "resample": "bicubic",
        "rescale_factor": float(proc.rescale_factor) if proc.do_rescale else 1.0,
        "image_mean": [float(v) for v in proc.image_mean] if proc.do_normalize else [0.0, 0.0, 0.0],
        "image_std": [float(v) for v in proc.image_std] if proc.do_normalize else [1.0, 1.0, 1.0],
        "patch_size": config.patch_size,
        "temporal_patch_size": config.temporal_patch_size,
        "merge_size": config.spatial_merge_size,
        "tokens_per_image": reference.preprocessor.tokens_per_image,
        "embed_dim": embed_dim,
        "input": {"name": INPUT, "shape": ["batch", 3, side, side], "dtype": "float32",
                  "layout": "RGB, resized to image_size x image_size (PIL bicubic), rescaled and normalised"},
        "output": {"name": OUTPUT, "shape": ["batch", embed_dim], "dtype": "float32", "l2_normalised": True},
        "opset": OPSET,
        "source": {"tower": type(reference.encoder.tower).__name__, "tower_dtype": str(model.encoder.dtype),
                   "pooler": reference.pooler.spec(), "torch": torch.__version__,
                   "transformers": transformers.__version__},
    }


def _check(reference: RetrievalModel, folder: Path, count: int, seed: int) -> dict:
    """Embed `count` random images of assorted sizes with torch and with ONNX Runtime (numpy preprocessing, one
    batch, then one by one) and compare the L2-normalised embeddings."""
    rng = np.random.default_rng(seed)
    side = reference.image_size
    images = [Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8))
              for h, w in rng.integers(side // 2, 2 * side + 1, size=(count, 2))]
    expected = reference.embed(images).numpy()
    runtime = OnnxRetrievalModel.from_pretrained(folder)
    batched, single = runtime.embed(images, batch_size=count), runtime.embed(images, batch_size=1)
    diff = float(max(np.abs(batched - expected).max(), np.abs(single - expected).max()))
    if not diff <= TOLERANCE:  # also catches NaN
        raise CheckpointError(f"ONNX export failed its check: ONNX Runtime and torch embeddings of {count} random "
                              f"images differ by up to {diff:.3g} (tolerance {TOLERANCE:g}); nothing written")
    return {"images": count, "seed": seed, "max_abs_diff": diff, "tolerance": TOLERANCE}


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _move_into(tmp: Path, out: Path) -> None:
    """Move the checked files from tmp into out, replacing earlier exports' files (and a stale model.onnx.data)."""
    if not (tmp / "model.onnx.data").exists():
        (out / "model.onnx.data").unlink(missing_ok=True)
    for name in ("model.onnx.data", "model.onnx", CONFIG):
        if (tmp / name).exists():
            (tmp / name).replace(out / name)
