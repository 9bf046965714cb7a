"""AGFF-Embed's model (saga.models.agff): the fusion by hand, K distinct prompt embeddings equal to K separate
forward passes, what trains and what stays frozen, and the saved folder."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from saga.errors import CheckpointError, ConfigError
from saga.models import AdaptiveFusion, AgffModel, ImagePreprocessor, load_model

PROMPTS = ["Summarize the bird in one word.", "Describe its crest.", "Describe its bill."]
LORA = {"kind": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["q_proj", "v_proj", "attn.qkv"]}
MODULES = {"kind": "modules", "modules": ["model.visual.merger", "model.language_model.layers.1"]}


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def lora_model(tiny_vlm_dir):
    torch.manual_seed(0)
    model = AgffModel.build(tiny_vlm_dir, PROMPTS, LORA, image_size=64, device="cpu")
    with torch.no_grad():  # LoRA B starts at zero: move it, so that the adapters change the outputs
        for name, p in model.vlm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def test_fusion_matches_the_hand_computation():
    fusion = AdaptiveFusion(dim=2, num_prompts=2)
    with torch.no_grad():
        fusion.scorer.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        fusion.bias.copy_(torch.tensor([0.0, -1.0]))
    out = fusion(torch.tensor([[[3.0, 4.0], [0.0, 2.0]]]))
    # unit vectors (0.6, 0.8) and (0, 1); scores 1 * 0.6 + 0 = 0.6 and 2 * 1 - 1 = 1.0
    w0 = math.exp(0.6) / (math.exp(0.6) + math.exp(1.0))
    torch.testing.assert_close(out.weights, torch.tensor([[w0, 1 - w0]]))
    torch.testing.assert_close(out.embedding, torch.tensor([[0.6 * w0, 0.8 * w0 + (1 - w0)]]))
    torch.testing.assert_close(out.prompt_embeddings, torch.tensor([[[0.6, 0.8], [0.0, 1.0]]]))
    # at initialisation (zeros) the fusion is the mean of the unit embeddings
    fresh = AdaptiveFusion(dim=2, num_prompts=2)(torch.tensor([[[3.0, 4.0], [0.0, 2.0]]]))
    torch.testing.assert_close(fresh.embedding, torch.tensor([[0.3, 0.9]]))
    with pytest.raises(ValueError, match=r"expected \(B, 2, 2\)"):
        fusion(torch.zeros(1, 3, 2))


def test_k_prompts_give_k_distinct_embeddings_equal_to_separate_passes(lora_model):
    model = lora_model
    inputs = model.preprocessor(_images(2))
    with torch.no_grad():
        out = model(**inputs)
    assert out.embedding.shape == (2, model.embed_dim) and out.prompt_embeddings.shape == (2, 3, model.embed_dim)
    for b in range(2):
        cos = out.prompt_embeddings[b] @ out.prompt_embeddings[b].T
        assert (cos - torch.eye(3)).abs().max() < 1 - 1e-3  # distinct prompt embeddings
        assert cos.fill_diagonal_(0).max() < 0.9999
    # The batch (tower once per image, the K prompts left-padded together) equals one plain forward per
    # (image, prompt): the model's own image path, its own tower, no padding.
    vlm, processor = model.vlm, model.processor
    grid = inputs["image_grid_thw"]
    patches = grid.prod(-1).tolist()
    pixel_rows = torch.split(inputs["pixel_values"], patches)
    for b in range(2):
        for k, prompt in enumerate(PROMPTS):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            text = text.replace(processor.image_token, processor.image_token * (patches[b] // 4))
            ids = torch.tensor([processor.tokenizer(text, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                hidden = vlm.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_rows[b],
                                   image_grid_thw=grid[b:b + 1], mm_token_type_ids=(ids == vlm.config.image_token_id)
                                   .int()).last_hidden_state[0, -1]
            torch.testing.assert_close(out.prompt_embeddings[b, k], hidden / hidden.norm(), atol=1e-5, rtol=1e-4)
    # images of another size in the same batch (another grid, another packed length, more left padding)
    larger = ImagePreprocessor(model.processor, 96)(_images(1, seed=2))
    mixed = {"pixel_values": torch.cat([inputs["pixel_values"], larger["pixel_values"]]),
             "image_grid_thw": torch.cat([inputs["image_grid_thw"], larger["image_grid_thw"]])}
    with torch.no_grad():
        both = model(**mixed).prompt_embeddings
        alone = model(**larger).prompt_embeddings
    torch.testing.assert_close(both[:2], out.prompt_embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[2:], alone, atol=1e-5, rtol=1e-4)
    # the passes can be split (images_per_pass) without changing anything
    model.images_per_pass = 1
    try:
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).prompt_embeddings, out.prompt_embeddings)
    finally:
        model.images_per_pass = 0


@pytest.mark.parametrize("spec", [LORA, MODULES], ids=["lora", "modules"])
def test_gradients_reach_only_the_named_trainable_parameters(tiny_vlm_dir, spec):
    torch.manual_seed(0)
    model = AgffModel.build(tiny_vlm_dir, PROMPTS[:2], spec, image_size=64, device="cpu", images_per_pass=2)
    if spec["kind"] == "lora":
        def expected(name):
            return ".lora_A." in name or ".lora_B." in name
    else:
        def expected(name):
            return name.startswith(tuple(m + "." for m in spec["modules"]))
    names = {n for n, p in model.vlm.named_parameters() if p.requires_grad}
    assert names and names == {n for n, _ in model.vlm.named_parameters() if expected(n)}
    if spec["kind"] == "lora":  # both the LLM's and the tower's adapters
        assert any("language_model" in n for n in names) and any("visual" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model(**model.preprocessor(_images(2)))
    (out.embedding.sum() + out.prompt_embeddings.sum()).backward()
    for n, p in model.vlm.named_parameters():
        assert (p.grad is not None) == (n in names), n
    # LoRA's B starts at zero, so only B gets gradient on the first step
    moved = {n for n, p in model.vlm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved and moved <= names
    optimizer.step()
    for n, p in model.named_parameters():
        if n.startswith("vlm.") and n.removeprefix("vlm.") not in names:
            assert torch.equal(p, before[n]), n  # frozen: bit-identical after the step
    assert any(not torch.equal(p, before["vlm." + n]) for n, p in model.vlm.named_parameters() if n in names)
    assert not torch.equal(model.fusion.scorer, before["fusion.scorer"])  # the fusion trains too


def test_saved_model_holds_only_the_trained_tensors_and_reloads(lora_model, tiny_vlm_dir, tmp_path):
    out = lora_model.save_pretrained(tmp_path / "agff", run={"method": "agff", "steps": 3})
    assert {p.name for p in out.iterdir()} == {"adapters.safetensors", "fusion.safetensors", "saga_model.json",
                                               "preprocessor_config.json", "README.md"}
    adapters = load_file(out / "adapters.safetensors")
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    base_bytes = sum(p.stat().st_size for p in tiny_vlm_dir.glob("*.safetensors"))
    assert (out / "adapters.safetensors").stat().st_size < base_bytes / 5
    manifest = json.loads((out / "saga_model.json").read_text())
    assert manifest["format"] == "saga-agff/1" and manifest["prompts"] == PROMPTS
    assert manifest["base"]["checkpoint"] == str(tiny_vlm_dir.resolve())
    assert "Describe its crest." in (out / "README.md").read_text()

    loaded = load_model(out, device="cpu")  # dispatched on the manifest's format
    assert isinstance(loaded, AgffModel) and loaded.image_size == lora_model.image_size == 64
    images = _images(3, seed=1)
    torch.testing.assert_close(loaded.embed(images), lora_model.embed(images))
    assert torch.allclose(loaded.embed(images).norm(dim=-1), torch.ones(3))


def test_a_different_base_checkpoint_is_refused(tiny_vlm_dir, tmp_path):
    base = shutil.copytree(tiny_vlm_dir, tmp_path / "base")
    model = AgffModel.build(base, PROMPTS[:1], LORA, image_size=64, device="cpu")
    saved = model.save_pretrained(tmp_path / "agff")
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 100] ^= 0xFF  # another checkpoint of the same geometry: one byte of its first tensor differs
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is not the one it was trained on"):
        load_model(saved, device="cpu")
    shutil.rmtree(base)
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_model(saved, device="cpu")


def test_bad_trainable_settings_are_config_errors(tiny_vlm_dir):
    with pytest.raises(ConfigError, match="agff.lora_targets"):
        AgffModel.build(tiny_vlm_dir, PROMPTS, dict(LORA, targets=["no_such_layer"]), image_size=64, device="cpu")
    with pytest.raises(ConfigError, match="no module 'model.nope'"):
        AgffModel.build(tiny_vlm_dir, PROMPTS, {"kind": "modules", "modules": ["model.nope"]}, image_size=64,
                        device="cpu")
