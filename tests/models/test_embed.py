import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from saga.cli import main
from saga.data.base import Split, load_image
from saga.errors import DataError
from saga.models import (AttentionPooler, ImagePreprocessor, MeanPooler, RetrievalModel, VisionEncoder, embed_split,
                         load_vlm)


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    """4 classes x 3 images of 48 px in the folder layout: classes c0, c1 train, c2, c3 test."""
    root = tmp_path_factory.mktemp("folder_ds")
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"c{c}").mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def split(folder_dataset):
    paths = sorted(folder_dataset.glob("c[23]/*.png"))
    return Split("test", paths, np.array([2, 2, 2, 3, 3, 3]), {2: "c2", 3: "c3"})


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    return load_vlm(tiny_vlm_dir, device="cpu")


def _one_by_one(encoder, pooler, processor, split, image_size):
    """The reference: each image alone through encoder and pooler, then L2-normalised."""
    pre = ImagePreprocessor(processor, image_size)
    rows = []
    with torch.no_grad():
        for path in split.paths:
            inputs = pre([load_image(path)])
            tokens, mask = encoder(inputs["pixel_values"], inputs["image_grid_thw"]).padded()
            rows.append(F.normalize(pooler(tokens, mask).embedding, dim=-1)[0])
    return torch.stack(rows).numpy()


def test_backbone_embeddings_are_normalised_mean_pooled_tokens(tiny_vlm_dir, split, vlm):
    res = embed_split(RetrievalModel.from_backbone(tiny_vlm_dir, image_size=64, device="cpu"), split, batch_size=4)
    width = vlm[0].config.text_config.hidden_size
    assert res.embeddings.shape == (6, width) and res.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(res.embeddings, axis=1), 1, atol=1e-5)
    assert res.labels.tolist() == [2, 2, 2, 3, 3, 3] and res.labels.dtype == np.int64
    assert res.paths == [str(p) for p in split.paths]
    assert res.images_per_s > 0
    encoder = VisionEncoder.from_vlm(vlm[0])
    reference = _one_by_one(encoder, MeanPooler(), vlm[1], split, 64)  # MeanPooler is checked by hand elsewhere
    np.testing.assert_allclose(res.embeddings, reference, atol=1e-5)


def test_trained_encoder_and_pooler_path(split, vlm):
    model, processor = vlm
    encoder = VisionEncoder.from_vlm(model).train()
    torch.manual_seed(0)
    pooler = AttentionPooler(encoder.out_dim, num_heads=2, embed_dim=16).train()
    torch.nn.init.normal_(pooler.query)
    res = embed_split(RetrievalModel(encoder, pooler, ImagePreprocessor(processor, 128)), split, batch_size=5)
    assert res.embeddings.shape == (6, 16)
    assert encoder.training and pooler.training  # modes restored
    reference = _one_by_one(encoder.eval(), pooler.eval(), processor, split, 128)
    np.testing.assert_allclose(res.embeddings, reference, atol=1e-5)


def test_empty_split_and_missing_image(tmp_path, tiny_vlm_dir):
    model = RetrievalModel.from_backbone(tiny_vlm_dir, image_size=64, device="cpu")
    with pytest.raises(DataError, match="no images"):
        embed_split(model, Split("test", [], np.array([]), {}))
    broken = Split("test", [tmp_path / "gone.png"], np.array([0]), {0: "a"})
    with pytest.raises(DataError, match="gone.png"):
        embed_split(model, broken)


def test_cli_embed(tiny_vlm_dir, folder_dataset, tmp_path, capsys):
    out = tmp_path / "emb" / "test.npz"
    code = main(["embed", "--backbone", str(tiny_vlm_dir), "--dataset", "folder", "--root", str(folder_dataset),
                 "--image-size", "64", "--batch-size", "4", "--device", "cpu", "--out", str(out)])
    assert code == 0 and "6 x 128" in capsys.readouterr().out
    with np.load(out) as f:
        assert f["embeddings"].shape == (6, 128) and f["labels"].tolist() == [2, 2, 2, 3, 3, 3]
        assert len(f["paths"]) == 6
        assert (f["model"].item(), f["model_kind"].item(), f["image_size"].item()) == (str(tiny_vlm_dir),
                                                                                       "backbone", 64)
        paths = f["paths"].tolist()

    # Queries are embedded by the backbone and image size the gallery records.
    code = main(["search", paths[4], paths[0], "--gallery", str(out), "-k", "2", "--device", "cpu"])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0 and printed[0] == paths[4] and printed[3] == paths[0]
    assert printed[1].split()[1:] == ["1.0000", "label", "3", paths[4]]
    assert printed[4].split()[1:] == ["1.0000", "label", "2", paths[0]]


def test_cli_eval_backbone(tiny_vlm_dir, folder_dataset, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    code = main(["eval", "--backbone", str(tiny_vlm_dir), "--dataset", "folder", "--root", str(folder_dataset),
                 "--image-size", "64", "--device", "cpu", "--json", str(metrics)])
    printed = capsys.readouterr().out
    assert code == 0 and "embedded 6 images" in printed and "R@1" in printed
    assert metrics.is_file()


def test_cli_reports_a_bad_backbone(folder_dataset, tmp_path, capsys):
    code = main(["embed", "--backbone", str(tmp_path / "missing"), "--dataset", "folder", "--root",
                 str(folder_dataset), "--device", "cpu", "--out", str(tmp_path / "x.npz")])
    assert code == 2 and "no such model directory" in capsys.readouterr().err


def test_cli_search_needs_to_know_the_gallery_model(tmp_path, capsys):
    np.savez(tmp_path / "bare.npz", embeddings=np.eye(3, dtype=np.float32), labels=np.arange(3))
    with pytest.raises(SystemExit, match="does not say what embedded it"):
        main(["search", "q.png", "--gallery", str(tmp_path / "bare.npz")])


def test_cli_needs_one_model(folder_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit, match="give --backbone or --model"):
        main(["eval", "--dataset", "folder", "--root", str(folder_dataset)])
    code = main(["embed", "--model", str(tmp_path), "--dataset", "folder", "--root", str(folder_dataset),
                 "--device", "cpu", "--out", str(tmp_path / "x.npz")])
    assert code == 2 and "neither a saga model folder" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
