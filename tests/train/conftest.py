"""Fixtures of the training tests: a tiny synthetic world and configs sized for a CPU test (a few seconds a run).

The judge is the session's tiny random Qwen3-VL (`tiny_vlm_dir`, 64 px -> 4 tokens per image). Exposed as fixtures
returning functions, because tests run with --import-mode=importlib (no sibling imports).
"""

from __future__ import annotations


import pytest
import torch

from saga.config import TrainConfig, load_config


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread. Two threads that spin-wait on each other while
    other processes hold the cores made a tiny SAGA step 100x slower (12 s instead of 0.13 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
