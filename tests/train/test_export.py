import json

import numpy as np
import pytest
import torch
from PIL import Image

from saga.data import load_dataset
from saga.errors import CheckpointError
from saga.models import AttentionPooler
from saga.train import export_model, load_trained
from saga.train.setup import build_parts


def _embed(encoder, pooler, preprocessor, images):
    with torch.no_grad():
        tokens, mask = encoder(**preprocessor(images)).padded()
        return pooler(tokens, mask).embedding


@pytest.mark.parametrize(("method", "extra"), [("saga", ["model.embed_dim=16", "model.pooler_heads=2"]),
                                               ("proxy_anchor", [])])
def test_export_round_trip_gives_the_same_embeddings(tiny_config, tmp_path, method, extra):
    cfg = tiny_config(method, *extra)
    parts = build_parts(cfg, load_dataset("synth", cfg.data.root).train, torch.device("cpu"))
    with torch.no_grad():  # move every weight away from its initial value, so a load that skipped one shows
        for p in [*parts.encoder.parameters(), *parts.pooler.parameters()]:
            p.add_(0.01 * torch.randn_like(p))
    out = export_model(tmp_path / "export", parts.encoder, parts.pooler, parts.preprocessor, {"method": cfg.method})

    encoder, pooler, preprocessor = load_trained(out)
    assert not encoder.training and not pooler.training and preprocessor.side == 64
    assert type(pooler) is type(parts.pooler)
    if isinstance(pooler, AttentionPooler):
        assert pooler.num_heads == 2 and pooler.proj.out_features == 16
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)) for _ in range(3)]
    parts.encoder.eval()
    expected = _embed(parts.encoder, parts.pooler, parts.preprocessor, images)
    assert torch.equal(_embed(encoder, pooler, preprocessor, images), expected)
    assert json.loads((out / "saga_model.json").read_text())["run"] == {"method": cfg.method}


def test_loading_a_folder_that_is_not_an_export_fails_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not a saga export folder"):
        load_trained(tmp_path)
