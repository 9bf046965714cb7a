"""Data-parallel training over torch.distributed, started by `accelerate launch` or `torchrun`.

    accelerate launch --num_processes 8 -m saga.cli train --config configs/cub/saga.yaml     # 8 GPUs
    torchrun --nproc_per_node 2 -m saga.cli train --config configs/synth/saga.yaml          # 2 CPU processes (gloo)

What N processes share with one (the invariant behind "the same config is the same experiment on 1 or N GPUs"):

- `dml.batch_size` is the global batch. Every rank builds the same global stream of m-per-class batches and takes
  its share of each, whole classes (`MPerClassSampler`), so the batch of a step is the same on 1 or N processes.
- L_DML sees the whole global batch: embeddings and labels are gathered from every rank (`gather_batch`, with
  gradient back to each rank's own rows), so the loss equals the single-process one.
- The judge's work is split: each rank mines `grpo.pairs_per_step / N` pairs from its own share of the batch and
  samples their rollouts with its own seed (seed, step, rank). DDP averages the gradients over ranks, so L_GRPO and
  L_KL are the mean of the ranks' losses. The single-process equivalent of an N-process step is therefore: for each
  rank's share, its pairs and rollouts, those losses averaged, plus L_DML on the whole batch (tests/train test of
  the gradients does exactly this). With N = 1 it is plain single-process training, unchanged.
- The trainable modules (encoder, pooler, proxies) are wrapped in DistributedDataParallel; the frozen judge is
  not (it has no gradients of its own): each rank holds a full copy, or a shard of it with `model.judge_sharding:
  fsdp` (saga.judge.frozen).
- Only rank 0 writes to the run directory (config, logs, TensorBoard, checkpoints, export); the others wait for it
  at the points where they must read what it wrote.

Without the launchers' environment (WORLD_SIZE unset or 1) nothing here initialises torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from saga.errors import SagaError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    launcher: str | None = None  # "accelerate", "torchrun" or None (a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launcher() -> str | None:
    """Which launcher started this process, from the environment it sets."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return "accelerate" if any(k.startswith("ACCELERATE_") for k in os.environ) else "torchrun"


def init(device: str = "auto") -> World:
    """Join the process group the launcher describes (through accelerate, which also picks the backend: NCCL on
    GPUs, gloo on CPUs), or stay a single process."""
    from saga.utils import resolve_device

    if launcher() is None:
        return World(device=resolve_device(device))
    from accelerate import PartialState

    state = PartialState(cpu=resolve_device(device).type == "cpu")
    return World(state.process_index, state.num_processes, torch.device(state.device), launcher())


def current() -> World:
    """The world of an already initialised process group (or a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), launcher=launcher())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src`, on every rank (a picklable object; e.g. an error rank 0 met, or None)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 alone and return its result on every rank. An expected failure there (bad input, a file)
    is raised on every rank, so that none waits for rank 0 at a later collective."""
    result, error = None, None
    if current().is_main:
        try:
            result = fn()
        except (OSError, SagaError) as e:
            error = e
    result, error = broadcast((result, error))
    if error is not None:
        raise error
    return result


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every rank (e.g. a step's loss is finite everywhere, so every rank updates)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor(float(flag), device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each logged metric averaged over the ranks (every rank logs the same keys at the same steps)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class _AllGather(torch.autograd.Function):
    """all_gather with gradient: every rank's rows in rank order; backward returns to each rank the sum over ranks
    of the gradient of its own rows (every rank computed a loss on the gathered batch). Uses only all_gather and
    all_reduce, which gloo has (it has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows, ctx.rank = tensor.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_batch(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The global batch's embeddings (with gradient to this rank's rows) and labels; unchanged on one process.
    Every rank holds the same number of rows (whole classes of the global batch)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embeddings, labels
    labels = labels.to(embeddings.device)
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels.contiguous())
    return _AllGather.apply(embeddings), torch.cat(parts)
