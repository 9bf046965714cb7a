"""The judge's attention over each image's tokens, from the tokens that state its verdict: the target of L_KL.

docs/method.md: the MLLM's attention over an image's tokens, from the tokens that decide the verdict, is the
distribution the pooler's attention is pulled towards. Section 3: attention weights come back only from eager
attention, which materialises every (L x L) map of every layer; at 8B scale that is far too much. Instead, forward
hooks on a few layers' self-attention recompute softmax(q k^T / sqrt(d)) for only the needed query rows against all
keys, from the module's own projections (after the per-head q/k RMSNorm and RoPE; GQA: query head h reads key head
h // groups, as transformers' repeat_kv does), with the causal and padding masks. The model keeps its sdpa (or flash)
attention, and nothing here carries gradient. With a shared prefix (`saga.judge.prefix`) a pair's prompt and its G
completions are one packed row: each completion's query rows then read the prompt's keys and its own keys from that
row (`keys`, `rows`), so its attention is the one it has in its own sequence [prompt | completion].

Query rows ("verdict tokens"): the tokens of the completion's final line that contains "Answer" (the prompt asks
for "Answer: same/different"; the token that predicts the verdict word is in it), or of its last non-empty line if
no line says "Answer". A completion without a verdict (`parse_verdict` gave None) uses all its completion tokens.

Reduction, in this order: mean over heads, layers and query rows; then for each image, the columns of its tokens,
renormalised to sum to 1; then the mean over the G completions of the pair (a mean of distributions).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_LINE = re.compile(r"[^\n]+")


def verdict_line_span(text: str) -> tuple[int, int] | None:
    """Character range [start, end) of the verdict line (see module docstring), stripped; None for blank text."""
    lines = []
    for m in _LINE.finditer(text):
        line = m.group()
        if line.strip():
            start = m.start() + len(line) - len(line.lstrip())
            lines.append((start, m.start() + len(line.rstrip()), "answer" in line.lower()))
    answers = [span for span in lines if span[2]]
    chosen = answers[-1] if answers else (lines[-1] if lines else None)
    return None if chosen is None else chosen[:2]


def verdict_token_mask(tokenizer, completion_ids: Tensor, completion_mask: Tensor,
                       verdicts: Sequence[bool | None]) -> Tensor:
    """(N, Lc) bool: the verdict tokens of each completion, or all its completion tokens if it has no verdict.

    Characters are mapped to tokens by decoding prefixes (binary search over the prefix length), decoded exactly
    as `Rollout.texts` are, so byte-level tokens that split a character map to the character they complete.
    """
    out = completion_mask.clone()
    for n, verdict in enumerate(verdicts):
        if verdict is None:
            continue
        ids = completion_ids[n][completion_mask[n]].tolist()

        def decoded_length(k: int) -> int:
            return len(tokenizer.decode(ids[:k], skip_special_tokens=True, clean_up_tokenization_spaces=False))

        span = verdict_line_span(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        if span is None:
            continue
        prefixes = range(len(ids) + 1)
        first = bisect.bisect_left(prefixes, True, key=lambda k: decoded_length(k) > span[0]) - 1
        last = bisect.bisect_left(prefixes, True, key=lambda k: decoded_length(k) >= span[1]) - 1
        out[n] = False
        out[n, first:last + 1] = True
    return out


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE as transformers applies it (rotate_half convention); cos, sin: (N, T, head_dim), x: (N, heads, T, d)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def project_keys(attn: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The keys one self-attention module forms from its input: (B, kv_heads, L, head_dim), after the per-head
    k-norm (Qwen3; Qwen2.5 has none) and RoPE, as the module itself computes them."""
    b, length, _ = hidden.shape
    k = attn.k_proj(hidden).view(b, length, -1, attn.head_dim)
    if hasattr(attn, "k_norm"):
        k = attn.k_norm(k)
    return _rotate(k.transpose(1, 2), cos, sin)


def query_attention(attn: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor, queries: Tensor,
                    allowed: Tensor, *, keys: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """Head-averaged attention probabilities of rows `queries` against keys, for one self-attention module.

    hidden: (B, L, D) the module's input; cos, sin: its position embeddings (B, L, head_dim). Output row n reads
    batch row rows[n] (default: row n, N = B): queries (N, Q) are its query positions, keys (N, K) its key
    positions (default: all L), allowed (N, Q, K) bool which keys each query may see. Several output rows may read
    one batch row: a packed sequence holding a shared prompt and several completions (`saga.judge.scoring`).
    Returns (N, Q, K) float32.
    """
    b = hidden.shape[0]
    rows = torch.arange(b, device=hidden.device) if rows is None else rows
    n, num_queries = queries.shape
    head_dim = attn.head_dim
    at = (rows[:, None], queries)
    q = attn.q_proj(hidden[at]).view(n, num_queries, -1, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3 normalises each head's q and k before RoPE; Qwen2.5 does not
        q = attn.q_norm(q)
    q = _rotate(q.transpose(1, 2), cos[at], sin[at])
    k = project_keys(attn, hidden, cos, sin)  # (B, kv_heads, L, d)
    k = k[rows] if keys is None else k.transpose(1, 2)[rows[:, None], keys].transpose(1, 2)
    heads, kv_heads = q.shape[1], k.shape[1]
    # GQA without repeating keys: query heads kv*g .. kv*g+g-1 share key head kv.
    grouped = q.reshape(n, kv_heads, heads // kv_heads * num_queries, head_dim)
    scores = (grouped.float() @ k.float().transpose(-1, -2)) * attn.scaling
    scores = scores.view(n, heads, num_queries, k.shape[2]).masked_fill(~allowed[:, None], float("-inf"))
    return scores.softmax(-1).mean(1)


class AttentionCapture:
    """While active (`with`), record `query_attention` rows of the chosen LLM layers during a forward pass.

    layers: indexes into the language model's layers (negative counts from the end). queries: (N, Q) positions,
    padded with any valid position (the caller masks padded rows out). key_mask: (N, K) bool, True at real tokens.
    keys: (N, K) the key positions of each row (default: all L positions, K = L); rows: (N,) the batch row each
    output row reads (default: row n); see `query_attention`. A query sees the real keys at or before its
    position. After the forward, `rows` maps each layer index (non-negative) to (N, Q, K) float32.

    Leave the block before `backward`: with gradient checkpointing the layers run again during backward, and the
    hooks must not fire then.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int], queries: Tensor, key_mask: Tensor, *,
                 keys: Tensor | None = None, rows: Tensor | None = None) -> None:
        decoder = model.model.language_model.layers
        self.layers = sorted({range(len(decoder))[i] for i in layers})  # IndexError for an index out of range
        self.modules = {i: decoder[i].self_attn for i in self.layers}
        self.queries, self.keys, self.batch_rows = queries, keys, rows
        positions = torch.arange(key_mask.shape[1], device=key_mask.device)[None] if keys is None else keys
        self.allowed = key_mask[:, None, :].bool() & (positions[:, None, :] <= queries[..., None])  # causal
        self.rows: dict[int, Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> AttentionCapture:
        for i, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
            # The decoder layer passes both by keyword (transformers 5.17 and 5.23); positional as a fallback.
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]
            with torch.no_grad():
                self.rows[layer] = query_attention(module, hidden.detach(), cos, sin, self.queries, self.allowed,
                                                   keys=self.keys, rows=self.batch_rows)

        return hook

    def mean_rows(self, query_mask: Tensor) -> Tensor:
        """(N, K): the rows averaged over layers and over the real query rows (query_mask (N, Q) bool)."""
        missing = set(self.layers) - set(self.rows)
        if missing:
            raise RuntimeError(f"attention hooks on layers {sorted(missing)} did not fire during the forward pass")
        rows = torch.stack([self.rows[i] for i in self.layers]).mean(0)
        weights = query_mask.float() / query_mask.sum(1, keepdim=True).clamp(min=1)
        return (rows * weights[..., None]).sum(1)


def image_attention(rows: Tensor, input_ids: Tensor, image_token_id: int, pair_of: Tensor,
                    num_tokens: Sequence[int]) -> list[Tensor]:
    """Per image of the encoder batch (2P images, a0, b0, a1, b1, ...): its (T_i,) attention distribution.

    rows: (N, L) attention of each sequence over its positions; a sequence of pair p shows image 2p's tokens, then
    image 2p+1's, at the positions of `image_token_id`. Each image's columns are renormalised per sequence, then
    averaged over the sequences of its pair.
    """
    out = []
    for p in range(len(num_tokens) // 2):
        members = (pair_of == p).nonzero().squeeze(1)
        positions = (input_ids[members[0]] == image_token_id).nonzero().squeeze(1)
        for columns in positions.split([num_tokens[2 * p], num_tokens[2 * p + 1]]):
            weights = rows[members][:, columns]
            out.append((weights / weights.sum(1, keepdim=True)).mean(0))
    return out
