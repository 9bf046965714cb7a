"""One data-parallel SAGA step, for tests/train/test_distributed.py (run it under `torchrun --nproc_per_node 2`).

    torchrun --nproc_per_node 2 tests/train/ddp_step.py WORLD JUDGE OUT.safetensors

Every rank builds the same parts, takes its share of step 0's global batch and runs the step inside DDP; rank 0
writes the averaged gradients of the encoder, pooler and proxies. Verdicts are read from the parity of each
completion's length (a random tiny judge rarely states one), as the training tests do, so L_GRPO has a gradient.
"""

import dataclasses
import sys

import torch
from safetensors.torch import save_file

from saga.config import load_config
from saga.data import ImageDataset, load_dataset
from saga.judge import FrozenJudge
from saga.train import build_parts, distributed
from saga.train.batches import StepBatches
from saga.train.loop import data_parallel
from saga.train.methods import Batch

# 8-image global batches (4 classes x 2), 2 pairs per step: each of 2 ranks gets 2 classes and mines 1 pair.
OVERRIDES = ["method=saga", "device=cpu", "data.dataset=synth", "data.image_size=64", "dml.batch_size=8",
             "dml.m_per_class=2", "grpo.num_generations=2", "grpo.pairs_per_step=2", "grpo.max_completion_length=6",
             "optim.lr_encoder=1e-3", "optim.lr_pooler=1e-2", "optim.lr_proxies_mult=10"]


def parity_verdicts() -> None:
    rollout = FrozenJudge.rollout

    def patched(self, enc_out, **kwargs):
        r = rollout(self, enc_out, **kwargs)
        return dataclasses.replace(r, verdicts=[len(t) % 2 == 0 for t in r.texts])

    FrozenJudge.rollout = patched


def batch_of(split, ids, preprocessor) -> Batch:
    images, labels = zip(*(ImageDataset(split)[i] for i in ids), strict=True)
    return Batch(preprocessor(images), torch.tensor(labels), [str(split.paths[i]) for i in ids])


def grads(parts) -> dict[str, torch.Tensor]:
    named = {**{f"encoder.{k}": p for k, p in parts.encoder.named_parameters()},
             **{f"pooler.{k}": p for k, p in parts.pooler.named_parameters()},
             **{f"loss.{k}": p for k, p in parts.dml_loss.named_parameters()}}
    return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().contiguous() for k, p in named.items()}


def main(world_dir: str, judge: str, out: str) -> None:
    torch.set_num_threads(1)
    parity_verdicts()
    world = distributed.init("cpu")
    cfg = load_config(None, [*OVERRIDES, f"data.root={world_dir}", f"model.judge={judge}"])
    split = load_dataset("synth", world_dir).train
    torch.manual_seed(cfg.seed)
    parts = build_parts(cfg, split, world.device, world)
    ids = StepBatches(split.labels, m=2, batch_size=8, seed=cfg.seed, rank=world.rank, world_size=world.size).batch(0)
    step = data_parallel(parts, cfg)  # kept alive: DDP's backward hooks hold it by a weak reference
    loss, _, _ = step(batch_of(split, ids, parts.preprocessor), 0)
    loss.backward()
    if world.is_main:
        save_file(grads(parts), out)
    distributed.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:4])
