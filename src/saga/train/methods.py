"""The training methods, one record each: its step function, its default pooler and DML loss, whether it reads the
judge. `METHODS` is the registry the config's `method` and the CLI choose from; adding a method is a step function
and a record in this file.

    saga_step   SAGA (docs/method.md): L_GRPO + L_KL + L_DML from one pass of the encoder
                (+ the oracle diagnostic L_ATTR when weights.attribute_nll > 0)
    dml_step    the baselines (Proxy Anchor, Potential Field): the pooled embedding, L_DML only
    agff_step   AGFF-Embed (docs/method.md, "AGFF-Embed"): the MLLM itself embeds (K prompts, fused); InfoNCE with
                hard-negative gradient amplification as its L_DML. Its record builds its own trainable model.

A step function returns the named loss terms of its losses (each a dict with "loss" and detached diagnostics,
saga.losses.base); `saga.train.loop.combine` weighs and sums them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from saga.config import TrainConfig
from saga.judge.prompts import attribute_reward, format_comparison, restrict, verdict_reward
from saga.losses import LossTerms, answer_nll, attention_kl, group_advantages, grpo_loss
from saga.registry import Registry
from saga.train.agff import build_agff
from saga.train.batches import mine_pairs, step_rng
from saga.train.distributed import gather_batch

if TYPE_CHECKING:
    from torch import nn

    from saga.train.setup import Parts


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
    """Baseline: encoder -> pooler (mean) -> Proxy Anchor / Potential Field (docs/method.md, L_DML)."""
    out = parts.model(**batch.inputs)
    return StepResult({"dml": parts.dml_loss(*gather_batch(out.embedding, batch.labels))})


def saga_step(parts: Parts, cfg: TrainConfig, batch: Batch, step: int) -> StepResult:
    """SAGA (docs/design.md, "One SAGA step"): three losses from one pass of the encoder over the batch."""
    g, judge = cfg.grpo, parts.judge
    # 1. The tower runs once per image. Its tokens feed the pooler (-> L_DML) and, for the pairs, the judge.
    out = parts.model(**batch.inputs)
    enc_out, mask = out.features, out.mask
    dml = parts.dml_loss(*gather_batch(out.embedding, batch.labels))  # the global batch (saga.train.distributed)

    # 2. P pairs from this batch: half same class, half different, part of those the hardest in-batch negatives
    #    under the current (detached) embeddings (saga.train.batches explains why in-batch). Data-parallel: each
    #    rank mines its share of the P pairs from its share of the batch.
    rank = parts.world.rank
    pairs = mine_pairs(out.embedding, batch.labels, num_pairs=g.pairs_per_step // parts.world.size,
                       same_fraction=g.same_fraction, hard_negative_fraction=g.hard_negative_fraction,
                       rng=step_rng(cfg.seed, step, 0, rank))
    order = pairs.interleaved()
    pair_out = enc_out.take(order)  # a0, b0, a1, b1, ...; indexing, not a second tower pass

    # 3. G completions per pair from the frozen judge, sampled from the detached tokens (the sampling itself is
    #    not differentiated; GRPO differentiates the log-probs of the sampled tokens, docs/method.md, "L_GRPO").
    #    Reward 1 for a correct same/different verdict, else 0 (docs/method.md).
    sampling_seed = int(step_rng(cfg.seed, step, 1, rank).integers(2**31))  # a function of (seed, step): resumable
    rollout = judge.rollout(pair_out, num_generations=g.num_generations, max_new_tokens=g.max_completion_length,
                            temperature=g.temperature, top_p=g.top_p, seed=sampling_seed)
    if bool(rollout.clipped.all()):  # the silent failure: no verdict anywhere, every reward 0, no GRPO signal
        warnings.warn(f"all completions of a step ran to grpo.max_completion_length = "
                      f"{g.max_completion_length} tokens without a stop token, so none has a verdict and L_GRPO is "
                      "zero; raise grpo.max_completion_length", RuntimeWarning, stacklevel=1)
    same = [pairs.same[p] for p in rollout.pair_of.tolist()]
    rewards = torch.tensor([verdict_reward(v, s) for v, s in zip(rollout.verdicts, same, strict=True)])
    if g.attribute_reward:  # the extension: also reward the attribute values stated correctly (those asked about)
        truth = [restrict(attrs, judge.vocabulary) for attrs in batch.attributes]
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
        terms["kl"] = attention_kl(out.attention[order], judge_attention, mask[order],
                                   direction=cfg.attention.direction)

    # 6. L_ATTR, the oracle diagnostic (not the paper's, saga.losses.answer_nll): the NLL of each pair's true
    #    comparison, teacher-forced through the judge. No temperature: it is not a sampled policy's log-prob.
    if cfg.weights.attribute_nll:  # the comparison of the attributes the prompt names, then the class verdict
        truth = [restrict(attrs, judge.vocabulary) for attrs in batch.attributes]
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


def agff_step(parts: Parts, cfg: TrainConfig, batch: Batch, step: int) -> StepResult:
    """AGFF-Embed: K prompt embeddings per image, fused, then InfoNCE with EGA over the m-per-class batch."""
    out = parts.model(**batch.inputs)
    with torch.no_grad():  # tensors: logging syncs them only on the steps it logs
        weights, unit = out.weights, out.prompt_embeddings
        k = weights.shape[1]
        stats = {
            # log K at the start (uniform weights: the mean), 0 when one prompt takes all the weight
            "fusion_entropy": -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean(),
            "fusion_max_weight": weights.max(-1).values.mean(),
        }
        if k > 1:  # how alike an image's K embeddings are (1: the prompts add nothing over one)
            stats["prompt_cosine"] = ((unit @ unit.transpose(1, 2)).sum((1, 2)) - k).mean() / (k * (k - 1))
    return StepResult({"dml": parts.dml_loss(*gather_batch(out.embedding, batch.labels))}, stats)


@dataclass(frozen=True)
class Method:
    """A training method. pooler / dml_loss: what "auto" resolves to (model.pooler, dml.loss); fixed_dml_loss: the
    method is its loss (a baseline), so another dml.loss is an error; needs_judge: load the frozen judge.
    build_model: builds the trainable model in place of encoder + pooler (AGFF-Embed: the adapted MLLM), with
    RetrievalModel's interface and `checkpoint_modules()`; None = encoder + `pooler`."""

    step: Callable[[Parts, TrainConfig, Batch, int], StepResult]
    pooler: str
    dml_loss: str
    needs_judge: bool
    fixed_dml_loss: bool = False
    build_model: Callable[[TrainConfig, torch.device], nn.Module] | None = None


METHODS: Registry[Method] = Registry("method")
METHODS.register("saga", Method(saga_step, pooler="attention", dml_loss="proxy_anchor", needs_judge=True))
METHODS.register("proxy_anchor", Method(dml_step, pooler="mean", dml_loss="proxy_anchor", needs_judge=False,
                                        fixed_dml_loss=True))
METHODS.register("potential_field", Method(dml_step, pooler="mean", dml_loss="potential_field", needs_judge=False,
                                           fixed_dml_loss=True))
# The judge's checkpoint is AGFF-Embed's embedder (adapted, not frozen): it is loaded by build_agff, not as a judge.
METHODS.register("agff", Method(agff_step, pooler="fusion", dml_loss="infonce", needs_judge=False,
                                build_model=build_agff))
