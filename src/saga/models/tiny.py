"""Small random Qwen3-VL models built from a config, with a local tokenizer and processor (no download).

The synthetic benchmark's judge and every test use the same transformers class as the paper's Qwen3-VL-8B
(`Qwen3VLForConditionalGeneration`), only smaller (docs/design.md, "The synthetic world"). The geometry rules
that a small config must keep are those of docs/method.md, "The judge" and are checked in `check_geometry`.

Pixels to tokens: 16 px patches, 2 temporal frames (a still image is duplicated), 2x2 patches merged per LLM token.
A square image of side s (a multiple of 32) gives (s / 32)^2 image tokens: 64 px -> 4, 128 px -> 16, 224 px -> 49.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from saga.errors import ConfigError
from saga.models.processor import ImageOnlyQwen3VLProcessor
from saga.models.tokenizer import CHAT_TEMPLATE, VISION_TOKENS, build_tokenizer

# Shared by every preset: Qwen3-VL's pixel geometry and normalisation (mean = std = 0.5).
_PATCH, _MERGE, _TEMPORAL = 16, 2, 2

# Each preset: vision tower, text model and tokenizer size. `out_hidden_size` (tower -> LLM width) is always set to
# the text hidden size; the vocabulary size is the trained tokenizer's (at most tokenizer_vocab_size), so the
# parameter counts below (for a near-empty corpus) grow a little with the corpus.
PRESETS: dict[str, dict] = {
    # CPU tests and CPU judge pretraining: 0.96 M parameters (tower 0.50 M), a forward pass in milliseconds.
    "tiny": {
        "vision_config": {"depth": 2, "hidden_size": 64, "intermediate_size": 256, "num_heads": 2,
                          "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]},
        "text_config": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                        "mrope_section": [6, 5, 5]},
        "tokenizer_vocab_size": 1024,
    },
    # A GPU judge: 30.7 M parameters (tower 11.5 M); GQA and 3 DeepStack levels like Qwen3-VL-8B.
    "small": {
        "vision_config": {"depth": 6, "hidden_size": 256, "intermediate_size": 1024, "num_heads": 4,
                          "num_position_embeddings": 256, "deepstack_visual_indexes": [1, 3, 5]},
        "text_config": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6,
                        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64,
                        "mrope_section": [12, 10, 10]},
        "tokenizer_vocab_size": 2048,
    },
}


def preset_spec(preset: str, **overrides) -> dict:
    """The preset's settings with `overrides` merged in: `vision_config={...}` and `text_config={...}` update
    single fields, `tokenizer_vocab_size=N` replaces the vocabulary size. Unknown names raise ConfigError."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown tiny-model preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = copy.deepcopy(PRESETS[preset])
    for key, value in overrides.items():
        if key not in spec:
            raise ConfigError(f"unknown override {key!r}; use vision_config=..., text_config=... or "
                              "tokenizer_vocab_size=...")
        if isinstance(spec[key], dict):
            spec[key].update(value)
        else:
            spec[key] = value
    return spec


def check_geometry(config: Qwen3VLConfig) -> None:
    """Raise ConfigError when a Qwen3-VL config breaks a rule of docs/method.md, "The judge"."""
    v, t = config.vision_config, config.text_config
    problems = []
    if v.hidden_size % v.num_heads or (v.hidden_size // v.num_heads) % 4:
        problems.append(f"vision head dim {v.hidden_size}/{v.num_heads} must be an integer divisible by 4 "
                        "(2-D RoPE splits it into height and width halves of cos/sin pairs)")
    if sum(t.rope_parameters["mrope_section"]) * 2 != t.head_dim:
        problems.append(f"text mrope_section {t.rope_parameters['mrope_section']} must sum to head_dim / 2 = "
                        f"{t.head_dim // 2}")
    if math.isqrt(v.num_position_embeddings) ** 2 != v.num_position_embeddings:
        problems.append(f"vision num_position_embeddings {v.num_position_embeddings} must be a perfect square")
    if len(v.deepstack_visual_indexes) > t.num_hidden_layers:
        problems.append(f"{len(v.deepstack_visual_indexes)} DeepStack levels but only {t.num_hidden_layers} text "
                        "layers to add them to")
    if any(not 0 <= i < v.depth for i in v.deepstack_visual_indexes):
        problems.append(f"DeepStack indexes {list(v.deepstack_visual_indexes)} must be vision blocks 0..{v.depth - 1}")
    if t.num_attention_heads % t.num_key_value_heads:
        problems.append(f"{t.num_attention_heads} attention heads not a multiple of {t.num_key_value_heads} KV heads")
    if v.out_hidden_size != t.hidden_size:
        problems.append(f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {t.hidden_size}")
    if problems:
        raise ConfigError("invalid Qwen3-VL geometry: " + "; ".join(problems))


def tiny_image_processor(image_size: int) -> Qwen2VLImageProcessorPil:
    """Qwen3-VL's image processor with min = max pixels = image_size^2, so images are resized to about that area
    (the stock minimum of 65,536 pixels would upscale a 64 px image to 256 px, i.e. 64 tokens instead of 4)."""
    factor = _PATCH * _MERGE
    if image_size < factor or image_size % factor:
        raise ConfigError(f"image_size {image_size} must be a positive multiple of {factor} "
                          f"(patch {_PATCH} x merge {_MERGE})")
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": image_size * image_size, "longest_edge": image_size * image_size},
        patch_size=_PATCH, temporal_patch_size=_TEMPORAL, merge_size=_MERGE,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )


def build_tiny_qwen3vl(out_dir: str | Path | None = None, *, preset: str = "tiny", corpus: Iterable[str] = (),
                       image_size: int = 64, seed: int = 0, **overrides,
                       ) -> tuple[Qwen3VLForConditionalGeneration, ImageOnlyQwen3VLProcessor]:
    """Build a random Qwen3-VL, its tokenizer (trained on `corpus`) and processor; save them to `out_dir` if given.

    The saved directory loads offline with `load_vlm(out_dir)` or `Qwen3VLForConditionalGeneration
    .from_pretrained` + `AutoProcessor.from_pretrained` (after `import saga.models`). Weights depend only on
    `seed` and the config; the global torch RNG is left untouched. The generation config stops at `<|im_end|>`
    and suppresses the vision special tokens. Returns (model in eval mode, processor).
    """
    spec = preset_spec(preset, **overrides)
    tokenizer = build_tokenizer(corpus, vocab_size=spec["tokenizer_vocab_size"])
    token_id = tokenizer.convert_tokens_to_ids
    text = dict(spec["text_config"])
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1_000_000.0,
                               "mrope_section": text.pop("mrope_section"), "mrope_interleaved": True}
    text.update(vocab_size=len(tokenizer), pad_token_id=token_id("<|endoftext|>"))
    vision = {**spec["vision_config"], "patch_size": _PATCH, "spatial_merge_size": _MERGE,
              "temporal_patch_size": _TEMPORAL, "out_hidden_size": text["hidden_size"]}
    config = Qwen3VLConfig(
        vision_config=vision, text_config=text, tie_word_embeddings=False,
        image_token_id=token_id("<|image_pad|>"), video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"), vision_end_token_id=token_id("<|vision_end|>"),
    )
    check_geometry(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[token_id("<|im_end|>"), token_id("<|endoftext|>")], pad_token_id=token_id("<|endoftext|>"),
        suppress_tokens=[token_id(t) for t in VISION_TOKENS],
    )
    processor = ImageOnlyQwen3VLProcessor(tiny_image_processor(image_size), tokenizer, chat_template=CHAT_TEMPLATE)
    if out_dir is not None:
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
    return model.eval(), processor
