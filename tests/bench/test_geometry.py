import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from saga.errors import ConfigError
from saga.models import ImagePreprocessor, build_tiny_qwen3vl

# Qwen3-VL-8B language model, by hand: per layer q and o 4096 x 4096, k and v 4096 x 1024 (8 KV heads x 128),
# MLP 3 x 4096 x 12288, two RMSNorms of 4096 and q/k norms of 128; embedding 151,936 x 4096; final norm 4096.
LAYER_8B = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 12288 + 2 * 4096 + 2 * 128
LANGUAGE_8B = 36 * LAYER_8B + 151_936 * 4096 + 4096
LM_HEAD_8B = 151_936 * 4096


@pytest.fixture(scope="module")
def geometry(load_bench):
    return load_bench("geometry")


@pytest.fixture(scope="module")
def geometry_8b(geometry):
    return geometry.build_from_config("qwen3vl-8b", device="meta", dtype=torch.bfloat16)


def test_8b_geometry_has_the_papers_parameter_counts(geometry, geometry_8b):
    model, _ = geometry_8b
    counts = geometry.parameter_counts(model)
    assert counts["language"] == LANGUAGE_8B == 7_568_405_504
    assert counts["lm_head"] == LM_HEAD_8B  # untied: a second 151,936 x 4096 matrix
    assert round(counts["total"] / 1e9, 2) == 8.77 and round(counts["vision"] / 1e6) == 576  # REFERENCE.md sec. 3
    assert counts["total"] == counts["vision"] + counts["language"] + counts["lm_head"]
    v, t = model.config.vision_config, model.config.text_config
    assert (v.depth, v.hidden_size, v.num_heads, list(v.deepstack_visual_indexes)) == (27, 1152, 16, [8, 16, 24])
    assert t.rope_parameters["mrope_section"] == [24, 20, 20] and t.rope_parameters["mrope_interleaved"]


def test_8b_processor_gives_196_tokens_for_448_px_and_ids_point_at_the_local_tokenizer(geometry, geometry_8b):
    model, processor = geometry_8b
    rng = np.random.default_rng(0)
    inputs = ImagePreprocessor(processor, 448)([Image.fromarray(rng.integers(0, 256, (300, 500, 3), np.uint8))])
    assert inputs["image_grid_thw"].tolist() == [[1, 28, 28]]  # 448 / 16 patches a side; 28 * 28 / 4 = 196 tokens
    tokenizer = processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(model.config.image_token_id) == "<|image_pad|>"
    assert len(tokenizer) < model.config.text_config.vocab_size == 151_936
    assert tokenizer.decode([model.config.text_config.vocab_size - 1]) == ""  # unknown ids decode to nothing
    suppressed = tokenizer.convert_ids_to_tokens(model.generation_config.suppress_tokens)
    assert "<|image_pad|>" in suppressed and "<|vision_start|>" in suppressed


def test_random_weights_are_seeded_and_in_the_requested_dtype(geometry):
    tiny, _ = build_tiny_qwen3vl(preset="tiny")
    config = tiny.config.to_dict()
    a, _ = geometry.build_from_config(config, dtype=torch.bfloat16, image_size=64, seed=1)
    b, _ = geometry.build_from_config(config, dtype=torch.bfloat16, image_size=64, seed=1)
    c, _ = geometry.build_from_config(config, dtype=torch.bfloat16, image_size=64, seed=2)
    assert a.dtype == torch.bfloat16 and not a.training
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert 0.015 < a.lm_head.weight.float().std() < 0.025  # initializer_range 0.02, not left empty


def test_bad_configs_are_config_errors_naming_the_file(geometry, tmp_path):
    config = json.loads((geometry.GEOMETRIES / "qwen3vl-8b.json").read_text())
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**config, "text_config": {**config["text_config"], "head_dim": 96}}))
    with pytest.raises(ConfigError, match=r"broken\.json.*mrope_section"):
        geometry.build_from_config(broken, device="meta")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ConfigError, match=r"other\.json.*llama"):
        geometry.build_from_config(other, device="meta")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match=r"bad\.json"):
        geometry.build_from_config(tmp_path / "bad.json", device="meta")
    small = tmp_path / "small_vocab.json"
    small.write_text(json.dumps({**config, "text_config": {**config["text_config"], "vocab_size": 100}}))
    with pytest.raises(ConfigError, match=r"small_vocab\.json: vocabulary of 100 ids"):
        geometry.build_from_config(small, device="meta")
    with pytest.raises(ConfigError, match="multiple of 32"):
        geometry.build_from_config("qwen3vl-8b", device="meta", image_size=100)


def test_decode_bytes_are_the_weights_once_plus_the_kv_cache(geometry, geometry_8b):
    config = geometry_8b[0].config
    weights = LANGUAGE_8B - 151_936 * 4096 + LM_HEAD_8B  # every weight but the embedding table (only gathered)
    assert geometry.decode_bytes(config, batch=0, context=0) == 2 * weights  # bf16
    # 8 sequences of 500 cached tokens: K and V, 8 heads x 128 in 36 layers; plus 8 embedding rows
    kv = 8 * 500 * 36 * 2 * 8 * 128
    assert geometry.decode_bytes(config, batch=8, context=500) == 2 * (weights + kv + 8 * 4096)
    assert geometry.decode_bytes(config, batch=8, context=500, bytes_per_value=4) == 4 * (weights + kv + 8 * 4096)


def test_scoring_flops_by_hand(geometry):
    # 1 layer, width 4, 2 heads + 1 KV head of dim 2, MLP 8, vocabulary 10; one sequence of 3 tokens, 2 completions.
    text = SimpleNamespace(num_hidden_layers=1, hidden_size=4, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=2, intermediate_size=8, vocab_size=10)
    config = SimpleNamespace(text_config=text)
    matmul_weights = 4 * 4 + 4 * 2 + 4 * 2 + 4 * 4 + 3 * 4 * 8  # q (4 -> 2x2), k, v (4 -> 2), o, MLP: 144
    forward = 2 * matmul_weights * 3  # 864
    attention = 2 * 2 * (2 * 2) * (1 + 2 + 3)  # QK^T and AV, 2 FLOPs per MAC, 4 channels, 6 causal pairs: 96
    head = 2 * 4 * 10 * 2  # lm_head at the 2 completion positions: 160
    assert geometry.scoring_flops(config, [3], 2) == 2 * forward + 3 * attention + 2 * head == 2336
    assert geometry.scoring_flops(config, [3, 3], 4) == 2 * 2336


def test_32b_geometry_is_a_32b_model(geometry):
    """configs/models/qwen3vl-32b.json: the text model of Qwen3-32B (64 layers of 5120, 64 query / 8 KV heads, MLP
    25600) behind the same vision tower with a 5120-wide merger."""
    model, _ = geometry.build_from_config("qwen3vl-32b", device="meta", dtype=torch.bfloat16)
    counts = geometry.parameter_counts(model)
    assert 33.0e9 < counts["total"] < 34.0e9 and round(counts["vision"] / 1e6) == 595  # 8B: 576 M
    assert 2 * counts["total"] / 2**30 > 60  # bf16 weights: more than one 80 GB GPU holds with a step's activations
