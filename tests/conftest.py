"""Fixtures shared across the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Test tensors are tiny: one thread avoids OpenMP start-up and contention overhead that dominates them.
torch.set_num_threads(1)

# Texts the tiny tokenizer is trained on: the chat scaffolding and judge-like answers get merged tokens.
TINY_CORPUS = [
    "Compare the two birds.", "body colour: red / blue", "crest: tall / none", "Answer: same", "Answer: different",
] * 4


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL (preset "tiny", 64 px images -> 4 image tokens, seed 0) with its tokenizer and
    image-only processor, saved once per session in the Hugging Face format. Load it with
    `saga.models.load_vlm(tiny_vlm_dir, device="cpu")`; copy it before changing anything in it."""
    from saga.models import build_tiny_qwen3vl

    out = tmp_path_factory.mktemp("tiny_vlm")
    build_tiny_qwen3vl(out, preset="tiny", corpus=TINY_CORPUS, image_size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory) -> Path:
    """6 classes x 4 images of 64 px: classes 0-2 train (12 images), 3-5 test (12 images)."""
    from saga.data.synth import generate_world

    return generate_world(tmp_path_factory.mktemp("world"), num_classes=6, images_per_class=4, size=64, seed=0,
                          workers=1)
