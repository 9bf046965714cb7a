import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

from saga.errors import CheckpointError
from saga.models import build_tokenizer, load_processor, load_vision_tower, load_vlm, resolve_checkpoint
from saga.models.processor import ImageOnlyQwen2_5_VLProcessor
from saga.models.tokenizer import CHAT_TEMPLATE


@pytest.fixture(scope="module")
def tiny_qwen25_dir(tmp_path_factory):
    """A tiny random Qwen2.5-VL (14 px patches, window attention, no DeepStack), built from a config."""
    out = tmp_path_factory.mktemp("tiny_qwen25")
    tokenizer = build_tokenizer(["Answer: same"], vocab_size=300)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 14, "window_size": 56, "fullatt_block_indexes": [1]},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 4, 4]}},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out)
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56},
                                               patch_size=14, merge_size=2, temporal_patch_size=2)
    ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE).save_pretrained(out)
    return out


def _inputs(processor, n_images, size):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n_images)]
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": "same?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], images=images, return_tensors="pt")


def test_missing_path_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_vlm(tmp_path / "nope" / "model")


def test_directory_without_config_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_vlm(tmp_path)


def test_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(tmp_path / "weights.bin")


def test_unsupported_model_type_and_broken_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(CheckpointError, match="'llava' is not supported"):
        load_vlm(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: cannot read"):
        load_vlm(tmp_path)


def test_uncached_hub_id_says_it_cannot_be_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network from a test
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match="neither in the local cache nor downloadable"):
        load_vlm("saga-tests/not-a-real-model-4242")


def test_qwen3_vl_family(tiny_vlm_dir):
    model, processor = load_vlm(tiny_vlm_dir, device="cpu", dtype="float32")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert not model.training and model.dtype == torch.float32
    assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)  # same pixels with or without torchvision
    assert model.config._attn_implementation == "sdpa"
    eager, _ = load_vlm(tiny_vlm_dir, device="cpu", attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    bf16, _ = load_vlm(tiny_vlm_dir, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16


def test_qwen2_5_vl_family(tiny_qwen25_dir):
    model, processor = load_vlm(tiny_qwen25_dir, device="cpu")
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(processor, ImageOnlyQwen2_5_VLProcessor)
    assert isinstance(AutoProcessor.from_pretrained(tiny_qwen25_dir), ImageOnlyQwen2_5_VLProcessor)
    inputs = _inputs(processor, 2, 56)  # 56 px = 4x4 patches of 14 px -> 4 tokens per image
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 8
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


@pytest.mark.parametrize("fixture", ["tiny_vlm_dir", "tiny_qwen25_dir"])
def test_vision_tower_alone_equals_the_models_tower(fixture, request):
    path = request.getfixturevalue(fixture)
    model, _ = load_vlm(path, device="cpu")
    tower = load_vision_tower(path, device="cpu")
    assert type(tower) is type(model.model.visual)
    expected = model.model.visual.state_dict()
    assert tower.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in tower.state_dict().items())


def test_tower_from_original_qwen_key_layout(tiny_vlm_dir, tmp_path):
    """Original Qwen checkpoints store the tower as "visual.*" and shard the weights."""
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_vlm_dir / "model.safetensors")
    renamed = {k.removeprefix("model."): v for k, v in state.items()}
    vis = {k: v for k, v in renamed.items() if k.startswith("visual.")}
    rest = {k: v for k, v in renamed.items() if not k.startswith("visual.")}
    save_file(vis, tmp_path / "model-00001-of-00002.safetensors")
    save_file(rest, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in vis}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in rest})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(tiny_vlm_dir / "config.json", tmp_path / "config.json")
    tower = load_vision_tower(tmp_path, device="cpu")
    assert torch.equal(tower.merger.linear_fc2.weight, state["model.visual.merger.linear_fc2.weight"])


def test_checkpoint_without_weights(tiny_vlm_dir, tmp_path):
    shutil.copy(tiny_vlm_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no model weights"):
        load_vision_tower(tmp_path, device="cpu")


def test_processor_of_a_stock_qwen_checkpoint_loads_without_torchvision(tiny_vlm_dir, tmp_path):
    """Real checkpoints name Qwen3VLProcessor (which needs torchvision for videos); load_processor reads the
    tokenizer, chat template and image processor into the image-only class."""
    for f in tiny_vlm_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    (tmp_path / "processor_config.json").write_text(json.dumps({**config, "processor_class": "Qwen3VLProcessor"}))
    processor = load_processor(tmp_path)
    assert type(processor).__name__ == "ImageOnlyQwen3VLProcessor"
    assert processor.image_processor.size["longest_edge"] == 64 * 64
