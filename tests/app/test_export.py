"""`saga export RUN --out DIR`: a model folder that loads with nothing else of the run present."""

import json
import shutil

import numpy as np
import torch
from PIL import Image

import saga
from saga.cli import main


def _images(n=3):
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)) for _ in range(n)]


def test_export_a_run_as_safetensors_and_onnx(tiny_overrides, tmp_path, capsys):
    from saga.deploy.onnx_runtime import OnnxRetrievalModel

    assert main(["train", "--config", "configs/synth/proxy_anchor.yaml", *tiny_overrides("proxy_anchor")]) == 0
    run = tmp_path / "run"
    expected = saga.load_model(run, device="cpu").embed(_images())

    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    shutil.rmtree(run)  # nothing of the run is needed any more

    model = saga.load_model(tmp_path / "model", device="cpu")
    assert torch.equal(model.embed(_images()), expected)
    card = (tmp_path / "model" / "README.md").read_text()
    metrics = json.loads((tmp_path / "model" / "saga_model.json").read_text())["run"]["test_metrics"]
    assert "R@1" in card and set(metrics) >= {"R@1", "MAP@R", "NMI"} and "proxy_anchor" in card
    onnx = OnnxRetrievalModel.from_pretrained(tmp_path / "onnx").embed(_images())
    assert np.abs(onnx - expected.numpy()).max() <= 1e-4


def test_export_errors_name_the_folder(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert str(tmp_path) in capsys.readouterr().err
