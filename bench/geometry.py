"""A Qwen3-VL of a given geometry with random weights, and what one step of that geometry costs.

The paper's judge is Qwen3-VL-8B (docs/method.md). Its weights cannot be downloaded here, but speed and
memory depend on the geometry only, not on the weight values: `configs/models/qwen3vl-8b.json` is that geometry
(docs/method.md, "The judge") written as the checkpoint's own config.json, and `build_from_config` makes a random model
of it, with a processor, without any download.

Tokenizer: the real one cannot be downloaded either. The model is paired with the local byte-level tokenizer
(`build_tokenizer`, a few hundred ids) and the config's special-token ids are pointed at that tokenizer's. The model
keeps its full vocabulary (151,936 rows of embedding and lm_head for the 8B), so every step costs what it costs with
the real tokenizer. A random model samples ids beyond the tokenizer's: they stay in the completions (scoring reads
ids, never text) and decode to nothing (the tokenizers library skips ids it does not know), so `Rollout.texts` are
short and carry no verdict, as a random model's would not anyway. Restricting sampling to the tokenizer's ids
instead (suppressing ~151,600 ids every step) would add a cost that the real judge does not pay.

Costs, for the roofline figures of bench/step.py:
- `decode_bytes`: bytes one decoding step must read from memory (every LLM weight but the embedding table, plus
  the KV cache of every sequence); a step cannot be faster than that divided by the memory bandwidth.
- `scoring_flops`: model FLOPs of the teacher-forced forward + backward of `saga.judge.scoring` (MFU convention:
  recomputation under gradient checkpointing is not counted).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig, Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from saga.errors import ConfigError
from saga.models.processor import ImageOnlyQwen3VLProcessor
from saga.models.tiny import check_geometry
from saga.models.tokenizer import CHAT_TEMPLATE, VISION_TOKENS, build_tokenizer

# configs/models/ of the repository: geometries by name.
GEOMETRIES = Path(__file__).resolve().parents[1] / "configs" / "models"


def load_config(path_or_dict: str | Path | dict) -> Qwen3VLConfig:
    """A Qwen3-VL config from a config.json-style file (or a name in configs/models/, e.g. "qwen3vl-8b") or dict,
    checked against the geometry rules of docs/method.md, "The judge"."""
    source = "config dict"
    if not isinstance(path_or_dict, dict):
        path = Path(path_or_dict)
        if not path.is_file() and (GEOMETRIES / f"{path_or_dict}.json").is_file():
            path = GEOMETRIES / f"{path_or_dict}.json"
        source = str(path)
        try:
            path_or_dict = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the model config ({e})") from None
    if path_or_dict.get("model_type") != "qwen3_vl":
        raise ConfigError(f"{source}: model_type {path_or_dict.get('model_type')!r}; only 'qwen3_vl' is supported")
    config = Qwen3VLConfig(**{k: v for k, v in path_or_dict.items() if k != "architectures"})
    try:
        check_geometry(config)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config


def image_processor_for(config: Qwen3VLConfig, image_size: int) -> Qwen2VLImageProcessorPil:
    """The model's image processor (patch grid from its vision config) with min = max pixels = image_size^2."""
    v = config.vision_config
    factor = v.patch_size * v.spatial_merge_size
    if image_size < factor or image_size % factor:
        raise ConfigError(f"image_size {image_size} must be a positive multiple of {factor}")
    area = image_size * image_size
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": area, "longest_edge": area}, patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )


def build_from_config(path_or_dict: str | Path | dict, *, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", image_size: int = 448, corpus: Iterable[str] = (),
                      seed: int = 0, attn_implementation: str = "sdpa",
                      ) -> tuple[Qwen3VLForConditionalGeneration, ImageOnlyQwen3VLProcessor]:
    """A random Qwen3-VL of the config's geometry, built directly on `device` in `dtype`, and its processor.

    device="meta" builds it without allocating (to count parameters). The weights depend only on `seed` and the
    device's generator; the global RNG state is left as it was. The tokenizer is trained on `corpus` (see the
    module docstring); the special-token ids of the config are replaced by the tokenizer's. Returns (model in eval
    mode, processor).
    """
    config = load_config(path_or_dict)
    tokenizer = build_tokenizer(corpus)
    if len(tokenizer) > config.text_config.vocab_size:
        source = "config dict" if isinstance(path_or_dict, dict) else str(path_or_dict)
        raise ConfigError(f"{source}: vocabulary of {config.text_config.vocab_size} ids, fewer than the local "
                          f"tokenizer's {len(tokenizer)}")
    token_id = tokenizer.convert_tokens_to_ids
    config.image_token_id, config.video_token_id = token_id("<|image_pad|>"), token_id("<|video_pad|>")
    config.vision_start_token_id, config.vision_end_token_id = token_id("<|vision_start|>"), token_id("<|vision_end|>")
    t = config.text_config
    t.pad_token_id, t.bos_token_id, t.eos_token_id = token_id("<|endoftext|>"), token_id("<|endoftext|>"), \
        token_id("<|im_end|>")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype,
                                                             attn_implementation=attn_implementation)
    model.generation_config = GenerationConfig(
        eos_token_id=[token_id("<|im_end|>"), token_id("<|endoftext|>")], pad_token_id=token_id("<|endoftext|>"),
        suppress_tokens=[token_id(name) for name in VISION_TOKENS],
    )
    processor = ImageOnlyQwen3VLProcessor(image_processor_for(config, image_size), tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    return model.eval(), processor


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of a Qwen3-VL: total, vision tower, language model (with its embedding table) and lm_head."""
    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {"total": count(model), "vision": count(model.model.visual),
            "language": count(model.model.language_model), "lm_head": count(model.lm_head)}


def _layer_matmul_params(text) -> int:
    """Weights of one decoder layer's matrix multiplies: q, k, v, o projections and the gated MLP."""
    d, heads, kv_heads = text.head_dim, text.num_attention_heads, text.num_key_value_heads
    attention = text.hidden_size * d * (2 * heads + 2 * kv_heads)
    return attention + 3 * text.hidden_size * text.intermediate_size


def decode_bytes(config: Qwen3VLConfig, *, batch: int, context: float, bytes_per_value: int = 2) -> float:
    """Bytes a decoding step reads at least: every decoder and lm_head weight once (norms included; the embedding
    table is only gathered, `batch` rows) and, for each of `batch` sequences, K and V of `context` earlier tokens
    in every layer. Activations are negligible beside these at decode time."""
    t = config.text_config
    norms = 2 * t.hidden_size + 2 * t.head_dim  # input / post-attention RMSNorm, q / k RMSNorm
    weights = t.num_hidden_layers * (_layer_matmul_params(t) + norms) + t.hidden_size * (t.vocab_size + 1)
    kv_cache = batch * t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * context
    return float(weights + kv_cache + batch * t.hidden_size) * bytes_per_value


def scoring_flops(config: Qwen3VLConfig, sequence_lengths: Sequence[int], completion_tokens: int) -> float:
    """Model FLOPs of the teacher-forced forward + backward of the scoring pass (`saga.judge.scoring`).

    Forward: 2 FLOPs per weight per token in the decoder's matrix multiplies; causal attention 2 x 2 x heads x
    head_dim per (query, key) pair with key <= query (QK^T and AV); lm_head only at the completion positions (the
    scorer's log-softmax is only there). Backward: the judge is frozen, so only gradients with respect to the
    inputs are formed: 1x the forward for each matrix multiply with weights, 2x for attention (dQ, dK from the
    scores; dV and dP). Gradient-checkpointing recomputation is not counted (model FLOPs, not hardware FLOPs).
    """
    t = config.text_config
    tokens = sum(sequence_lengths)
    linear = 2 * t.num_hidden_layers * _layer_matmul_params(t) * tokens
    pairs = sum(n * (n + 1) // 2 for n in sequence_lengths)
    attention = 4 * t.num_hidden_layers * t.num_attention_heads * t.head_dim * pairs
    head = 2 * t.hidden_size * t.vocab_size * completion_tokens
    return float(2 * linear + 3 * attention + 2 * head)
