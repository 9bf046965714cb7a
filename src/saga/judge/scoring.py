"""Teacher-forced scoring of rollouts: per-token log-probs with gradient into the encoder's tokens only.

docs/design.md, "One SAGA step": `judge.score(tokens, completions)` gives the per-token log-probs of L_GRPO
(gradient into the image tokens) and, from the same forward pass, the attention target of L_KL (no gradient).

- Gradient path: the judge's parameters are frozen; the encoder's per-image tokens and DeepStack features are the
  only inputs that require grad (the tower ran once per image). The judge reads them through
  `saga.models.vision_inputs`.
- The prompt once per pair (`shared_prefix`, `saga.judge.prefix`): one packed row per pair holds its prompt and its
  G completions under a block mask, so each prompt is read once and every completion's gradient reaches the image
  tokens through attention. The attention hooks then read each completion's query rows against the prompt's keys
  and its own keys in that row. The reference path gives each completion its own copy of the prompt (the image
  features shared by indexing, `EncoderOutput.take`).
- Log-softmax only over completion positions (docs/design.md, "Speed rules"): the language model returns hidden
  states, only the rows that predict completion tokens go through lm_head, in chunks under activation
  checkpointing, so the (rows x vocabulary) logits never exist for the whole batch at once (8,192 rows x 151,936
  float32 logits would be 5 GB at 8B scale).
- Log-probs are of the distribution the rollouts were sampled from: the judge's logits divided by the sampling
  temperature, as TRL's GRPOTrainer does. With one update per rollout the GRPO ratio is 1 and only the gradient of
  log pi matters (docs/method.md, "L_GRPO").
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from saga.judge.attention import AttentionCapture, image_attention, verdict_token_mask
from saga.judge.prefix import pack, supports_shared_prefix
from saga.judge.rollout import Rollout, pair_feature_indices
from saga.models import EncoderOutput, vision_inputs

CHUNK_ROWS = 1024  # completion rows per lm_head chunk: 1,024 x 151,936 float32 logits = 0.6 GB at 8B scale


@dataclass
class Scores:
    """logps: (N, Lc) float32 log-probs of the completion tokens (0 outside completion_mask), differentiable with
    respect to the encoder's outputs. image_attention: one (T_i,) distribution per image of the encoder batch (2P),
    or None when no attention layers were asked for."""

    logps: Tensor
    image_attention: list[Tensor] | None


def _token_logps(lm_head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(target) for rows of final hidden states under softmax(logits / temperature)."""
    logits = lm_head(hidden).float() / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def completion_logps(lm_head: nn.Module, hidden: Tensor, targets: Tensor, *, temperature: float = 1.0,
                     chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """`_token_logps` over (M, D) rows, `chunk_rows` at a time; under autograd each chunk is checkpointed, so only
    one chunk's logits are alive in the forward and in the backward pass. Returns (M,) log-probs."""
    logps = []
    for h, t in zip(hidden.split(chunk_rows), targets.split(chunk_rows), strict=True):
        if torch.is_grad_enabled() and h.requires_grad:
            logps.append(checkpoint(_token_logps, lm_head, h, t, temperature, use_reentrant=False))
        else:
            logps.append(_token_logps(lm_head, h, t, temperature))
    return torch.cat(logps)


def _query_columns(query_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(N, Lc) bool -> the indexes (N, Q) of the True columns, padded with each row's first one, and the (N, Q) bool
    mask of real entries."""
    counts = query_mask.sum(1)
    width = int(counts.max())
    columns = torch.sort((~query_mask).int(), dim=1, stable=True).indices[:, :width]  # True columns first, in order
    valid = torch.arange(width, device=query_mask.device)[None, :] < counts[:, None]
    return torch.where(valid, columns, columns[:, :1]), valid


def score(model: nn.Module, tokenizer, enc_out: EncoderOutput, rollout: Rollout, *,
          attention_layers: list[int] | None = None, temperature: float = 1.0, shared_prefix: bool = True) -> Scores:
    """Score `rollout` (made from the same encoder batch, 2P images a0, b0, ...) with `enc_out` as the images
    read by `model` (the judge; `tokenizer` maps the verdict line to its tokens).

    temperature: the one the rollout was sampled at (log-probs are of softmax(logits / temperature)).
    attention_layers: LLM layer indexes (negative from the end) whose attention from the verdict tokens to the image
    tokens is returned (`saga.judge.attention`); None or [] for none.
    shared_prefix: read each pair's prompt once for its G completions (`saga.judge.prefix`; judges that do not
    support it take the other path); False: every completion with its own copy of the prompt (the reference
    path). Both give the same log-probs, attention targets and gradients.
    """
    device = next(model.parameters()).device
    num_pairs = int(rollout.pair_of.max()) + 1
    if len(enc_out.tokens) != 2 * num_pairs:
        raise ValueError(f"the rollout has {num_pairs} pairs but the encoder batch {len(enc_out.tokens)} images")
    input_ids = rollout.input_ids.to(device)
    attention_mask = rollout.attention_mask.to(device)
    mask = rollout.completion_mask.to(device)
    pair_of = rollout.pair_of.to(device)
    query_index = query_valid = None
    if attention_layers:
        query_mask = verdict_token_mask(tokenizer, rollout.completion_ids, rollout.completion_mask,
                                        rollout.verdicts).to(device)
        query_index, query_valid = _query_columns(query_mask)

    capture = None
    if shared_prefix and supports_shared_prefix(model):
        packed = pack(model, input_ids, attention_mask, mask, rollout.prompt_length, pair_of, enc_out.grid_thw,
                      tokenizer.pad_token_id)
        if attention_layers:
            # Keys of sequence n: the shared prompt, then its own completion; its rows then line up with the
            # per-completion layout [prompt | completion], whose prompt columns `image_attention` reads.
            prompt_columns = torch.arange(rollout.prompt_length, device=device).expand(len(mask), -1)
            capture = AttentionCapture(model, attention_layers, packed.columns.gather(1, query_index),
                                       attention_mask.bool(), keys=torch.cat([prompt_columns, packed.columns], 1),
                                       rows=pair_of)
        hidden = _hidden_states(model, enc_out, capture, input_ids=packed.input_ids,
                                attention_mask=packed.attention_mask, position_ids=packed.position_ids)
        predicting = hidden[pair_of[:, None].expand_as(mask)[mask], packed.predictors[mask]]
    else:
        if attention_layers:
            capture = AttentionCapture(model, attention_layers, query_index + rollout.prompt_length,
                                       attention_mask.bool())
        hidden = _hidden_states(model, enc_out.take(pair_feature_indices(rollout.pair_of)), capture,
                                input_ids=input_ids, attention_mask=attention_mask)
        # The state at position t predicts token t + 1: completion column c is predicted at prompt_length + c - 1.
        start = rollout.prompt_length - 1
        predicting = hidden[:, start:start + mask.shape[1]][mask]

    token_logps = completion_logps(model.lm_head, predicting, rollout.completion_ids.to(device)[mask],
                                   temperature=temperature)
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=device)
    return Scores(
        logps=zeros.masked_scatter(mask, token_logps),
        image_attention=None if capture is None else image_attention(
            capture.mean_rows(query_valid), input_ids, model.config.image_token_id, pair_of, enc_out.num_tokens),
    )


def _hidden_states(model: nn.Module, features: EncoderOutput, capture: AttentionCapture | None, *, input_ids: Tensor,
                   **inputs: Tensor) -> Tensor:
    """The language model's last hidden states for `input_ids` (+ attention_mask, position_ids) reading `features`
    as the images, with `capture`'s hooks active during the forward pass only (checkpointed layers run again in
    backward, after the block)."""
    with vision_inputs(model, features) as extra, capture or nullcontext():
        return model.model(
            input_ids=input_ids, mm_token_type_ids=(input_ids == model.config.image_token_id).int(),
            image_grid_thw=features.grid_thw.to(input_ids.device), use_cache=False, **inputs, **extra,
        ).last_hidden_state
