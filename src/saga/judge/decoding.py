"""The rollout's sampling loop with a shared prefix: each pair's prompt prefilled once, its G completions decoded
together against it (`saga.judge.prefix`).

Written out rather than through `generate`: generate would have to start from a prefilled cache expanded G times
together with Qwen3-VL's rope state, and the cache classes and their argument's name differ between transformers
5.17 and 5.23+; it would also copy each prompt's keys and values G times. The loop:

1. prefill: one forward pass of the judge over the P prompts, reading the encoder's tokens (DeepStack included),
   at explicit M-RoPE positions; its KV cache holds each layer's prompt keys (after k-norm and RoPE) and values;
2. decode: a step embeds the N = P x G last tokens and runs each decoder layer's own modules (norms, projections,
   rotary embedding, MLP) with one softmax over [the pair's prompt | the sequence's own tokens so far]. The prompt's
   keys and values stay one copy per pair: the G rows of a pair read it through one matrix product;
3. sample: the first token from the prefill's logits, each next one from a step's, processed as generate processes
   them with the rollout's settings (vision tokens suppressed, divided by the temperature, nucleus filtering at
   top_p), then one multinomial draw per row: the same random stream as generate's, so a seed gives the same
   completions on either path up to float rounding. A finished row continues with the pad token; the loop ends
   once every row has stopped (checked every few steps, to spare host synchronisations; the extra columns are
   trimmed, so the width is generate's).

`cache`: "dynamic" attends over the tokens so far (the shapes grow each step), uncompiled. "static" keeps fixed
shapes (max_new_tokens slots, masked beyond the current one), so on CUDA the step is compiled with CUDA graphs
(torch.compile, "reduce-overhead"): one graph replay per token instead of a few hundred kernel launches, which is
what bounds decoding at batch 64 (docs/method.md, "The judge"); the first rollout pays the compilation. CUDA graphs
read fixed addresses, so the buffers are kept between rollouts of the same shapes (new shapes compile again). On a
CPU, "static" runs the same step uncompiled. "auto": static on CUDA, dynamic elsewhere. If compilation fails, a
warning says so and decoding continues uncompiled.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from saga.judge.attention import _rotate
from saga.judge.prefix import prompt_positions
from saga.models import EncoderOutput, vision_inputs

CACHES = ("auto", "static", "dynamic")
CHECK_EVERY = 8  # decode steps between checks that every row has stopped (each check waits for the device)
MAX_STATIC_SHAPES = 2  # static buffer sets kept per judge (training uses one; the benchmark two)
COMPILE_DEVICES = ("cuda",)  # where a static cache compiles the step (CUDA graphs pay off there)
COMPILE_OPTIONS = {"mode": "reduce-overhead", "fullgraph": True, "dynamic": False}

# Per judge: its static buffers by shapes, and its compiled step.
_BUFFERS: WeakKeyDictionary = WeakKeyDictionary()
_COMPILED: WeakKeyDictionary = WeakKeyDictionary()


def resolve_cache(cache: str, device: torch.device) -> str:
    if cache not in CACHES:
        raise ValueError(f"cache {cache!r}: use one of {list(CACHES)}")
    if cache == "auto":
        return "static" if device.type == "cuda" else "dynamic"
    return cache


def prefill(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
            features: EncoderOutput) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
    """One forward pass over left-padded prompts (P, Lp) reading `features` (2 images per prompt). Returns each
    layer's keys and values (P, kv_heads, Lp, head_dim), the position of the first completion token (P,) and its
    logits (P, V) float32."""
    positions, next_position = prompt_positions(model, input_ids, attention_mask, features.grid_thw)
    with vision_inputs(model, features) as extra:
        out = model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                          mm_token_type_ids=(input_ids == model.config.image_token_id).int(),
                          image_grid_thw=features.grid_thw.to(input_ids.device), use_cache=True, **extra)
    cache = getattr(out, "cache", None)  # transformers 5.23+; 5.17 calls it past_key_values
    cache = out.past_key_values if cache is None else cache
    logits = model.lm_head(out.last_hidden_state[:, -1]).float()
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], next_position, logits


def _attend(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, prefix_bias: Tensor, own_k: Tensor, own_v: Tensor,
            own_bias: Tensor | None, scaling: float) -> Tensor:
    """One query per row (q: (N, heads, 1, d)) against the shared prefix of its pair (P, kv_heads, Lp, d) and its
    own keys (N, kv_heads, T, d), one softmax over both. Row n = p * G + g; query head h reads KV head
    h // (heads / kv_heads), as transformers' repeat_kv does, without repeating anything. Returns (N, 1, heads * d)."""
    n, heads, _, d = q.shape
    pairs, kv_heads, prefix_length, _ = prefix_k.shape
    group, per_kv = n // pairs, heads // kv_heads
    q = q.view(n, kv_heads, per_kv, d)

    def by_pair(x: Tensor) -> Tensor:  # (N, kv, per_kv, X) -> (P, kv, G * per_kv, X)
        return x.view(pairs, group, kv_heads, per_kv, -1).transpose(1, 2).reshape(pairs, kv_heads, group * per_kv, -1)

    def by_row(x: Tensor) -> Tensor:  # the inverse
        return x.view(pairs, kv_heads, group, per_kv, -1).transpose(1, 2).reshape(n, kv_heads, per_kv, -1)

    scores = torch.cat([by_row(by_pair(q) @ prefix_k.transpose(-1, -2)), q @ own_k.transpose(-1, -2)], -1)
    scores = scores.float() * scaling
    bias = prefix_bias if own_bias is None else torch.cat([prefix_bias, own_bias.expand(n, 1, 1, -1)], -1)
    scores[..., :bias.shape[-1]] += bias
    probs = scores.softmax(-1).to(q.dtype)
    to_prefix, to_own = probs.split([prefix_length, own_k.shape[2]], -1)
    out = by_row(by_pair(to_prefix) @ prefix_v) + to_own @ own_v
    return out.reshape(n, 1, heads * d)


def _decode_step(model: nn.Module, tokens: Tensor, step: Tensor, position: Tensor, prefix_keys: Sequence[Tensor],
                 prefix_values: Sequence[Tensor], prefix_bias: Tensor, own_keys: Sequence[Tensor],
                 own_values: Sequence[Tensor], visible: int | None) -> Tensor:
    """Logits (N, V) float32 of the token after `tokens` (N,), which are completion token `step` (0-d long) of
    each row, at M-RoPE `position` (N,) on all three axes. Their keys and values are written into slot `step` of
    `own_keys` / `own_values`. visible: attend to the first `visible` slots only (dynamic), or None: to all slots,
    those after `step` masked (static: the same shapes every step)."""
    lm = model.model.language_model
    x = lm.embed_tokens(tokens[:, None])
    cos, sin = lm.rotary_emb(x, position.view(1, -1, 1).expand(3, -1, -1))
    slot = step.view(1)
    own_bias = None
    if visible is None:
        slots = torch.arange(own_keys[0].shape[2], device=x.device)
        own_bias = torch.zeros(slots.shape, device=x.device).masked_fill(slots > step, torch.finfo(torch.float32).min)
    n = x.shape[0]
    for i, layer in enumerate(lm.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(n, 1, -1, attn.head_dim)
        k = attn.k_proj(h).view(n, 1, -1, attn.head_dim)
        v = attn.v_proj(h).view(n, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = _rotate(attn.q_norm(q).transpose(1, 2), cos, sin), _rotate(attn.k_norm(k).transpose(1, 2), cos, sin)
        own_keys[i].index_copy_(2, slot, k)
        own_values[i].index_copy_(2, slot, v)
        own_k, own_v = own_keys[i], own_values[i]
        if visible is not None:
            own_k, own_v = own_k[:, :, :visible], own_v[:, :, :visible]
        x = x + attn.o_proj(_attend(q, prefix_keys[i], prefix_values[i], prefix_bias, own_k, own_v, own_bias,
                                    attn.scaling))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(lm.norm(x)[:, -1]).float()


def process_logits(logits: Tensor, suppress_ids: Tensor, temperature: float, top_p: float) -> Tensor:
    """generate's processing of next-token logits (N, V) with the rollout's settings: non-finite values made finite
    (its remove_invalid_values: NaN to 0, inf to the largest float, so a broken judge's step is sampled and then
    skipped by the training loop instead of crashing it), suppressed ids to -inf, division by the temperature, then
    nucleus filtering (the smallest set of top tokens whose probability reaches top_p is kept, at least one)."""
    big = torch.finfo(logits.dtype).max
    scores = logits.nan_to_num(0.0, posinf=big, neginf=-big).index_fill(-1, suppress_ids, float("-inf"))
    if temperature != 1.0:
        scores = scores / temperature
    if top_p < 1.0:
        ascending, order = scores.sort(-1)
        remove = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[:, -1] = False
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return scores


def _static_state(model: nn.Module, prefix_keys: list[Tensor], prefix_values: list[Tensor], rows: int,
                  slots: int) -> dict:
    """The judge's persistent static buffers for these shapes, with the prompt's keys and values copied in. Kept
    per shapes (a few at most): a compiled step guards on their addresses, so reusing them spares a recompilation."""
    shapes = (rows, slots, tuple(prefix_keys[0].shape), prefix_keys[0].dtype, prefix_keys[0].device)
    states = _BUFFERS.setdefault(model, {})
    if shapes not in states:
        def zeros(shape):
            t = prefix_keys[0].new_zeros(shape)  # zeros, not empty: masked slots must hold finite values
            if t.is_cuda:
                torch._dynamo.mark_static_address(t)  # a CUDA graph reads this address on every replay
            return t

        while len(states) >= MAX_STATIC_SHAPES:
            del states[next(iter(states))]
        kv_heads, head_dim = prefix_keys[0].shape[1], prefix_keys[0].shape[3]
        states[shapes] = {
            **{name: [zeros(prefix_keys[0].shape) for _ in prefix_keys] for name in ("prefix_k", "prefix_v")},
            **{name: [zeros((rows, kv_heads, slots, head_dim)) for _ in prefix_keys] for name in ("own_k", "own_v")}}
    state = states[shapes]
    for buffers, source in ((state["prefix_k"], prefix_keys), (state["prefix_v"], prefix_values)):
        for buffer, values in zip(buffers, source, strict=True):
            buffer.copy_(values)
    return state


def _compiled_step(model: nn.Module):
    """The decoding step compiled for `model` (one compiled function per judge; `_decode_step` itself once a
    compilation has failed)."""
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(_decode_step, **COMPILE_OPTIONS)
    return _COMPILED[model]


@torch.no_grad()
def sample(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, features: EncoderOutput, *,
           num_generations: int, max_new_tokens: int, temperature: float, top_p: float, stop_ids: Sequence[int],
           pad_token_id: int, suppress_ids: Sequence[int], cache: str = "auto") -> Tensor:
    """Completions (P * G, steps) of the P left-padded prompts, G per prompt (rows p*G ... p*G + G - 1 continue
    prompt p), sampled with the global random generator; see the module docstring."""
    device = input_ids.device
    cache = resolve_cache(cache, device)
    prefix_keys, prefix_values, next_position, logits = prefill(model, input_ids, attention_mask, features)
    group = num_generations
    rows = len(input_ids) * group
    position = next_position.repeat_interleave(group)
    prefix_bias = (torch.zeros(attention_mask.shape, device=device)
                   .masked_fill(~attention_mask.bool(), torch.finfo(torch.float32).min)
                   .repeat_interleave(group, 0)[:, None, None])
    kv_heads, head_dim = prefix_keys[0].shape[1], prefix_keys[0].shape[3]
    step_fn, visible = _decode_step, 0
    if cache == "static" and max_new_tokens > 1:
        state = _static_state(model, prefix_keys, prefix_values, rows, max_new_tokens)
        prefix_keys, prefix_values = state["prefix_k"], state["prefix_v"]
        own_keys, own_values = state["own_k"], state["own_v"]
        visible = None
        if device.type in COMPILE_DEVICES:
            step_fn = _compiled_step(model)
    else:
        own_keys = [prefix_keys[0].new_zeros(rows, kv_heads, max_new_tokens, head_dim) for _ in prefix_keys]
        own_values = [prefix_keys[0].new_zeros(rows, kv_heads, max_new_tokens, head_dim) for _ in prefix_keys]

    suppress = torch.tensor(list(suppress_ids), dtype=torch.long, device=device)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    steps = torch.arange(max_new_tokens, device=device)

    def draw(logits: Tensor) -> Tensor:
        return torch.multinomial(process_logits(logits, suppress, temperature, top_p).softmax(-1), 1).squeeze(1)

    tokens = draw(logits.repeat_interleave(group, 0))
    columns = [tokens]
    running = ~torch.isin(tokens, stops)
    for step in range(max_new_tokens - 1):
        if step % CHECK_EVERY == 0 and not bool(running.any()):
            break
        args = (model, tokens, steps[step], position + step, prefix_keys, prefix_values, prefix_bias, own_keys,
                own_values, None if visible is None else step + 1)
        if step_fn is _decode_step:
            logits = step_fn(*args)
        else:
            # A compiler failure must not stop training: the same step, uncompiled.
            try:
                torch.compiler.cudagraph_mark_step_begin()
                logits = step_fn(*args)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"compiled decoding failed ({type(e).__name__}: {e}); decoding uncompiled",
                              RuntimeWarning, stacklevel=2)
                _COMPILED[model] = step_fn = _decode_step
                logits = step_fn(*args)
        tokens = torch.where(running, draw(logits), pad_token_id)
        columns.append(tokens)
        running &= ~torch.isin(tokens, stops)
    completions = torch.stack(columns, 1)
    stopped = torch.isin(completions, stops)
    if bool(stopped.any(1).all()):  # generate ends at the step where the last row stops
        completions = completions[:, :int(stopped.int().argmax(1).max()) + 1]
    return completions
