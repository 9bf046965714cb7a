"""AGFF-Embed: the MLLM itself as the embedding model (arXiv 2602.05729; docs/method.md, "AGFF-Embed").

The opposite trade-off to SAGA: SAGA distils the MLLM into its vision tower and drops the LLM at inference;
AGFF-Embed keeps the whole MLLM (adapted with LoRA, or with some modules fine-tuned) as the embedder:

    image -> the MLLM's vision tower (once per image)
          -> K prompts, a global one and K-1 fine-grained ones, read by the LLM in one packed sequence per image
             (the chat start and the image's tokens once, then each prompt masked to them and to itself)
          -> the last token's final hidden state under each prompt: K embeddings per image
          -> AdaptiveFusion: an image-dependent softmax over the K unit embeddings -> one embedding

`AgffModel` has the interface of `RetrievalModel` (forward(pixel_values, image_grid_thw).embedding, embed,
save_pretrained, from_pretrained, image_size, preprocessor, device), so `saga.load_model`, `saga embed / eval /
search --model` and the training loop use it unchanged.

A saved model is a reference to its base checkpoint plus what training changed, not the MLLM's weights (16 GB for
the 8B model, which training leaves untouched outside the adapters):
    saga_model.json        format "saga-agff/1": the base checkpoint (hub id or absolute path) and its fingerprint,
                           what is trained (the LoRA settings or the module names), the prompts, the fusion spec,
                           the image size, the training run's record
    adapters.safetensors   the MLLM's trained tensors only: LoRA A/B matrices, or the named modules' weights
    fusion.safetensors     the fusion's weights
    preprocessor_config.json, README.md
Loading needs the base checkpoint (local directory or Hugging Face cache); a base whose fingerprint differs from the
recorded one is refused.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from saga.errors import CheckpointError, ConfigError
from saga.models.backbone import enable_activation_checkpointing, load_vlm, resolve_checkpoint
from saga.models.encoder import EncoderOutput, VisionEncoder
from saga.models.inject import vision_inputs
from saga.models.preprocess import ImagePreprocessor
from saga.models.retrieval import (MANIFEST, MODEL_FORMATS, card_tail, embed_images, load_image_processor,
                                   load_tensors, write_folder)

FORMAT = "saga-agff/1"
INFERENCE_IMAGES = 64  # images (one packed LLM sequence each) per forward pass without gradient


@dataclass
class PackedPrompts:
    """The K prompts of one image as one sequence. ids (L,); positions (3, L) the M-RoPE positions each token has
    in its own prompt's sequence; segment (L,) 0 for the common prefix, k + 1 for prompt k's tokens; last (K,)
    where each prompt's last token is."""

    ids: Tensor
    positions: Tensor
    segment: Tensor
    last: Tensor


def mrope_positions(ids: Tensor, image_token_id: int, grid_h: int, grid_w: int) -> Tensor:
    """(3, L) Qwen-VL M-RoPE positions (temporal, height, width) of one sequence with one image of grid_h x grid_w
    merged tokens: text tokens count up on all three axes; the image's tokens take start + (0, row, column); the
    text after it resumes at start + max(grid_h, grid_w). The rule of the models' own get_rope_index for a still
    image."""
    out, start, i = [], 0, 0
    is_image = (ids == image_token_id).tolist()
    while i < len(ids):
        if is_image[i]:
            rows = torch.arange(grid_h).repeat_interleave(grid_w)
            cols = torch.arange(grid_w).repeat(grid_h)
            out.append(torch.stack([torch.zeros_like(rows), rows, cols]) + start)
            start, i = start + max(grid_h, grid_w), i + grid_h * grid_w
        else:
            out.append(torch.full((3, 1), start))
            start, i = start + 1, i + 1
    return torch.cat(out, dim=1)


@dataclass
class FusionOutput:
    """embedding: (B, D) the fused embedding (not normalised); prompt_embeddings: (B, K, D) the K unit embeddings;
    weights: (B, K) the fusion weights (rows sum to 1)."""

    embedding: Tensor
    prompt_embeddings: Tensor
    weights: Tensor


class AdaptiveFusion(nn.Module):
    """K prompt embeddings of an image -> one (docs/method.md, "AGFF-Embed"; the form is ours):

        e_k = h_k / ||h_k||,   z_k = u_k . e_k + b_k,   w = softmax_k(z),   embedding = sum_k w_k e_k

    The weights depend on the image (adaptive) and move smoothly with it (softmax). u and b start at zero: the
    fusion starts as the mean of the unit embeddings.
    """

    def __init__(self, dim: int, num_prompts: int) -> None:
        super().__init__()
        self.dim, self.num_prompts = dim, num_prompts
        self.scorer = nn.Parameter(torch.zeros(num_prompts, dim))
        self.bias = nn.Parameter(torch.zeros(num_prompts))

    def forward(self, hidden: Tensor) -> FusionOutput:
        if hidden.shape[1:] != (self.num_prompts, self.dim):
            raise ValueError(f"expected (B, {self.num_prompts}, {self.dim}) prompt states, got {tuple(hidden.shape)}")
        unit = F.normalize(hidden, dim=-1)
        weights = torch.softmax((unit * self.scorer).sum(-1) + self.bias, dim=-1)
        return FusionOutput((weights[..., None] * unit).sum(1), unit, weights)

    def spec(self) -> dict:
        return {"name": "adaptive", "dim": self.dim, "num_prompts": self.num_prompts}


@dataclass
class AgffOutput:
    """embedding: (B, D) fused, not normalised; prompt_embeddings: (B, K, D) unit rows, prompt k of image b;
    weights: (B, K) the fusion weights; features: the vision tower's per-image outputs."""

    embedding: Tensor
    prompt_embeddings: Tensor
    weights: Tensor
    features: EncoderOutput


# ---------------------------------------------------------------- what is trained
def apply_trainable(vlm: nn.Module, spec: dict) -> nn.Module:
    """Freeze `vlm`, then make trainable what `spec` names (in place):
    {"kind": "lora", "rank", "alpha", "dropout", "targets"}: peft LoRA adapters on the modules whose names are or end
    with a target; {"kind": "modules", "modules": [...]}: those modules (and everything under them) in full."""
    vlm.requires_grad_(False)
    if spec["kind"] == "lora":
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise ConfigError("agff.trainable=lora needs peft (pip install peft, or the package's [agff] extra); "
                              "agff.trainable=modules does not") from None
        config = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                            target_modules=list(spec["targets"]))
        try:
            inject_adapter_in_model(config, vlm)
        except ValueError as e:  # no module matches the targets
            raise ConfigError(f"agff.lora_targets {spec['targets']}: {e}") from None
        # fp32 adapters beside a bf16 MLLM: an update at lr 1e-5 would round away in bf16 (docs/method.md,
        # "What the paper does not state"); peft's LoRA layers cast their input to the adapters' dtype.
        from peft.tuners.tuners_utils import cast_adapter_dtype

        cast_adapter_dtype(vlm, adapter_name="default")
    elif spec["kind"] == "modules":
        if next(vlm.parameters()).dtype != torch.float32:
            warnings.warn("agff.trainable=modules trains the modules in the MLLM's dtype; below float32 small "
                          "updates round away (use model.dtype=float32, or LoRA)", RuntimeWarning, stacklevel=2)
        for name in spec["modules"]:
            try:
                vlm.get_submodule(name).requires_grad_(True)
            except AttributeError:
                raise ConfigError(f"agff.train_modules: the MLLM has no module {name!r} (e.g. model.visual, "
                                  "model.language_model.layers.0)") from None
    else:
        raise ConfigError(f"agff.trainable: {spec['kind']!r} is not lora or modules")
    if not any(p.requires_grad for p in vlm.parameters()):
        raise ConfigError(f"AGFF-Embed: nothing to train in the MLLM under {spec}")
    return vlm


class TrainableTensors(nn.Module):
    """A checkpoint view of a module: its state dict holds only the parameters that require grad (the LoRA
    adapters, or the named modules), so a checkpoint of the 8B MLLM holds megabytes, not 16 GB."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._target = [module]  # in a list: not registered as a submodule, so .parameters() stays empty

    def trainable(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self._target[0].named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs) -> dict[str, Tensor]:
        return {name: p.detach() for name, p in self.trainable().items()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        own = self.trainable()
        missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise RuntimeError(f"trained tensors do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state_dict[name])  # a shape mismatch raises RuntimeError
        return nn.modules.module._IncompatibleKeys([], [])


def checkpoint_fingerprint(path: Path) -> str:
    """sha256 of a checkpoint folder's config.json and, per *.safetensors file, its header (tensor names, dtypes,
    shapes) and first MiB of tensor data: cheap on 16 GB, and it tells another checkpoint (or another fine-tune of
    the same geometry, unless it differs only beyond each file's first MiB) from the one adapters were trained on."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
            digest.update(file.name.encode() + f.read(header) + f.read(1 << 20))
    return digest.hexdigest()


# ---------------------------------------------------------------- the model
class AgffModel(nn.Module):
    """An MLLM (Qwen3-VL / Qwen2.5-VL) read under K prompts + the adaptive fusion + the image preprocessing.

    prompts: the K prompt texts, the global one first; each is one user turn of the chat template, the image then
    the text, closed by the assistant prefix, so that the last token is the one that would start the answer
    (E5-V's prompt-based last-token embedding, arXiv 2407.12580). The K turns of an image share their start (the
    scaffolding and the image tokens), so the LLM reads them as one packed sequence: the shared part once, then
    each prompt's own tokens, which attend to the shared part and to themselves only, at the positions they have
    alone (docs/method.md, "AGFF-Embed"). images_per_pass: images (packed sequences) per LLM forward pass, 0 = the
    whole batch; with gradient each pass is recomputed in the backward (activation checkpointing), so memory holds
    one pass's activations.
    """

    def __init__(self, vlm: nn.Module, processor, prompts: Sequence[str], fusion: AdaptiveFusion,
                 preprocessor: ImagePreprocessor, *, base: str, fingerprint: str, trainable: dict,
                 images_per_pass: int = 0) -> None:
        super().__init__()
        if not prompts:
            raise ConfigError("AGFF-Embed needs at least one prompt (the global one)")
        if fusion.num_prompts != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but a fusion of {fusion.num_prompts}")
        self.vlm, self.fusion, self.preprocessor = vlm, fusion, preprocessor
        self.processor, self.prompts = processor, list(prompts)
        self.base, self.fingerprint, self.trainable_spec = base, fingerprint, dict(trainable)
        self.images_per_pass = images_per_pass
        self.image_token_id = vlm.config.image_token_id
        self._packed: dict[tuple[int, ...], PackedPrompts] = {}

    @classmethod
    def build(cls, base: str | Path, prompts: Sequence[str], trainable: dict, *, image_size: int,
              device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
              gradient_checkpointing: bool = False, images_per_pass: int = 0,
              trust_remote_code: bool = False) -> AgffModel:
        """The base checkpoint (hub id or directory) made trainable as `trainable` says (see `apply_trainable`),
        with a fresh fusion. A local base is recorded by its absolute path."""
        folder = resolve_checkpoint(base)
        vlm, processor = load_vlm(base, device=str(device), dtype=dtype, trust_remote_code=trust_remote_code)
        apply_trainable(vlm, trainable)
        if gradient_checkpointing:
            enable_activation_checkpointing(vlm)
        fusion = AdaptiveFusion(vlm.config.text_config.hidden_size, len(prompts)).to(vlm.device)
        reference = str(Path(base).resolve()) if Path(base).is_dir() else str(base)
        return cls(vlm, processor, prompts, fusion, ImagePreprocessor(processor, image_size), base=reference,
                   fingerprint=checkpoint_fingerprint(folder), trainable=trainable,
                   images_per_pass=images_per_pass).train()

    # ------------------------------------------------------------ the RetrievalModel interface
    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vlm.parameters()).dtype

    @property
    def image_size(self) -> int:
        return self.preprocessor.side

    @property
    def embed_dim(self) -> int:
        return self.fusion.dim

    @property
    def encoder(self) -> VisionEncoder:
        """The MLLM's own vision tower (with its adapters) as a VisionEncoder: the same parameters, not a copy."""
        return VisionEncoder(self.vlm.model.visual)

    @property
    def pooler(self) -> AdaptiveFusion:
        return self.fusion

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """What a training checkpoint saves: the MLLM's trained tensors only, and the fusion."""
        return {"adapters": TrainableTensors(self.vlm), "fusion": self.fusion}

    def forward(self, pixel_values: Tensor, image_grid_thw: Tensor) -> AgffOutput:
        features = self.encoder(pixel_values, image_grid_thw)  # the tower runs once per image, not once per prompt
        fused = self.fusion(self.prompt_states(features).float())
        return AgffOutput(fused.embedding, fused.prompt_embeddings, fused.weights, features)

    def embed(self, images: Sequence[Image.Image | str | Path], *, batch_size: int = 32) -> Tensor:
        """(N, D) float32 L2-normalised embeddings of PIL images or image files, on the model's device."""
        return embed_images(self, images, batch_size=batch_size)

    # ------------------------------------------------------------ prompts through the LLM
    def _prompt_rows(self, num_image_tokens: int) -> list[Tensor]:
        """The K prompts' token ids, each a whole chat turn on its own, for an image of `num_image_tokens` tokens."""
        image_token, rows = self.processor.image_token, []
        for prompt in self.prompts:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            if text.count(image_token) != 1:
                raise ValueError(f"the chat template gave {text.count(image_token)} {image_token} for one image")
            text = text.replace(image_token, image_token * num_image_tokens)
            rows.append(torch.tensor(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]))
        return rows

    def packed_prompts(self, grid_thw: Sequence[int]) -> PackedPrompts:
        """The K prompts of an image of patch grid `grid_thw` packed into one sequence (cached per grid): their
        common prefix (chat scaffolding and the image) once, then each prompt's own tokens."""
        key = tuple(int(v) for v in grid_thw)
        if key not in self._packed:
            merge = self.vlm.config.vision_config.spatial_merge_size
            grid_h, grid_w = key[1] // merge, key[2] // merge
            rows = self._prompt_rows(grid_h * grid_w)
            common = min(len(r) for r in rows) - 1  # every prompt keeps at least its last token
            for i in range(common):
                if any(r[i] != rows[0][i] for r in rows):
                    common = i
                    break
            if (rows[0][:common] == self.image_token_id).sum() != grid_h * grid_w:
                raise ValueError("the prompts' common prefix does not hold the whole image; put the image first")
            positions = [mrope_positions(r, self.image_token_id, grid_h, grid_w) for r in rows]
            segment = torch.cat([torch.zeros(common, dtype=torch.long)]
                                + [torch.full((len(r) - common,), k + 1) for k, r in enumerate(rows)])
            self._packed[key] = PackedPrompts(
                ids=torch.cat([rows[0][:common]] + [r[common:] for r in rows]),
                positions=torch.cat([positions[0][:, :common]] + [p[:, common:] for p in positions], dim=1),
                segment=segment, last=torch.cumsum(torch.tensor([len(r) - common for r in rows]), 0) + common - 1)
        return self._packed[key]

    def token_batch(self, grid_thw: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For images of patch grids `grid_thw` (N, 3): packed input ids (N, L), left-padded; M-RoPE positions
        (3, N, L); the additive attention mask (N, 1, L, L): causal, and a prompt's tokens see the common prefix and
        their own prompt only, so each reads exactly what it would read alone; and (N, K) the column of each
        prompt's last token."""
        packed = [self.packed_prompts(g) for g in grid_thw.tolist()]
        width = max(len(p.ids) for p in packed)
        n = len(packed)
        ids = torch.full((n, width), self.processor.tokenizer.pad_token_id, dtype=torch.long)
        positions = torch.zeros((3, n, width), dtype=torch.long)
        segment = torch.full((n, width), -1, dtype=torch.long)  # -1: padding
        last = torch.stack([p.last + width - len(p.ids) for p in packed])
        for i, p in enumerate(packed):
            ids[i, width - len(p.ids):], positions[:, i, width - len(p.ids):] = p.ids, p.positions
            segment[i, width - len(p.ids):] = p.segment
        query, key = segment[:, :, None], segment[:, None, :]
        allowed = (key >= 0) & ((key == 0) | (key == query)) & torch.ones(width, width, dtype=torch.bool).tril()
        allowed |= torch.eye(width, dtype=torch.bool)  # a padding row sees itself: no row is fully masked
        mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return ids.to(self.device), positions.to(self.device), mask[:, None].to(self.device), last.to(self.device)

    def _last_states(self, features: EncoderOutput) -> Tensor:
        ids, positions, mask, last = self.token_batch(features.grid_thw)
        with vision_inputs(self.vlm, features) as extra:
            hidden = self.vlm.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    mm_token_type_ids=(ids == self.image_token_id).int(),
                                    image_grid_thw=features.grid_thw.to(self.device), use_cache=False,
                                    **extra).last_hidden_state
        return hidden[torch.arange(len(ids), device=self.device)[:, None], last]  # (N, K, D)

    def prompt_states(self, features: EncoderOutput) -> Tensor:
        """(B, K, D) the final hidden state of each prompt's last token, for each image: one packed LLM sequence
        per image, reading the tower's outputs for that image (the tower ran once per image)."""
        num_images = len(features.tokens)
        grad = torch.is_grad_enabled()
        per_pass = self.images_per_pass or (num_images if grad else INFERENCE_IMAGES)
        states = []
        for start in range(0, num_images, per_pass):
            part = features.take(range(start, min(num_images, start + per_pass)))
            if grad and self.images_per_pass:  # recomputed in backward: one pass's activations alive at a time
                states.append(checkpoint(self._last_states, part, use_reentrant=False))
            else:
                states.append(self._last_states(part))
        return torch.cat(states)

    # ------------------------------------------------------------ saving and loading
    def manifest(self, run: dict | None = None) -> dict:
        return {"format": FORMAT,
                "base": {"checkpoint": self.base, "fingerprint": self.fingerprint, "dtype": str(self.dtype),
                         "model_type": self.vlm.config.model_type},
                "trainable": self.trainable_spec, "prompts": self.prompts, "fusion": self.fusion.spec(),
                "image_size": self.image_size, "run": run or {}}

    def save_pretrained(self, path: str | Path, *, run: dict | None = None) -> Path:
        """Write the folder of the module docstring atomically: a reference to the base checkpoint, the trained
        tensors and the fusion. run: the training run's record, kept in the manifest and the model card."""
        manifest = self.manifest(run)

        def write(tmp: Path) -> None:
            save_file({k: v.contiguous() for k, v in TrainableTensors(self.vlm).state_dict().items()},
                      tmp / "adapters.safetensors")
            save_file({k: v.detach().contiguous() for k, v in self.fusion.state_dict().items()},
                      tmp / "fusion.safetensors")
            self.preprocessor.image_processor.save_pretrained(tmp)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            (tmp / "README.md").write_text(model_card(manifest))

        return write_folder(path, write)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        images_per_pass: int = 0) -> AgffModel:
        """A saved AGFF-Embed model, in eval mode on `device`: its base checkpoint (checked against the recorded
        fingerprint), made trainable as it was, with the saved tensors and fusion loaded."""
        path = Path(path)
        file = path / MANIFEST
        try:
            manifest = json.loads(file.read_text())
            base, spec = manifest["base"], manifest["trainable"]
            prompts, fusion_spec = list(manifest["prompts"]), manifest["fusion"]
            image_size = int(manifest["image_size"])
            dtype = base["dtype"].removeprefix("torch.")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{file}: not an AGFF-Embed model folder ({type(e).__name__}: {e})") from None
        folder = resolve_checkpoint(base["checkpoint"])
        if checkpoint_fingerprint(folder) != base["fingerprint"]:
            raise CheckpointError(f"{path}: its base checkpoint {base['checkpoint']} ({folder}) is not the one it was "
                                  "trained on (fingerprint of config.json and weight headers differs)")
        vlm, processor = load_vlm(folder, device=str(device), dtype=dtype)
        apply_trainable(vlm, spec)
        fusion = AdaptiveFusion(fusion_spec["dim"], fusion_spec["num_prompts"])
        load_tensors(TrainableTensors(vlm), path / "adapters.safetensors")
        load_tensors(fusion, path / "fusion.safetensors")
        image_processor = load_image_processor(path)
        model = cls(vlm, processor, prompts, fusion.to(vlm.device), ImagePreprocessor(image_processor, image_size),
                    base=base["checkpoint"], fingerprint=base["fingerprint"], trainable=spec,
                    images_per_pass=images_per_pass)
        return model.eval()


MODEL_FORMATS.register(FORMAT, AgffModel)


def model_card(manifest: dict) -> str:
    """A README for a saved AGFF-Embed model: what it is, what it needs, its test metrics, how to use it."""
    run = manifest.get("run") or {}
    spec = manifest["trainable"]
    trained = (f"LoRA rank {spec['rank']} on {', '.join(spec['targets'])}" if spec["kind"] == "lora"
               else f"in full: {', '.join(spec['modules'])}")
    lines = ["# saga retrieval model: AGFF-Embed" + (f" on {run['dataset']}" if run.get("dataset") else ""), "",
             "A multimodal LLM used as the embedding model (AGFF-Embed, arXiv 2602.05729, as reconstructed in saga): "
             f"each image is read under {len(manifest['prompts'])} prompts, and the last-token states are fused into "
             "one L2-normalised embedding; nearest neighbours by cosine similarity retrieve images of the same class.",
             "", f"- base checkpoint: `{manifest['base']['checkpoint']}` ({manifest['base']['dtype']}), needed to "
             "load this folder (it holds only the trained tensors)", f"- trained: {trained}",
             f"- input: {manifest['image_size']} px squares"]
    if run.get("steps") is not None:
        lines.append(f"- training: {run['steps']} steps")
    lines += ["", "## Prompts", ""] + [f"{k + 1}. {p}" for k, p in enumerate(manifest["prompts"])]
    return card_tail(lines, run, shape="(2, D)")
