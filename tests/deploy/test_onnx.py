"""ONNX export of the retrieval model and torch-free inference with ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from saga.deploy import onnx_export
from saga.deploy.onnx_runtime import OnnxPreprocessor, OnnxRetrievalModel, main, read_config
from saga.errors import CheckpointError, DataError
from saga.models.poolers import AttentionPooler
from saga.models.preprocess import ImagePreprocessor
from saga.models.retrieval import RetrievalModel

TOL = 1e-4


@pytest.fixture(scope="module")
def mean_model(tiny_vlm_dir) -> RetrievalModel:
    return RetrievalModel.from_backbone(tiny_vlm_dir, image_size=64, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def attention_model(mean_model) -> RetrievalModel:
    """The same tower with an attention pooler and a projection, its queries away from their (uniform) start."""
    torch.manual_seed(0)
    pooler = AttentionPooler(mean_model.encoder.out_dim, num_heads=2, embed_dim=16)
    with torch.no_grad():
        pooler.query.normal_(0, 2.0)
    return RetrievalModel(mean_model.encoder, pooler, mean_model.preprocessor).eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory, mean_model, attention_model) -> dict:
    """{name: (model as exported, export folder, returned manifest)}. The attention model is exported at 96 px
    (not its 64) and with its weights in model.onnx.data, to cover both options."""
    out = {}
    folder = tmp_path_factory.mktemp("onnx_mean")
    out["mean"] = (mean_model, folder, onnx_export.export_onnx(mean_model, folder))
    folder = tmp_path_factory.mktemp("onnx_attention")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
        manifest = onnx_export.export_onnx(attention_model, folder, image_size=96)
    resized = RetrievalModel(attention_model.encoder, attention_model.pooler,
                             ImagePreprocessor(attention_model.preprocessor.image_processor, 96)).eval()
    out["attention"] = (resized, folder, manifest)
    return out


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Images of assorted sizes and modes (RGB, RGBA, greyscale; PNG and JPEG), one in a subfolder."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("onnx_images")
    (root / "sub").mkdir()
    # (height, width, channels): 4 channels give RGBA, none greyscale.
    specs = {"a.png": (50, 70, 3), "b.jpg": (128, 96, 3), "c.png": (64, 64, 4), "sub/d.png": (33, 140),
             "e.jpeg": (200, 180, 3)}
    for name, shape in specs.items():
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image, skipped")
    (root / ".hidden.png").write_bytes(b"skipped too")
    return root


def image_files(root) -> list:
    return sorted(p for p in root.rglob("*") if p.suffix in {".png", ".jpg", ".jpeg"} and not p.name.startswith("."))


@pytest.mark.parametrize("name", ["mean", "attention"])
def test_export_writes_a_checked_graph(exports, name):
    _, folder, manifest = exports[name]
    assert manifest["check"]["max_abs_diff"] <= TOL
    assert manifest["check"]["images"] == 4
    assert json.loads((folder / "saga_onnx.json").read_text()) == manifest
    assert manifest["format"] == "saga-onnx/1"
    assert (manifest["image_size"], manifest["embed_dim"]) == ({"mean": 64, "attention": 96}[name],
                                                               {"mean": 128, "attention": 16}[name])
    assert not (folder / ".onnx-export.tmp").exists()
    assert (folder / "model.onnx.data").exists() == (name == "attention")


def test_graph_has_a_dynamic_batch(exports):
    import onnx

    graph = onnx.load(str(exports["mean"][1] / "model.onnx"), load_external_data=False).graph
    (image,), (embedding,) = graph.input, graph.output
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", 3, 64, 64]
    assert [d.dim_param or d.dim_value for d in embedding.type.tensor_type.shape.dim] == ["batch", 128]


@pytest.mark.parametrize("name", ["mean", "attention"])
def test_onnx_runtime_matches_torch(exports, image_dir, name):
    model, folder, _ = exports[name]
    paths = image_files(image_dir)
    expected = model.embed(paths).numpy()
    runtime = OnnxRetrievalModel.from_pretrained(folder)
    for batch_size in (1, 2, 32):  # batches of 1, of 2 with a last one of 1, all 5 at once
        got = runtime.embed(paths, batch_size=batch_size)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert runtime.embed([]).shape == (0, expected.shape[1])


@pytest.mark.parametrize("name", ["mean", "attention"])
def test_numpy_preprocessing_gives_the_image_preprocessor_pixels(exports, image_dir, name):
    model, folder, _ = exports[name]
    images = [Image.open(p) for p in image_files(image_dir)]  # unconverted: RGBA and L too
    expected = model.preprocessor(images)
    squares = OnnxPreprocessor.from_config(read_config(folder))(images)
    # The graph's first step turns them into the processor's packed patches.
    patches = onnx_export._BatchedTower(model).patchify(torch.from_numpy(squares))
    assert torch.equal(patches, expected["pixel_values"])
    grid = model.image_size // 16
    assert expected["image_grid_thw"].tolist() == [[1, grid, grid]] * len(images)


def test_torch_free_command_line(exports, image_dir, tmp_path):
    """`python -m saga.deploy.onnx_runtime` with torch made unimportable embeds a folder like torch does."""
    model, folder, _ = exports["attention"]
    out = tmp_path / "emb.npz"
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        sys.argv = ["onnx_runtime", {str(folder)!r}, {str(image_dir)!r}, "--out", {str(out)!r}, "--batch-size", "2"]
        try:
            runpy.run_module("saga.deploy.onnx_runtime", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
        loaded = [name for name in ("torch", "transformers", "safetensors") if sys.modules.get(name) is not None]
        assert not loaded, loaded
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with np.load(out, allow_pickle=False) as f:
        embeddings, paths = f["embeddings"], f["paths"]
    assert paths.tolist() == [str(p) for p in image_files(image_dir)]
    assert np.abs(embeddings - model.embed(paths.tolist()).numpy()).max() <= TOL


def test_bad_image_in_folder_names_the_file(exports, image_dir, tmp_path, capsys):
    bad = tmp_path / "imgs"
    bad.mkdir()
    Image.open(image_files(image_dir)[0]).save(bad / "good.png")
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    folder = exports["mean"][1]
    assert main([str(folder), str(bad), "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("saga: error: ") and str(bad / "broken.jpg") in err and "cannot read image" in err
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(DataError, match="broken.jpg"):
        OnnxRetrievalModel.from_pretrained(folder).embed([bad / "good.png", bad / "broken.jpg"])


def test_missing_inputs_are_named(exports, tmp_path, capsys):
    folder = exports["mean"][1]
    (tmp_path / "empty").mkdir()
    assert main([str(folder), str(tmp_path / "empty"), "--out", str(tmp_path / "x.npz")]) == 2
    assert f"{tmp_path / 'empty'}: folder holds no image files" in capsys.readouterr().err
    assert main([str(folder), str(tmp_path / "nope.png"), "--out", str(tmp_path / "x.npz")]) == 2
    assert f"{tmp_path / 'nope.png'}: image file does not exist" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="saga_onnx.json"):
        OnnxRetrievalModel.from_pretrained(tmp_path / "empty")


def test_failed_check_writes_nothing(mean_model, tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("other files of the folder stay")
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # no difference passes
    mean_model.train()
    try:
        with pytest.raises(CheckpointError, match="failed its check"):
            onnx_export.export_onnx(mean_model, tmp_path, check_images=1)
        assert all(module.training for module in mean_model.modules())  # its modes are restored
    finally:
        mean_model.eval()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
