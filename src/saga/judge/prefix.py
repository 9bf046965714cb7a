"""One prompt per pair, shared by its G completions: positions, support and the packed scoring layout.

A SAGA step has P pairs x G completions, and the G completions of a pair continue the same prompt (two images and
the question: ~460 tokens at 448 px, docs/method.md, "The judge"). Giving every completion its own copy reads the
prompt G times in the rollout's prefill and G times again, with gradient, in scoring. With a shared prefix it is
read once per pair:

- rollout (`saga.judge.decoding`): each prompt is prefilled once; the G completions then decode against its keys
  and values (attention over the shared prompt plus their own tokens), never copied G times;
- scoring (`saga.judge.scoring`): one packed row per pair, [prompt | completion 1 | ... | completion G], with a
  block mask (`pack`). A prompt token sees the earlier prompt tokens; a completion token sees the prompt and the
  earlier tokens of its own completion, nothing of its siblings. The prompt is read once with gradient, and the
  gradient of every completion flows back into it through attention, so into the image tokens and the DeepStack
  features (added at the image positions, all in the prompt part). P + G x R tokens instead of G x (P + R).

Positions (Qwen3-VL's M-RoPE): a prompt's (3, L) positions come from its token types and image grids
(`get_rope_index`); the text after it continues on all three axes from the prompt's largest position + 1
(`next_position`), which is what transformers' generate does with its stored `rope_deltas`. Positions are computed
here and passed explicitly, so nothing depends on the model's stored `rope_deltas`.

Supported: Qwen3-VL judges (their rotary embedding gives per-token cos / sin, which the decoding step uses) with
sdpa or eager attention (the packed mask is a custom 4-D mask, which flash attention does not take). Other judges
(Qwen2.5-VL) use the per-completion path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


ALIGN = 16  # packed rows padded to a multiple of this: the mask's rows then suit the fused attention kernels


def supports_shared_prefix(model: nn.Module) -> bool:
    text = model.config.text_config
    return model.config.model_type == "qwen3_vl" and text._attn_implementation in ("sdpa", "eager")


def prompt_positions(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                     grid_thw: Tensor) -> tuple[Tensor, Tensor]:
    """M-RoPE positions of left-padded prompts (P, L) whose images (2 per prompt, in order) have `grid_thw`:
    (3, P, L) long (0 at padding) and (P,) the position of the first token after each prompt."""
    positions, _ = model.model.get_rope_index(
        input_ids=input_ids, mm_token_type_ids=(input_ids == model.config.image_token_id).int(),
        image_grid_thw=grid_thw.to(input_ids.device), attention_mask=attention_mask)
    return positions, positions[0, :, -1] + 1  # left-padded: the last column is a real (text) token


@dataclass
class Packed:
    """P packed rows [prompt | completion 1 | ... | completion G] of a rollout's N = P x G sequences.

    input_ids, position_ids: (P, L) and (3, P, L); attention_mask: (P, 1, L, L) additive (0 where a token may
    attend, the dtype's minimum elsewhere). columns: (N, Lc) the packed column of each completion token (valid
    where the rollout's completion_mask is True); predictors: (N, Lc) the column whose hidden state predicts it
    (the prompt's last column for the first token). pair_of: (N,) the packed row of each sequence.
    """

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor
    columns: Tensor
    predictors: Tensor
    pair_of: Tensor


def pack(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, prompt_length: int,
         pair_of: Tensor, grid_thw: Tensor, pad_token_id: int) -> Packed:
    """Pack a rollout (`Rollout` fields: input_ids (N, prompt_length + Lc), its attention_mask and completion_mask,
    pair_of) whose pair p owns sequences p*G ... p*G + G - 1, each completion cut after its last real token."""
    device = input_ids.device
    n, width = completion_mask.shape
    num_pairs = int(pair_of.max()) + 1
    group = n // num_pairs
    if n != num_pairs * group or not torch.equal(pair_of, torch.arange(num_pairs, device=device)
                                                 .repeat_interleave(group)):
        raise ValueError("a shared prefix needs the rollout's sequences grouped by pair, G per pair, in order")
    firsts = torch.arange(0, n, group, device=device)
    prompt_ids = input_ids[firsts, :prompt_length]
    prompt_mask = attention_mask[firsts, :prompt_length].bool()
    positions, next_position = prompt_positions(model, prompt_ids, prompt_mask.long(), grid_thw)

    lengths = completion_mask.sum(1).view(num_pairs, group)
    starts = (prompt_length + lengths.cumsum(1) - lengths).flatten()  # (N,) first column of each completion
    length = prompt_length + int(lengths.sum(1).max())
    length += -length % ALIGN
    step = torch.arange(width, device=device)
    columns = (starts[:, None] + step).clamp(max=length - 1)
    rows = pair_of[:, None].expand(n, width)
    at = (rows[completion_mask], columns[completion_mask])

    packed_ids = torch.full((num_pairs, length), pad_token_id, dtype=input_ids.dtype, device=device)
    packed_ids[:, :prompt_length] = prompt_ids
    packed_ids[at] = input_ids[:, prompt_length:][completion_mask]
    position_ids = torch.zeros(3, num_pairs, length, dtype=positions.dtype, device=device)
    position_ids[:, :, :prompt_length] = positions
    position_ids[:, at[0], at[1]] = (next_position[:, None] + step)[pair_of][completion_mask]
    # owner: -1 on the prompt, the completion's index in its group on its tokens, -2 on the padding at the end.
    owner = torch.full((num_pairs, length), -2, dtype=torch.long, device=device)
    owner[:, :prompt_length] = -1
    owner[at] = (torch.arange(n, device=device) % group)[:, None].expand(n, width)[completion_mask]
    real = owner >= 0
    real[:, :prompt_length] = prompt_mask
    column = torch.arange(length, device=device)
    allowed = (real[:, None, :] & (column[None, :, None] >= column[None, None, :])
               & ((owner[:, None, :] == -1) | (owner[:, None, :] == owner[:, :, None])))
    allowed |= torch.eye(length, dtype=torch.bool, device=device)  # padding rows see themselves: no empty softmax
    dtype = model.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    predictors = torch.where(step == 0, prompt_length - 1, columns - 1)
    return Packed(packed_ids, position_ids, mask[:, None], columns, predictors, pair_of)
