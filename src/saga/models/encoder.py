"""The trainable image encoder: a Qwen-VL vision tower, and what it returns per image.

In SAGA the encoder is a copy of the frozen judge's vision tower (docs/method.md: all methods share the
Qwen3-VL-8B tower). Its merged tokens play two roles: the pooler turns them into the retrieval embedding, and the
judge reads them in place of its own tower's output, so the GRPO gradient reaches the encoder through them
(docs/design.md, "One SAGA step"). The tower runs once per image; `EncoderOutput.take` repeats images for
several completions without running it again.

Tower output (docs/method.md, "The judge"): `pooler_output` = merged tokens at the LLM width, one per LLM image token,
(grid_h * grid_w / 4 per image); `last_hidden_state` = pre-merger patches in 2x2-window order; Qwen3-VL also
returns `deepstack_features`, one tensor per DeepStack level, added to the LLM hidden state after LLM layers 0, 1,
2 ... at the image positions. Qwen2.5-VL has no DeepStack.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence


@dataclass
class EncoderOutput:
    """Per-image outputs of the vision tower for a batch of B images.

    tokens:    B tensors (n_i, D_llm), the merged tokens the LLM sees, n_i = grid_h * grid_w / 4.
    patches:   B tensors (4 n_i, D_vision), the last block's patch states before the merger (2x2-window order;
               Qwen2.5-VL: its window-attention order).
    deepstack: one entry per DeepStack level, each B tensors (n_i, D_llm); empty for Qwen2.5-VL.
    grid_thw:  (B, 3) patch grid (t, h, w) per image, as the image processor returned it.
    """

    tokens: tuple[Tensor, ...]
    patches: tuple[Tensor, ...]
    deepstack: tuple[tuple[Tensor, ...], ...]
    grid_thw: Tensor
    output_cls: type = field(repr=False)  # the tower's own output class, rebuilt by the as_* methods

    @property
    def num_tokens(self) -> list[int]:
        return [t.shape[0] for t in self.tokens]

    def padded(self) -> tuple[Tensor, Tensor]:
        """Tokens as (B, T, D_llm) with T = max n_i, zero-padded, and a (B, T) bool mask, True at real tokens."""
        tokens = pad_sequence(list(self.tokens), batch_first=True)
        lengths = torch.tensor(self.num_tokens, device=tokens.device)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        return tokens, mask

    def take(self, indices: Sequence[int]) -> EncoderOutput:
        """The outputs of images `indices` in that order (repeats allowed); gradients flow back to the originals."""
        def pick(per_image: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return tuple(per_image[i] for i in indices)

        return EncoderOutput(pick(self.tokens), pick(self.patches), tuple(pick(level) for level in self.deepstack),
                             self.grid_thw[list(indices)], self.output_cls)

    def as_mm_encoder_outputs(self):
        """The object that `forward` / `generate` of the judge accept as `mm_encoder_outputs={"image": ...}` (with
        `image_grid_thw` and `mm_token_type_ids`, without `pixel_values`): per-image splits, as
        `get_image_features` returns them. Only transformers releases whose forward has that argument (5.23 has,
        5.17 has not); `saga.models.inject.vision_inputs` works on both."""
        return self._rebuild(self.tokens, [tuple(level) for level in self.deepstack])

    def as_tower_output(self):
        """The object the tower itself returns for this batch (images concatenated)."""
        return self._rebuild(torch.cat(self.tokens), [torch.cat(level) for level in self.deepstack])

    def _rebuild(self, pooler_output, deepstack):
        fields = {"last_hidden_state": torch.cat(self.patches), "pooler_output": pooler_output}
        if self.deepstack:
            fields["deepstack_features"] = deepstack
        return self.output_cls(**fields)


class VisionEncoder(nn.Module):
    """A Qwen3-VL / Qwen2.5-VL vision tower as a trainable module: (pixel_values, image_grid_thw) -> EncoderOutput.

    Inputs are what the model's image processor returns (see `saga.models.preprocess.ImagePreprocessor`):
    pixel_values (sum of patches, C * T * P * P) and image_grid_thw (B, 3).
    """

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    @classmethod
    def from_vlm(cls, model: nn.Module, *, dtype: torch.dtype | None = None,
                 attn_implementation: str | None = None) -> VisionEncoder:
        """A trainable deep copy of `model.model.visual` (the judge keeps its own, frozen tower).

        dtype: cast the copy (e.g. float32 master weights beside a bfloat16 judge); None keeps the judge's.
        attn_implementation: e.g. "sdpa" for a judge loaded with "eager" to return attention weights (the encoder
        never needs them); None keeps the judge's.
        """
        tower = copy.deepcopy(model.model.visual)
        if dtype is not None:
            tower.to(dtype)
        if attn_implementation is not None:
            tower.set_attn_implementation(attn_implementation)
        return cls(tower.requires_grad_(True))

    @classmethod
    def from_pretrained(cls, id_or_path: str | Path, *, device: str = "auto", dtype: str | torch.dtype = "auto",
                        attn_implementation: str = "sdpa") -> VisionEncoder:
        """The vision tower of another checkpoint (hub id or directory), without loading its language model."""
        from saga.models.backbone import load_vision_tower

        tower = load_vision_tower(id_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation)
        return cls(tower.requires_grad_(True))

    @property
    def out_dim(self) -> int:
        """Width of the merged tokens (the LLM hidden size)."""
        return self.tower.config.out_hidden_size

    @property
    def merge_size(self) -> int:
        return self.tower.config.spatial_merge_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    def forward(self, pixel_values: Tensor, image_grid_thw: Tensor) -> EncoderOutput:
        # As Qwen3VLModel.get_image_features: run the tower on the whole batch, then split per image.
        out = self.tower(pixel_values.to(self.device, self.dtype), grid_thw=image_grid_thw.to(self.device),
                         return_dict=True)
        patches_per_image = image_grid_thw.prod(-1).tolist()
        tokens_per_image = [n // self.merge_size**2 for n in patches_per_image]
        deepstack = getattr(out, "deepstack_features", None) or []
        return EncoderOutput(
            tokens=torch.split(out.pooler_output, tokens_per_image),
            patches=torch.split(out.last_hidden_state, patches_per_image),
            deepstack=tuple(torch.split(level, tokens_per_image) for level in deepstack),
            grid_thw=image_grid_thw,
            output_cls=type(out),
        )
