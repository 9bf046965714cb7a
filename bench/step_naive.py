"""The naive way to compute a SAGA step's rollout and scoring: the baseline of bench/step.py.

What makes it naive (each is a lever the fast path, saga.judge, pulls):
- the tower once per completion: the judge's own tower is replaced by the trainable encoder's (so the gradient
  reaches the encoder) and runs on each completion's copy of its pair's pixels, in generate and in scoring;
- one `generate` per pair (G sequences at a time);
- eager attention with `output_attentions=True`: every layer's (L x L) maps are materialised and returned, and the
  attention targets are read from them;
- the full (sequences x positions x vocabulary) logits and a log-softmax over all of them.
Scoring goes one pair at a time: the eager maps and full logits of all P x G sequences at once would not fit at 8B
scale. Sampling settings and the reductions (verdict-token rows, per-image renormalisation, mean over the group)
are those of saga.judge, so the two paths compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from saga.judge import FrozenJudge
from saga.judge.attention import image_attention, verdict_token_mask
from saga.judge.rollout import Rollout, prompt_batch, stop_token_ids
from saga.losses import grpo_loss
from saga.models import VisionEncoder, vision_token_ids


@contextmanager
def encoder_as_tower(judge: FrozenJudge, encoder: VisionEncoder) -> Iterator[None]:
    """The judge runs the encoder's tower on pixel values (gradient reaches the encoder), then gets its own back."""
    own = judge.model.model.visual
    judge.model.model.visual = encoder.tower
    try:
        yield
    finally:
        judge.model.model.visual = own


def _pixels(inputs: dict[str, Tensor], indices: Sequence[int]) -> tuple[Tensor, Tensor]:
    """pixel_values and image_grid_thw of images `indices` (repeats allowed), in that order."""
    grid = inputs["image_grid_thw"]
    patches = inputs["pixel_values"].split(grid.prod(-1).tolist())
    return torch.cat([patches[i] for i in indices]), grid[list(indices)]


def rollout(judge: FrozenJudge, encoder: VisionEncoder, inputs: dict[str, Tensor], *, num_generations: int,
            max_new_tokens: int, seed: int) -> list[Tensor]:
    """One generate per pair, the tower run for every completion; returns each pair's (G, L) sequences."""
    model, tokenizer = judge.model, judge.tokenizer
    device = judge.device
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), encoder_as_tower(judge, encoder):
            torch.manual_seed(seed)
            for p in range(len(inputs["image_grid_thw"]) // 2):
                pixel_values, grid = _pixels(inputs, [2 * p, 2 * p + 1] * num_generations)
                prompt = prompt_batch(judge.processor, grid[:2], dataset=judge.dataset)
                input_ids = prompt["input_ids"].to(device).repeat(num_generations, 1)
                out.append(model.generate(
                    input_ids=input_ids, attention_mask=prompt["attention_mask"].to(device).repeat(num_generations, 1),
                    mm_token_type_ids=(input_ids == model.config.image_token_id).int(), pixel_values=pixel_values,
                    image_grid_thw=grid, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                    max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer),
                    pad_token_id=tokenizer.pad_token_id, suppress_tokens=vision_token_ids(tokenizer),
                    cache_implementation="dynamic",
                ))
    finally:
        model.train(was_training)
    return out


def _query_rows(attentions: Sequence[Tensor], queries: Tensor) -> Tensor:
    """(G, L): eager maps of the chosen layers averaged over layers, heads and the (G, L) bool query rows."""
    maps = torch.stack([a.detach().float().mean(1) for a in attentions]).mean(0)  # (G, L, L)
    weights = queries.float() / queries.sum(1, keepdim=True).clamp(min=1)
    return torch.einsum("gq,gqk->gk", weights, maps)


def score(judge: FrozenJudge, encoder: VisionEncoder, inputs: dict[str, Tensor], r: Rollout, advantages: Tensor,
          attention_layers: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """Log-probs (N, Lc) and attention targets (one per image) of `r`, pair by pair; backpropagates each pair's
    share of L_GRPO (loss_type "grpo": a mean over sequences) into the encoder."""
    model = judge.model
    device = judge.device
    image_token_id = model.config.image_token_id
    queries = verdict_token_mask(judge.tokenizer, r.completion_ids, r.completion_mask, r.verdicts).to(device)
    total = len(r.pair_of)
    num_generations = int((r.pair_of == 0).sum())
    start = r.prompt_length - 1
    logps, rows = [], []
    original = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        for p in range(total // num_generations):  # sequences of pair p: p * G ... p * G + G - 1 (Rollout)
            members = torch.arange(p * num_generations, (p + 1) * num_generations, device=device)
            input_ids, mask = r.input_ids.to(device)[members], r.completion_mask.to(device)[members]
            pixel_values, grid = _pixels(inputs, [2 * p, 2 * p + 1] * num_generations)
            with encoder_as_tower(judge, encoder):
                out = model(input_ids=input_ids, attention_mask=r.attention_mask.to(device)[members],
                            mm_token_type_ids=(input_ids == image_token_id).int(), pixel_values=pixel_values,
                            image_grid_thw=grid, output_attentions=True, use_cache=False)
            every = out.logits.float().log_softmax(-1)[:, start:start + mask.shape[1]]
            pair_logps = every.gather(-1, r.completion_ids.to(device)[members, :, None]).squeeze(-1) * mask
            loss = grpo_loss(pair_logps, advantages[members], mask, loss_type="grpo")["loss"]
            (loss * len(members) / total).backward()
            logps.append(pair_logps.detach())
            layers = [out.attentions[i] for i in attention_layers]
            query_mask = torch.zeros_like(input_ids, dtype=torch.bool)
            query_mask[:, r.prompt_length:] = queries[members]
            rows.append(_query_rows(layers, query_mask))
            del out, every
    finally:
        model.set_attn_implementation(original)
    tokens_per_image = (inputs["image_grid_thw"].prod(-1) // encoder.merge_size**2).tolist()
    attention = image_attention(torch.cat(rows), r.input_ids.to(device), image_token_id, r.pair_of.to(device),
                                tokens_per_image)
    return torch.cat(logps), attention
