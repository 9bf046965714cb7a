import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen3VLForConditionalGeneration

from saga.models import (EncoderOutput, ImagePreprocessor, VisionEncoder, enable_activation_checkpointing, load_vlm,
                         supports_mm_encoder_outputs, vision_inputs)


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    return load_vlm(tiny_vlm_dir, device="cpu")


def _images(n, seed=0, size=64):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _pair_batch(processor, images):
    """Two prompts, each showing two images (images 0,1 and 2,3), padded to one batch."""
    texts = []
    for _ in range(len(images) // 2):
        content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare the two birds."}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True) + "Answer: same")
    return processor(text=texts, images=images, return_tensors="pt", padding=True)


def test_forward_shapes(vlm):
    model, processor = vlm
    encoder = VisionEncoder.from_vlm(model)
    inputs = ImagePreprocessor(processor, 64)(_images(2, size=64) + _images(1, size=128))
    out = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    assert isinstance(out, EncoderOutput)
    assert out.num_tokens == [4, 4, 4]  # the preprocessor squares every image to 64 px
    assert encoder.out_dim == model.config.text_config.hidden_size == out.tokens[0].shape[1]
    assert [p.shape for p in out.patches] == [(16, encoder.tower.config.hidden_size)] * 3
    levels = len(model.config.vision_config.deepstack_visual_indexes)
    assert len(out.deepstack) == levels and all(len(level) == 3 for level in out.deepstack)
    assert out.deepstack[0][0].shape == (4, encoder.out_dim)


def test_from_vlm_is_a_separate_trainable_copy(vlm):
    model, processor = vlm
    model.requires_grad_(False)  # a frozen judge
    encoder = VisionEncoder.from_vlm(model)
    assert all(p.requires_grad for p in encoder.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    inputs = _pair_batch(processor, _images(2))
    with torch.no_grad():
        before = model(**inputs).logits.clone()
        for p in encoder.parameters():
            p.add_(1.0)
        after = model(**inputs).logits
    assert torch.equal(before, after)
    judge_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not judge_ptrs & {p.data_ptr() for p in encoder.parameters()}


def test_from_vlm_dtype_and_attention(vlm, tiny_vlm_dir):
    encoder = VisionEncoder.from_vlm(vlm[0], dtype=torch.bfloat16)
    assert encoder.dtype == torch.bfloat16 and vlm[0].model.visual.dtype == torch.float32
    eager, processor = load_vlm(tiny_vlm_dir, device="cpu", attn_implementation="eager")
    encoder = VisionEncoder.from_vlm(eager, attn_implementation="sdpa")
    assert encoder.tower.config._attn_implementation == "sdpa"
    assert eager.model.visual.config._attn_implementation == "eager"
    inputs = ImagePreprocessor(processor, 64)(_images(2))
    with torch.no_grad():
        a = encoder(inputs["pixel_values"], inputs["image_grid_thw"]).tokens
        b = VisionEncoder.from_vlm(eager)(inputs["pixel_values"], inputs["image_grid_thw"]).tokens
    torch.testing.assert_close(torch.cat(a), torch.cat(b), rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(vlm):
    model, processor = vlm
    inputs = ImagePreprocessor(processor, 64)(_images(2))
    grads = []
    for checkpointing in (False, True):
        encoder = VisionEncoder.from_vlm(model).train()
        if checkpointing:
            enable_activation_checkpointing(encoder.tower)
        out = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
        (torch.cat(out.tokens).square().sum() + sum(torch.cat(lv).sum() for lv in out.deepstack)).backward()
        grads.append(encoder.tower.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


# "tower" works on every transformers 5.x; "mm_encoder_outputs" only where forward has it (5.23, not 5.17).
_HAS_MM = supports_mm_encoder_outputs(Qwen3VLForConditionalGeneration)
MODES = ["auto", "tower"] + (["mm_encoder_outputs"] if _HAS_MM else [])


def test_auto_mode_picks_mm_encoder_outputs_where_it_exists(vlm):
    model, processor = vlm
    inputs = ImagePreprocessor(processor, 64)(_images(1))
    with torch.no_grad():
        features = VisionEncoder.from_vlm(model)(inputs["pixel_values"], inputs["image_grid_thw"])
    with vision_inputs(model, features) as extra:
        assert set(extra) == ({"mm_encoder_outputs"} if _HAS_MM else {"pixel_values"})
    with pytest.raises(ValueError, match="mode"), vision_inputs(model, features, mode="pixels"):
        pass


@pytest.mark.parametrize("mode", MODES)
def test_encoder_features_give_the_judges_logits_and_gradients(vlm, mode):
    """The judge reading the encoder's tokens (+ DeepStack) = the judge running its own tower on the pixels."""
    model, processor = vlm
    model.requires_grad_(True)
    encoder = VisionEncoder.from_vlm(model)
    inputs = _pair_batch(processor, _images(4, seed=1))
    text = {k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}

    reference = model(**inputs).logits
    reference.logsumexp(-1).sum().backward()
    features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    with vision_inputs(model, features, mode=mode) as extra:
        logits = model(**text, **extra).logits
    logits.logsumexp(-1).sum().backward()

    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    judge_grads = dict(model.model.visual.named_parameters())
    for name, p in encoder.tower.named_parameters():
        torch.testing.assert_close(p.grad, judge_grads[name].grad, rtol=1e-4, atol=1e-6)
    assert model.model.visual.forward.__self__ is model.model.visual  # the stand-in is gone after the block
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)


def test_deepstack_features_reach_the_judge(vlm):
    model, processor = vlm
    encoder = VisionEncoder.from_vlm(model)
    inputs = _pair_batch(processor, _images(2, seed=2))
    text = {k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    with torch.no_grad():
        features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
        zeroed = EncoderOutput(features.tokens, features.patches,
                               tuple(tuple(torch.zeros_like(t) for t in level) for level in features.deepstack),
                               features.grid_thw, features.output_cls)
        with vision_inputs(model, features) as extra:
            a = model(**text, **extra).logits
        with vision_inputs(model, zeroed) as extra:
            b = model(**text, **extra).logits
    assert not torch.allclose(a, b)


def test_generate_from_encoder_features_matches_pixels(vlm):
    model, processor = vlm
    encoder = VisionEncoder.from_vlm(model)
    inputs = _pair_batch(processor, _images(2, seed=3))
    text = {k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    with vision_inputs(model, features, mode="tower") as extra:
        got = model.generate(**text, **extra, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, expected)


def test_tower_mode_checks_the_grid(vlm):
    model, processor = vlm
    encoder = VisionEncoder.from_vlm(model)
    inputs = _pair_batch(processor, _images(2))
    with torch.no_grad():
        features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
        with (vision_inputs(model, features.take([0]), mode="tower") as extra,
              pytest.raises(ValueError, match="does not match")):
            model(**{k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids")},
                  image_grid_thw=inputs["image_grid_thw"], pixel_values=extra["pixel_values"])


def test_take_and_padded():
    tokens = (torch.ones(2, 3), 2 * torch.ones(4, 3), 3 * torch.ones(1, 3))
    patches = tuple(torch.zeros(4 * len(t), 5) for t in tokens)
    deep = (tuple(-t for t in tokens),)
    out = EncoderOutput(tokens, patches, deep, torch.tensor([[1, 2, 4], [1, 4, 4], [1, 2, 2]]), object)
    padded, mask = out.padded()
    assert padded.shape == (3, 4, 3)
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert torch.equal(padded[0, :2], tokens[0]) and torch.equal(padded[0, 2:], torch.zeros(2, 3))
    picked = out.take([2, 0, 2])
    assert picked.num_tokens == [1, 2, 1]
    assert picked.tokens[0] is tokens[2] and picked.deepstack[0][1] is deep[0][0]
    assert picked.grid_thw.tolist() == [[1, 2, 2], [1, 2, 4], [1, 2, 2]]


def test_from_pretrained_loads_only_the_tower(tiny_vlm_dir, vlm):
    encoder = VisionEncoder.from_pretrained(tiny_vlm_dir, device="cpu")
    assert all(p.requires_grad for p in encoder.parameters())
    inputs = ImagePreprocessor(vlm[1], 64)(_images(2))
    with torch.no_grad():
        a = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
        b = VisionEncoder.from_vlm(vlm[0])(inputs["pixel_values"], inputs["image_grid_thw"])
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
