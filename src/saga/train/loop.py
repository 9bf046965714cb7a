"""The training loop: one step function per method, and one place that weighs the loss terms.

    saga_step   DESIGN.md "Data flow of one SAGA step": L_GRPO + L_KL + L_DML from one pass of the encoder
                (+ the oracle diagnostic L_ATTR when weights.attribute_nll > 0)
    dml_step    the baselines (Proxy Anchor, Potential Field): mean-pooled embedding, L_DML only

A step function returns the named loss terms of its losses (each a dict with "loss" and detached diagnostics,
saga.losses.base); `combine` multiplies each "loss" by its weight in `cfg.weights`, sums them, and flattens every
term into the metrics that are logged. `run_loop` does the rest: learning rates, backward, clipping, AdamW,
logging, evaluation and checkpoints, in step order.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from tqdm import tqdm

from saga.config import LossWeights, TrainConfig, to_dict
from saga.data.base import ImageDataset, Split
from saga.judge.prompts import attribute_reward, format_comparison, verdict_reward
from saga.losses import LossTerms, answer_nll, attention_kl, group_advantages, grpo_loss
from saga.models import ImagePreprocessor
from saga.train.batches import StepBatches, mine_pairs, step_rng
from saga.train.checkpoint import save_checkpoint
from saga.train.logger import RunLogger
from saga.train.setup import Parts, lr_factor


@dataclass
class Batch:
    """One step's m-per-class batch: tower inputs, dataset labels, the images' paths (for the logs) and, for
    `grpo.attribute_reward` and `weights.attribute_nll`, each image's class attributes."""

    inputs: dict[str, Tensor]
    labels: Tensor
    paths: list[str]
    attributes: list[dict[str, str]] | None = None


@dataclass
class StepResult:
    """terms: loss name (a field of LossWeights) -> its LossTerms; stats: extra metrics; completions: sample rows."""

    terms: dict[str, LossTerms]
    stats: dict[str, Tensor | float] = field(default_factory=dict)
    completions: list[dict] = field(default_factory=list)


def dml_step(parts: Parts, cfg: TrainConfig, batch: Batch, step: int) -> StepResult:
    """Baseline: encoder -> mean pooler -> Proxy Anchor / Potential Field (REFERENCE.md sections 1 and 4)."""
    tokens, mask = parts.encoder(**batch.inputs).padded()
    pooled = parts.pooler(tokens.float(), mask)
    return StepResult({"dml": parts.dml_loss(pooled.embedding, batch.labels)})


def saga_step(parts: Parts, cfg: TrainConfig, batch: Batch, step: int) -> StepResult:
    """SAGA (REFERENCE.md section 1; DESIGN.md): three losses from one pass of the encoder over the batch."""
    g, judge = cfg.grpo, parts.judge
    # 1. The tower runs once per image. Its tokens feed the pooler (-> L_DML) and, for the pairs, the judge.
    enc_out = parts.encoder(**batch.inputs)
    tokens, mask = enc_out.padded()
    pooled = parts.pooler(tokens.float(), mask)
    dml = parts.dml_loss(pooled.embedding, batch.labels)

    # 2. P pairs from this batch: half same class, half different, part of those the hardest in-batch negatives
    #    under the current (detached) embeddings (saga.train.batches explains why in-batch).
    pairs = mine_pairs(pooled.embedding, batch.labels, num_pairs=g.pairs_per_step, same_fraction=g.same_fraction,
                       hard_negative_fraction=g.hard_negative_fraction, rng=step_rng(cfg.seed, step, 0))
    order = pairs.interleaved()
    pair_out = enc_out.take(order)  # a0, b0, a1, b1, ...; indexing, not a second tower pass

    # 3. G completions per pair from the frozen judge, sampled from the detached tokens (the sampling itself is
    #    not differentiated; GRPO differentiates the log-probs of the sampled tokens, REFERENCE.md section 2).
    #    Reward 1 for a correct same/different verdict, else 0 (REFERENCE.md section 1).
    sampling_seed = int(step_rng(cfg.seed, step, 1).integers(2**31))  # a function of (seed, step): resumable
    rollout = judge.rollout(pair_out, num_generations=g.num_generations, max_new_tokens=g.max_completion_length,
                            temperature=g.temperature, top_p=g.top_p, seed=sampling_seed)
    if bool(rollout.clipped.all()):  # the silent failure: no verdict anywhere, every reward 0, no GRPO signal
        warnings.warn(f"all completions of a step ran to grpo.max_completion_length = "
                      f"{g.max_completion_length} tokens without a stop token, so none has a verdict and L_GRPO is "
                      "zero; raise grpo.max_completion_length", RuntimeWarning, stacklevel=1)
    same = [pairs.same[p] for p in rollout.pair_of.tolist()]
    rewards = torch.tensor([verdict_reward(v, s) for v, s in zip(rollout.verdicts, same, strict=True)])
    if g.attribute_reward:  # the extension: also reward the attribute values stated correctly
        truth = batch.attributes
        rewards += g.attribute_reward * torch.tensor([
            attribute_reward(text, truth[pairs.a[p]], truth[pairs.b[p]])
            for text, p in zip(rollout.texts, rollout.pair_of.tolist(), strict=True)])
    advantages, reward_stats = group_advantages(rewards, g.num_generations, g.scale_rewards)

    # 4. Teacher-forced log-probs with grad into the encoder's tokens (and DeepStack features), plus the judge's
    #    attention from its verdict tokens over each image's tokens (no grad), the L_KL target.
    use_kl = cfg.weights.kl > 0
    scores = judge.score(pair_out, rollout, attention_layers=cfg.attention.layers if use_kl else None,
                         temperature=g.temperature)
    ref_logps = None
    if parts.reference is not None:  # beta > 0: k3 KL to the initial encoder (DeepSeekMath eq. 4)
        with torch.no_grad():
            ref_logps = judge.score(parts.reference(**batch.inputs).take(order), rollout, attention_layers=None,
                                    temperature=g.temperature).logps
    completion_mask = rollout.completion_mask.to(scores.logps.device)
    grpo = grpo_loss(scores.logps, advantages.to(scores.logps.device), completion_mask, loss_type=g.loss_type,
                     ref_logps=ref_logps, beta=g.beta, epsilon_low=g.epsilon_low, epsilon_high=g.epsilon_high,
                     max_completion_length=g.max_completion_length)
    terms = {"grpo": grpo, "dml": dml}

    # 5. L_KL: the pooler's attention over each pair image's tokens towards the judge's over the same tokens.
    if use_kl:
        judge_attention = pad_sequence([a.to(mask.device) for a in scores.image_attention], batch_first=True)
        terms["kl"] = attention_kl(pooled.attention[order], judge_attention, mask[order],
                                   direction=cfg.attention.direction)

    # 6. L_ATTR, the oracle diagnostic (not the paper's, saga.losses.answer_nll): the NLL of each pair's true
    #    comparison, teacher-forced through the judge. No temperature: it is not a sampled policy's log-prob.
    if cfg.weights.attribute_nll:
        truth = batch.attributes
        answers = [format_comparison(truth[a], truth[b], s) for a, b, s in zip(pairs.a, pairs.b, pairs.same,
                                                                                 strict=True)]
        forced = judge.teacher_forced(pair_out, answers)
        terms["attribute_nll"] = answer_nll(judge.score(pair_out, forced).logps, forced.completion_mask)

    verdicts = rollout.verdicts
    correct = [v is not None and v == s for v, s in zip(verdicts, same, strict=True)]
    stats = {
        **reward_stats,
        "verdict_accuracy": float(np.mean(correct)),
        "accuracy_same": float(np.mean([c for c, s in zip(correct, same, strict=True) if s] or [np.nan])),
        "accuracy_different": float(np.mean([c for c, s in zip(correct, same, strict=True) if not s] or [np.nan])),
        "parse_failures": float(np.mean([v is None for v in verdicts])),
        "clipped_ratio": float(rollout.clipped.float().mean()),
    }
    rows = [{"pair": p, "image_a": batch.paths[pairs.a[p]], "image_b": batch.paths[pairs.b[p]],
             "same": pairs.same[p], "hard_negative": pairs.hard[p], "text": text, "verdict": verdict,
             "reward": float(r), "advantage": float(a)}
            for p, text, verdict, r, a in zip(rollout.pair_of.tolist(), rollout.texts, verdicts, rewards, advantages,
                                              strict=True)]
    return StepResult(terms, stats, rows)


STEPS: dict[str, Callable[[Parts, TrainConfig, Batch, int], StepResult]] = {
    "saga": saga_step, "proxy_anchor": dml_step, "potential_field": dml_step,
}


def combine(terms: dict[str, LossTerms], weights: LossWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = sum_name weights.<name> * terms[name]["loss"] (DESIGN.md: one place combines and logs every term)."""
    loss = sum(getattr(weights, name) * t["loss"] for name, t in terms.items())
    metrics = {"loss": loss.detach()}
    metrics.update({f"{name}/{key}": value.detach() for name, t in terms.items() for key, value in t.items()})
    return loss, metrics


class _Collate:
    """[(image, label), ...] -> (tower inputs, labels)."""

    def __init__(self, preprocessor: ImagePreprocessor) -> None:
        self.preprocessor = preprocessor

    def __call__(self, items: list[tuple]) -> tuple[dict[str, Tensor], Tensor]:
        images, labels = zip(*items, strict=True)
        return self.preprocessor(images), torch.tensor(labels, dtype=torch.int64)


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
                        num_workers=cfg.data.num_workers, collate_fn=_Collate(parts.preprocessor),
                        generator=torch.Generator().manual_seed(cfg.seed))
    step_fn = STEPS[cfg.method]
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
