"""Where L_GRPO pushes the encoder, against L_DML and against itself from batch to batch.

L_GRPO's gradient on the encoder is about 1/200 of L_DML's, and weighting it up costs R@1 (README, "Status of the
results"). This tells the two explanations apart: a small but steady push (it would then help when weighted up) or
a direction that changes from batch to batch (noise, which weighting up only amplifies). For each of `--batches`
training batches (the trainer's own batches and SAGA step, with no update in between) the gradient of each loss
term on the encoder's parameters is taken alone, unweighted. Printed and written as JSON, per term:

- norm: the mean gradient norm over the batches;
- steadiness: |mean of the gradients| / mean of their norms. 1 when every batch pushes the same way; about
  1/sqrt(n) for directions unrelated from batch to batch (the value for n random directions is printed beside it);
- steady norm: the norm of the expected gradient, the push that adds up over steps, from the unbiased estimate of
  its square, mean over i != j of g_i . g_j (0 where that is negative); with a 95 % upper bound from the estimate's
  standard error (2 std_i(c_i) / sqrt(n), c_i = mean over j != i of g_i . g_j: a U-statistic's);
- cos to L_DML: the cosine between the term's gradient and L_DML's on the same batch (mean over the batches).

Batches where a term is exactly zero (L_GRPO when every group's rewards are equal) are counted, and left out of
its steadiness and cosines.

    python bench/grad_alignment.py --config configs/synth/saga.yaml [dotted.key=value ...] [--batches 32]
           [--checkpoint RUN/checkpoints/ckpt-000200] [--out FILE.json]

With --checkpoint the trainable weights (encoder, pooler, proxies) are those of a run's checkpoint: the
gradients at the end of training instead of at its start.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from saga.config import load_config
from saga.data import load_dataset
from saga.data.base import load_image
from saga.train.batches import StepBatches, class_neighbours
from saga.train.checkpoint import load_checkpoint
from saga.train.methods import Batch, saga_step
from saga.train.setup import build_parts
from saga.utils import resolve_device, seed_everything


def summarise(grads: dict[str, list[torch.Tensor]]) -> dict[str, dict]:
    """grads: term -> one flat gradient per batch (None where the term was exactly zero)."""
    reference = grads["dml"]
    out = {}
    for name, gs in grads.items():
        live = [(g, d) for g, d in zip(gs, reference, strict=True) if g is not None]
        norms = [float(g.norm()) for g, _ in live]
        summary = {"batches": len(gs), "zero_batches": len(gs) - len(live),
                   "norm": float(np.mean(norms)) if norms else 0.0}
        if live:
            stacked = torch.stack([g for g, _ in live]).double()
            n = len(live)
            summary["steadiness"] = float(stacked.mean(0).norm()) / float(np.mean(norms))
            summary["steadiness_if_random"] = 1 / math.sqrt(n)
            if n > 2:  # E[g_i . g_j] over i != j is |E g|^2 for independent batches
                others = (stacked @ stacked.sum(0) - stacked.square().sum(1)) / (n - 1)  # c_i of the docstring
                estimate, se = float(others.mean()), 2 * float(others.std()) / math.sqrt(n)
                summary["steady_norm"] = math.sqrt(max(estimate, 0.0))
                summary["steady_norm_upper"] = math.sqrt(max(estimate + 2 * se, 0.0))
            cos = [float(torch.nn.functional.cosine_similarity(g, d, dim=0)) for g, d in live]
            summary["cos_to_dml"] = float(np.mean(cos))
            summary["cos_to_dml_negative_share"] = float(np.mean([c < 0 for c in cos]))
        out[name] = summary
    return out


def measure(cfg, batches: int, checkpoint: str | None = None) -> dict[str, dict]:
    if cfg.method != "saga":
        raise SystemExit(f"grad_alignment: method {cfg.method!r}; the config must be a SAGA one")
    seed_everything(cfg.seed)
    data = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split_file)
    parts = build_parts(cfg, data.train, resolve_device(cfg.device))
    neighbours = None
    if cfg.dml.neighbour_classes:  # the run's near-miss batches, from the initial encoder as `train` builds them
        neighbours = class_neighbours(parts.encoder, parts.preprocessor, data.train, k=cfg.dml.neighbour_classes,
                                      batch_size=cfg.data.eval_batch_size)
    if checkpoint:
        load_checkpoint(checkpoint, parts.trainable(), parts.optimizer)
    params = [p for p in parts.encoder.parameters() if p.requires_grad]
    stream = StepBatches(data.train.labels, m=cfg.dml.m_per_class, batch_size=cfg.dml.batch_size, seed=cfg.seed,
                         neighbours=neighbours)
    grads: dict[str, list] = {}
    for step in range(batches):
        ids = stream.batch(step)
        inputs = parts.preprocessor([load_image(data.train.paths[i]) for i in ids])
        batch = Batch(inputs, torch.as_tensor(data.train.labels[ids]), [str(data.train.paths[i]) for i in ids],
                      [data.class_attributes[int(data.train.labels[i])] for i in ids]
                      if cfg.needs_class_attributes else None)
        terms = saga_step(parts, cfg, batch, step).terms
        for name, term in terms.items():
            loss = term["loss"]
            if not loss.requires_grad:
                grads.setdefault(name, []).append(None)
                continue
            g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            flat = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in
                              zip(g, params, strict=True)])
            grads.setdefault(name, []).append(None if flat.abs().max() == 0 else flat.detach().cpu())
    return summarise(grads)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, as for `saga train`")
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--checkpoint", help="a run's checkpoint folder: its trainable weights")
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    result = measure(cfg, args.batches, args.checkpoint)
    nan = float("nan")
    print(f"{'term':6s} {'norm':>9s} {'steady norm':>12s} {'(95% <=)':>9s} {'steadiness':>11s} {'(random)':>9s} "
          f"{'cos to dml':>11s} {'zero':>5s}")
    for name, s in result.items():
        print(f"{name:6s} {s['norm']:9.4f} {s.get('steady_norm', nan):12.4f} {s.get('steady_norm_upper', nan):9.4f} "
              f"{s.get('steadiness', nan):11.3f} {s.get('steadiness_if_random', nan):9.3f} "
              f"{s.get('cos_to_dml', nan):11.3f} {s['zero_batches']:5d}")
    doc = {"config": args.config, "overrides": args.overrides, "checkpoint": args.checkpoint,
           "batches": args.batches, "terms": result}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return doc


if __name__ == "__main__":
    main()
