"""Fixtures shared across the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saga.config import TrainConfig, load_config

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
    from saga.synth import generate_world

    return generate_world(tmp_path_factory.mktemp("world"), num_classes=6, images_per_class=4, size=64, seed=0,
                          workers=1)


# A SAGA run that costs about a second a step on the tiny model: 6-image batches (3 classes x 2), 2 pairs x 2
# completions of 6 tokens.
TINY = [
    "device=cpu", "log_every=1", "checkpoint_every=2", "data.dataset=synth", "data.image_size=64",
    "data.eval_batch_size=12", "dml.batch_size=6", "dml.m_per_class=2", "grpo.num_generations=2",
    "grpo.pairs_per_step=2", "grpo.max_completion_length=6", "grpo.log_completions_every=1",
    "optim.steps=3", "optim.lr_encoder=1e-3", "optim.lr_pooler=1e-2", "optim.lr_proxies_mult=10",
]


@pytest.fixture
def tiny_overrides(tmp_path, synth_world, tiny_vlm_dir):
    """overrides(method="saga", *more) -> the dotted overrides of a tiny run writing to tmp_path/run."""
    def overrides(method: str = "saga", *more: str) -> list[str]:
        return [f"method={method}", f"out_dir={tmp_path / 'run'}", f"data.root={synth_world}",
                f"model.judge={tiny_vlm_dir}", *TINY, *more]

    return overrides


@pytest.fixture
def tiny_config(tiny_overrides):
    """tiny_config(method="saga", *more) -> a TrainConfig of a tiny run."""
    def make(method: str = "saga", *more: str) -> TrainConfig:
        return load_config(None, tiny_overrides(method, *more))

    return make
