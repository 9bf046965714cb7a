import numpy as np
import pytest
import torch
from PIL import Image

from saga.models import ImagePreprocessor, build_tiny_qwen3vl


@pytest.fixture(scope="module")
def processor():
    return build_tiny_qwen3vl(image_size=64)[1]


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("image_size, side", [(64, 64), (128, 128), (224, 224), (100, 96), (10, 32)])
def test_side_is_rounded_to_patch_times_merge(processor, image_size, side):
    pre = ImagePreprocessor(processor, image_size)
    assert pre.side == side and pre.tokens_per_image == (side // 32) ** 2


def test_batch_of_mixed_images(processor):
    # the processor itself is configured for 64 px; the preprocessor's own size wins
    pre = ImagePreprocessor(processor, 128)
    out = pre([_image(300, 200), _image(50, 80), _image(128, 128).convert("L")])
    assert set(out) == {"pixel_values", "image_grid_thw"}
    assert out["image_grid_thw"].tolist() == [[1, 8, 8]] * 3
    assert out["pixel_values"].shape == (3 * 64, 3 * 2 * 16 * 16) and out["pixel_values"].dtype == torch.float32


def test_pixels_are_normalised_to_minus_one_one(processor):
    white, black = Image.new("RGB", (64, 64), "white"), Image.new("RGB", (64, 64), "black")
    out = ImagePreprocessor(processor, 64)([white, black])["pixel_values"]
    # mean = std = 0.5: 255 -> 1, 0 -> -1; first 16 rows are image 0's patches
    assert torch.allclose(out[:16], torch.ones(1)) and torch.allclose(out[16:], -torch.ones(1))


def test_accepts_a_bare_image_processor(processor):
    pre = ImagePreprocessor(processor.image_processor, 64)
    assert pre([_image(64, 64)])["image_grid_thw"].tolist() == [[1, 4, 4]]
