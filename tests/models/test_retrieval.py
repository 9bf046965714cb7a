import json

import numpy as np
import pytest
import torch
from PIL import Image

import saga
from saga.data import load_dataset
from saga.errors import CheckpointError
from saga.models import AttentionPooler, RetrievalModel, load_model
from saga.train.setup import build_parts


def _images(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize(("method", "extra"), [("saga", ["model.embed_dim=16", "model.pooler_heads=2"]),
                                               ("proxy_anchor", [])])
def test_save_and_load_give_the_same_embeddings(tiny_config, tmp_path, method, extra):
    cfg = tiny_config(method, *extra)
    parts = build_parts(cfg, load_dataset("synth", cfg.data.root).train, torch.device("cpu"))
    with torch.no_grad():  # move every weight away from its initial value, so a load that skipped one shows
        for p in parts.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = parts.model.save_pretrained(tmp_path / "export", run={"method": cfg.method})

    model = saga.load_model(out, device="cpu")
    assert isinstance(model, RetrievalModel) and not model.training and model.image_size == 64
    assert type(model.pooler) is type(parts.pooler)
    if isinstance(model.pooler, AttentionPooler):
        assert model.pooler.num_heads == 2 and model.pooler.proj.out_features == 16
    expected = parts.model.embed(_images())
    assert parts.model.training  # embed restores the mode it found
    got = model.embed(_images())
    assert torch.equal(got, expected)
    assert torch.allclose(got.norm(dim=1), torch.ones(3)) and got.device.type == "cpu"
    assert json.loads((out / "saga_model.json").read_text())["run"] == {"method": cfg.method}
    assert "# saga retrieval model" in (out / "README.md").read_text()


def test_embed_batches_and_reads_files(tiny_vlm_dir, tmp_path):
    model = RetrievalModel.from_backbone(tiny_vlm_dir, image_size=64, device="cpu", dtype="float32")
    images = _images(5)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    whole = model.embed(images, batch_size=5)
    torch.testing.assert_close(model.embed(paths, batch_size=2), whole, rtol=0, atol=1e-5)
    assert model.embed([]).shape == (0, whole.shape[1])


def test_load_model_takes_a_run_folder_or_a_checkpoint(tiny_vlm_dir, tmp_path):
    backbone = load_model(tiny_vlm_dir, device="cpu", image_size=64)
    assert backbone.image_size == 64 and backbone.pooler.spec()["name"] == "mean"
    backbone.save_pretrained(tmp_path / "run" / "export")
    from_run = load_model(tmp_path / "run", device="cpu")  # a run folder: its export/
    assert torch.equal(from_run.embed(_images()), backbone.embed(_images()))
    assert load_model(tmp_path / "run", device="cpu", image_size=96).image_size == 96


def test_loading_a_folder_that_is_not_a_model_fails_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="neither a saga model folder"):
        load_model(tmp_path)
    (tmp_path / "saga_model.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a saga export folder"):
        load_model(tmp_path)
