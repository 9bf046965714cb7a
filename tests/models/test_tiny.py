import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

import saga.models  # noqa: F401  (registers the image-only processors with AutoProcessor)
from saga.errors import ConfigError
from saga.models import build_tiny_qwen3vl, load_vlm
from saga.models.processor import ImageOnlyQwen3VLProcessor
from saga.models.tiny import preset_spec


def _image(size, seed=0, height=None):
    shape = (height or size, size, 3)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _inputs(processor, images, text="Compare the two birds."):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[prompt], images=images, return_tensors="pt")


def test_saved_files_and_config_ids_match_the_tokenizer(tiny_vlm_dir):
    names = {p.name for p in tiny_vlm_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
            "chat_template.jinja", "generation_config.json"} <= names
    config = json.loads((tiny_vlm_dir / "config.json").read_text())
    tok = json.loads((tiny_vlm_dir / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert config["image_token_id"] == ids["<|image_pad|>"]
    assert config["video_token_id"] == ids["<|video_pad|>"]
    assert config["vision_start_token_id"] == ids["<|vision_start|>"]
    assert config["vision_end_token_id"] == ids["<|vision_end|>"]
    assert config["text_config"]["vocab_size"] == len(tok["model"]["vocab"])
    assert config["vision_config"]["out_hidden_size"] == config["text_config"]["hidden_size"]
    processor_config = json.loads((tiny_vlm_dir / "processor_config.json").read_text())
    assert processor_config["processor_class"] == "ImageOnlyQwen3VLProcessor"
    generation = json.loads((tiny_vlm_dir / "generation_config.json").read_text())
    assert sorted(generation["suppress_tokens"]) == sorted(ids[t] for t in saga.models.VISION_TOKENS)


def test_reload_offline_gives_identical_logits(tiny_vlm_dir):
    by_loader, processor = load_vlm(tiny_vlm_dir, device="cpu")
    by_hf = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_dir).eval()
    auto = AutoProcessor.from_pretrained(tiny_vlm_dir)
    assert isinstance(processor, ImageOnlyQwen3VLProcessor) and isinstance(auto, ImageOnlyQwen3VLProcessor)
    images = [_image(64, 1), _image(64, 2)]
    inputs = _inputs(processor, images)
    assert torch.equal(inputs["input_ids"], _inputs(auto, images)["input_ids"])
    with torch.no_grad():
        a, b = by_loader(**inputs).logits, by_hf(**inputs).logits
    assert torch.equal(a, b)
    assert a.shape == (1, inputs["input_ids"].shape[1], by_loader.config.text_config.vocab_size)
    # the images matter: other pixels, other logits
    with torch.no_grad():
        other = by_loader(**_inputs(processor, [_image(64, 3), _image(64, 2)])).logits
    assert not torch.allclose(a, other)


def test_same_seed_same_weights_other_seed_other_weights():
    a, _ = build_tiny_qwen3vl(seed=3)
    b, _ = build_tiny_qwen3vl(seed=3)
    c, _ = build_tiny_qwen3vl(seed=4)
    wa, wb, wc = (m.model.visual.blocks[0].attn.qkv.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_global_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_qwen3vl(seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("image_size, side, tokens", [(64, 64, 4), (128, 128, 16), (96, 96, 9)])
def test_image_tokens_per_image(image_size, side, tokens):
    _, processor = build_tiny_qwen3vl(image_size=image_size)
    inputs = _inputs(processor, [_image(side, 0)])
    # 16 px patches, 2x2 merged: (side / 32)^2 tokens, not upscaled to the stock 65,536-pixel minimum
    assert inputs["image_grid_thw"].tolist() == [[1, side // 16, side // 16]]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == tokens
    assert int(inputs["mm_token_type_ids"].sum()) == tokens
    assert inputs["pixel_values"].shape == ((side // 16) ** 2, 3 * 2 * 16 * 16)


def test_images_of_other_sizes_are_resized_to_the_configured_area():
    _, processor = build_tiny_qwen3vl(image_size=64)
    inputs = _inputs(processor, [_image(200, 0), _image(32, 1)])
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]


def test_generate_never_emits_vision_tokens(tiny_vlm_dir):
    model, processor = load_vlm(tiny_vlm_dir, device="cpu")
    inputs = _inputs(processor, [_image(64, 0)])
    # Make the random model want <|image_pad|> above all else: without suppression greedy decoding picks it.
    with torch.no_grad():
        model.lm_head.weight[processor.image_token_id] = 50 * model.lm_head.weight.abs().max()
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert len(new) > 0 and not set(new.tolist()) & set(saga.models.vision_token_ids(processor.tokenizer))
    forced = model.generate(**inputs, max_new_tokens=1, do_sample=False, suppress_tokens=[])
    assert forced[0, -1].item() == processor.image_token_id


def test_presets_and_overrides():
    small = preset_spec("small")
    assert small["text_config"]["num_hidden_layers"] >= len(small["vision_config"]["deepstack_visual_indexes"])
    spec = preset_spec("tiny", vision_config={"depth": 3}, tokenizer_vocab_size=512)
    assert spec["vision_config"]["depth"] == 3 and spec["vision_config"]["hidden_size"] == 64
    assert spec["tokenizer_vocab_size"] == 512
    with pytest.raises(ConfigError, match="preset"):
        preset_spec("huge")
    with pytest.raises(ConfigError, match="override"):
        preset_spec("tiny", depth=3)


@pytest.mark.parametrize("overrides, message", [
    ({"vision_config": {"hidden_size": 72, "num_heads": 4}}, "divisible by 4"),
    ({"text_config": {"mrope_section": [4, 4, 4]}}, "head_dim / 2"),
    ({"vision_config": {"num_position_embeddings": 60}}, "perfect square"),
    ({"vision_config": {"depth": 3, "deepstack_visual_indexes": [0, 1, 2]}}, "DeepStack levels"),
    ({"vision_config": {"deepstack_visual_indexes": [0, 5]}}, "vision blocks"),
])
def test_geometry_rules_are_enforced(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_tiny_qwen3vl(**overrides)


def test_image_size_must_be_a_multiple_of_32():
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_tiny_qwen3vl(image_size=100)
