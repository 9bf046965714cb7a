"""The training loop, and the one place that weighs the loss terms.

The method's step function (saga.train.methods) returns named loss terms; `combine` multiplies each "loss" by its
weight in `cfg.weights`, sums them, and flattens every term into the metrics that are logged. `run_loop` does the
rest: learning rates, backward, clipping, AdamW, logging, evaluation and checkpoints, in step order.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from saga.config import LossWeights, TrainConfig, to_dict
from saga.data.base import ImageDataset, Split
from saga.losses import LossTerms
from saga.train.batches import StepBatches
from saga.train.checkpoint import save_checkpoint
from saga.train.logger import RunLogger
from saga.train.methods import METHODS, Batch
from saga.train.setup import Parts, lr_factor


def combine(terms: dict[str, LossTerms], weights: LossWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = sum_name weights.<name> * terms[name]["loss"]: one place combines and logs every term."""
    loss = sum(getattr(weights, name) * t["loss"] for name, t in terms.items())
    metrics = {"loss": loss.detach()}
    metrics.update({f"{name}/{key}": value.detach() for name, t in terms.items() for key, value in t.items()})
    return loss, metrics


def run_loop(cfg: TrainConfig, parts: Parts, split: Split, logger: RunLogger, *, start: int,
             evaluate: Callable[[], dict[str, float]], on_step: Callable[[int], None] | None = None,
             neighbours: np.ndarray | None = None, class_attributes: dict[int, dict[str, str]] | None = None) -> None:
    """Optimiser steps start..cfg.optim.steps-1. `step` counts completed updates: after the update of batch s the
    run is at step s + 1, which is what logs and checkpoints are named by. neighbours: the nearest-class table
    of `dml.neighbour_classes` (saga.train.batches.class_neighbours), or None. class_attributes: label -> attributes,
    for `grpo.attribute_reward` and `weights.attribute_nll`."""
    batches = StepBatches(split.labels, m=cfg.dml.m_per_class, batch_size=cfg.dml.batch_size, seed=cfg.seed,
                          neighbours=neighbours)
    # Its own generator: a DataLoader draws its workers' base seed when iterated, which would otherwise advance the
    # global generator differently in a resumed run than in an uninterrupted one.
    loader = DataLoader(ImageDataset(split), batch_sampler=batches.steps(start, cfg.optim.steps),
                        num_workers=cfg.data.num_workers, collate_fn=parts.preprocessor.collate,
                        generator=torch.Generator().manual_seed(cfg.seed))
    step_fn = METHODS.get(cfg.method).step
    params = [p for group in parts.optimizer.param_groups for p in group["params"]]
    total = cfg.optim.steps
    bar = tqdm(total=total, initial=start, desc=f"train {cfg.method}", unit="step", disable=None)
    for s, (inputs, labels) in zip(range(start, total), loader, strict=True):
        tic = time.perf_counter()
        for group in parts.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(s, cfg.optim.warmup_steps)
        batch = Batch(inputs, labels, [str(split.paths[i]) for i in batches.batch(s)],
                      [class_attributes[int(y)] for y in labels] if class_attributes else None)
        result = step_fn(parts, cfg, batch, s)
        loss, metrics = combine(result.terms, cfg.weights)

        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
        parts.optimizer.step()

        step = s + 1
        if (cfg.log_every and step % cfg.log_every == 0) or step == total:  # .item() syncs: only when logging
            metrics.update(result.stats, grad_norm=grad_norm, step_seconds=time.perf_counter() - tic)
            metrics.update({f"lr/{group['name']}": group["lr"] for group in parts.optimizer.param_groups})
            values = {k: float(v) for k, v in metrics.items()}
            logger.log(step, values)
            bar.set_postfix({k: f"{values[k]:.3g}" for k in ("loss", "grpo/loss", "kl/loss", "dml/loss",
                                                              "reward_mean") if k in values})
        if result.completions and cfg.grpo.log_completions_every and step % cfg.grpo.log_completions_every == 0:
            logger.completions(step, result.completions)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total:  # the final one is the caller's
            logger.log(step, {f"test/{k}": v for k, v in evaluate().items()})
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total:
            save_checkpoint(logger.run_dir / "checkpoints", step, parts.trainable(), parts.optimizer,
                            {"config": to_dict(cfg)}, keep=cfg.keep_checkpoints)
        bar.update(1)
        if on_step is not None:
            on_step(step)
    bar.close()
