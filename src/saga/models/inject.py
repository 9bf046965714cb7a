"""Make the judge read image features computed elsewhere (by the trainable encoder) instead of running its tower.

transformers 5.23 takes precomputed features as `mm_encoder_outputs={"image": ...}` in forward and generate;
5.17 (the GPU machine's version) has no such argument. `vision_inputs` hides the difference: inside its `with`
block, the keyword arguments it yields make forward/generate use the given features, with the same logits and
gradients as if the judge's tower had produced them. Where `mm_encoder_outputs` is missing, the judge's tower is
replaced for the duration of the block by a stand-in that returns the features, and a placeholder `pixel_values`
sends the forward pass down its usual image path (`get_image_features` -> tower -> scatter into the image-token
positions, DeepStack included).

Expand the batch yourself (`EncoderOutput.take`, repeated prompts) rather than with `num_return_sequences`: the
placeholder carries no pixels to expand.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from saga.models.encoder import EncoderOutput


def supports_mm_encoder_outputs(model: nn.Module | type) -> bool:
    """Whether this transformers release's forward takes `mm_encoder_outputs` (a model or its class)."""
    return "mm_encoder_outputs" in inspect.signature(model.forward).parameters


@contextmanager
def vision_inputs(model: nn.Module, features: EncoderOutput, *, mode: str = "auto") -> Iterator[dict]:
    """Yield the keyword arguments that make `model(...)` / `model.generate(...)` use `features` as the images.

    Pass them along with input_ids, attention_mask, mm_token_type_ids and `image_grid_thw=features.grid_thw`.
    mode: "mm_encoder_outputs" (needs a release that has it), "tower" (any release), or "auto" (the first where
    available).
    """
    if mode == "auto":
        mode = "mm_encoder_outputs" if supports_mm_encoder_outputs(model) else "tower"
    if mode == "mm_encoder_outputs":
        yield {"mm_encoder_outputs": {"image": features.as_mm_encoder_outputs()}}
        return
    if mode != "tower":
        raise ValueError(f"mode {mode!r}: use 'auto', 'mm_encoder_outputs' or 'tower'")

    tower = model.model.visual

    def stand_in(hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs):
        if not torch.equal(grid_thw.cpu(), features.grid_thw.cpu()):
            raise ValueError(f"image_grid_thw {grid_thw.tolist()} does not match the features' "
                             f"{features.grid_thw.tolist()}")
        return features.as_tower_output()

    tower.forward = stand_in  # an instance attribute shadows the class's forward; nn.Module.__call__ finds it
    try:
        yield {"pixel_values": features.tokens[0].new_zeros(0)}
    finally:
        del tower.forward
