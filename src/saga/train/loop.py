"""The training loop, and the one place that weighs the loss terms.

The method's step function (saga.train.methods) returns named loss terms; `combine` multiplies each "loss" by its
weight in `cfg.weights`, sums them, and flattens every term into the metrics that are logged. `run_loop` does the
rest: learning rates, backward, clipping, AdamW, logging, evaluation and checkpoints, in step order. With several
processes (saga.train.distributed) the step runs inside DistributedDataParallel, every rank skips or takes the same
updates, logged metrics are averaged over ranks, and rank 0 alone writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from saga.config import LossWeights, TrainConfig, to_dict
from saga.data.base import ImageDataset, Split
from saga.errors import TrainingError
from saga.losses import LossTerms
from saga.train.batches import StepBatches
from saga.progress import progress
from saga.train.checkpoint import save_checkpoint
from saga.train.distributed import all_true, barrier, mean_over_ranks
from saga.train.logger import RunLogger
from saga.train.methods import METHODS, Batch, StepResult
from saga.train.setup import Parts, lr_factor

log = logging.getLogger(__name__)


def combine(terms: dict[str, LossTerms], weights: LossWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = sum_name weights.<name> * terms[name]["loss"]: one place combines and logs every term."""
    loss = sum(getattr(weights, name) * t["loss"] for name, t in terms.items())
    metrics = {"loss": loss.detach()}
    metrics.update({f"{name}/{key}": value.detach() for name, t in terms.items() for key, value in t.items()})
    return loss, metrics


class TrainStep(nn.Module):
    """The trainable modules (encoder + pooler, the DML loss with its proxies) and the method's step as one forward:
    what DistributedDataParallel wraps, so that it sees one forward and one backward per step. The judge is not a
    submodule: it has no gradients of its own to synchronise."""

    def __init__(self, parts: Parts, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.dml_loss = parts.model, parts.dml_loss
        self._parts, self._cfg, self._step = parts, cfg, METHODS.get(cfg.method).step

    def forward(self, batch: Batch, step: int) -> tuple[Tensor, StepResult, dict[str, Tensor]]:
        result = self._step(self._parts, self._cfg, batch, step)
        loss, metrics = combine(result.terms, self._cfg.weights)
        return loss, result, metrics


def data_parallel(parts: Parts, cfg: TrainConfig) -> nn.Module:
    """The step module, wrapped in DDP when there are several processes. find_unused_parameters: the baselines
    leave the tower's DeepStack mergers out of their loss."""
    step = TrainStep(parts, cfg)
    if parts.world.size == 1:
        return step
    device = parts.world.device
    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def run_loop(cfg: TrainConfig, parts: Parts, split: Split, logger: RunLogger, *, start: int,
             evaluate: Callable[[], dict[str, float]], on_step: Callable[[int], None] | None = None,
             neighbours: np.ndarray | None = None, class_attributes: dict[int, dict[str, str]] | None = None,
             skipped: int = 0) -> None:
    """Optimiser steps start..cfg.optim.steps-1. `step` counts completed steps: after batch s the run is at step
    s + 1, which is what logs and checkpoints are named by. neighbours: the nearest-class table of
    `dml.neighbour_classes` (saga.train.batches.class_neighbours), or None. class_attributes: label -> attributes,
    for `grpo.attribute_reward` and `weights.attribute_nll`. skipped: steps skipped before `start` (a resumed run)."""
    world = parts.world
    batches = StepBatches(split.labels, m=cfg.dml.m_per_class, batch_size=cfg.dml.batch_size, seed=cfg.seed,
                          neighbours=neighbours, rank=world.rank, world_size=world.size)
    # Its own generator: a DataLoader draws its workers' base seed when iterated, which would otherwise advance the
    # global generator differently in a resumed run than in an uninterrupted one.
    loader = DataLoader(ImageDataset(split), batch_sampler=batches.steps(start, cfg.optim.steps),
                        num_workers=cfg.data.num_workers, collate_fn=parts.preprocessor.collate,
                        generator=torch.Generator().manual_seed(cfg.seed))
    train_step = data_parallel(parts, cfg)
    params = [p for group in parts.optimizer.param_groups for p in group["params"]]
    total = cfg.optim.steps
    in_a_row = 0
    with progress(total=total, initial=start, desc=f"train {cfg.method}", unit="step", enabled=world.is_main) as bar:
        for s, (inputs, labels) in zip(range(start, total), loader, strict=True):
            tic = time.perf_counter()
            for group in parts.optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(s, cfg.optim.warmup_steps)
            batch = Batch(inputs, labels, [str(split.paths[i]) for i in batches.batch(s)],
                          [class_attributes[int(y)] for y in labels] if class_attributes else None)
            loss, result, metrics = train_step(batch, s)

            parts.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
            step = s + 1
            # A non-finite loss or gradient never reaches the weights (nor AdamW's moments): the update is skipped and
            # the run stops after optim.max_skipped_steps in a row, which means a broken input, not a one-off overflow.
            finite = all_true(bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm)))  # on every rank
            if finite:
                parts.optimizer.step()
                in_a_row = 0
            else:
                skipped, in_a_row = skipped + 1, in_a_row + 1
                bad = [name for name, t in result.terms.items() if not bool(torch.isfinite(t["loss"]))]
                what = f"loss terms {', '.join(bad)}" if bad else "gradient (the losses are finite)"
                if world.is_main:
                    log.warning("step %d: non-finite %s; the update was skipped (%d in a row)", step, what, in_a_row)
            metrics["skipped_steps"] = skipped

            if (cfg.log_every and step % cfg.log_every == 0) or step == total or not finite:  # .item() syncs
                metrics.update(result.stats, grad_norm=grad_norm, step_seconds=time.perf_counter() - tic)
                metrics.update({f"lr/{group['name']}": group["lr"] for group in parts.optimizer.param_groups})
                values = mean_over_ranks({k: float(v) for k, v in metrics.items()})
                logger.log(step, values)
                bar.set_postfix({k: f"{values[k]:.3g}" for k in ("loss", "grpo/loss", "kl/loss", "dml/loss",
                                                                  "reward_mean") if k in values})
            if result.completions and cfg.grpo.log_completions_every and step % cfg.grpo.log_completions_every == 0:
                logger.completions(step, result.completions)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:  # the final one is the caller's
                logger.log(step, {f"test/{k}": v for k, v in evaluate().items()})
            if in_a_row >= cfg.optim.max_skipped_steps:
                raise TrainingError(f"{logger.run_dir}: {in_a_row} steps in a row had a non-finite loss or gradient "
                                    f"(step {step}: {what}), so the run stopped; the weights never took those "
                                    "updates, and checkpoints/ holds the last finite ones. Check the judge's weights, "
                                    "the data and the learning rates, then --resume.")
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total:
                if world.is_main:  # every rank holds the same weights and optimizer state
                    save_checkpoint(logger.run_dir / "checkpoints", step, parts.trainable(), parts.optimizer,
                                    {"config": to_dict(cfg), "skipped_steps": skipped, "world_size": world.size},
                                    keep=cfg.keep_checkpoints)
                barrier()
            bar.update(1)
            if on_step is not None:
                on_step(step)
