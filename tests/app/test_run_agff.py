"""End to end: `saga train` of AGFF-Embed (method agff) on the tiny synthetic world with the tiny random MLLM, then
the trained model through `saga eval / embed / search / export --model`, and a killed run resumed to the same
weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saga.app.run import train
from saga.cli import main
from saga.config import load_config
from saga.data import load_dataset
from saga.models import AgffModel, load_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
METRIC_KEYS = {"R@1", "R@2", "R@4", "R@8", "MAP@R", "RP", "NMI"}
CKPT_FILES = ("adapters.safetensors", "fusion.safetensors", "loss.safetensors", "optimizer.safetensors",
              "optimizer.json", "rng.safetensors", "state.json")


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_agff_train_command_end_to_end(tiny_overrides, tiny_vlm_dir, tmp_path, capsys):
    overrides = tiny_overrides("agff", "eval_every=0")
    assert main(["train", "--config", str(CONFIGS / "synth" / "agff.yaml"), *overrides]) == 0
    out = tmp_path / "run"
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    assert files == {"config.yaml", "environment.json", "metrics.jsonl", "test_metrics.json", "test_embeddings.npz",
                     "checkpoints/latest", "export/adapters.safetensors", "export/fusion.safetensors",
                     "export/preprocessor_config.json", "export/saga_model.json", "export/README.md"} | {
        f"checkpoints/ckpt-00000{s}/{f}" for s in (2, 3) for f in CKPT_FILES}
    cfg = load_config(CONFIGS / "synth" / "agff.yaml", overrides)
    assert cfg.method == "agff" and load_config(out / "config.yaml") == cfg

    lines = _lines(out / "metrics.jsonl")
    assert [(d["step"], "loss" in d) for d in lines] == [(1, True), (2, True), (3, True), (3, False)]
    assert {"loss", "dml/loss", "dml/pos_sim", "dml/neg_sim", "dml/violations", "dml/gain", "fusion_entropy",
            "fusion_max_weight", "prompt_cosine", "lr/encoder", "lr/pooler", "grad_norm"} <= set(lines[0])
    assert lines[0]["fusion_entropy"] == pytest.approx(np.log(11), abs=1e-3)  # 11 prompts, uniform at the start
    final = json.loads((out / "test_metrics.json").read_text())
    assert set(final) == METRIC_KEYS and json.loads(capsys.readouterr().out) == final

    # Checkpoints and the export hold the MLLM's trained tensors only (LoRA adapters), never its base weights.
    adapters = load_file(out / "checkpoints" / "ckpt-000003" / "adapters.safetensors")
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    assert adapters.keys() == load_file(out / "export" / "adapters.safetensors").keys()
    manifest = json.loads((out / "export" / "saga_model.json").read_text())
    assert manifest["format"] == "saga-agff/1" and manifest["base"]["checkpoint"] == str(tiny_vlm_dir.resolve())
    assert manifest["run"]["test_metrics"] == final and len(manifest["prompts"]) == 11
    assert isinstance(load_model(out, device="cpu"), AgffModel)

    # `saga eval --model` reproduces the run's test metrics, from the export and from the run folder.
    model = ["--dataset", "synth", "--root", cfg.data.root, "--device", "cpu"]
    for target in (out / "export", out):
        assert main(["eval", "--model", str(target), *model, "--json", str(tmp_path / "eval.json")]) == 0
        assert json.loads((tmp_path / "eval.json").read_text()) == pytest.approx(final, abs=1e-6)
    assert main(["embed", "--model", str(out), *model, "--out", str(tmp_path / "test.npz")]) == 0
    with np.load(tmp_path / "test.npz") as f, np.load(out / "test_embeddings.npz") as g:
        np.testing.assert_allclose(f["embeddings"], g["embeddings"], atol=1e-6)
    # `saga search` embeds the queries with the model the gallery records: a gallery image finds itself first.
    query = str(load_dataset("synth", cfg.data.root).test.paths[5])
    assert main(["search", query, "--gallery", str(out / "test_embeddings.npz"), "-k", "2", "--json",
                 str(tmp_path / "hits.json")]) == 0
    [hit] = json.loads((tmp_path / "hits.json").read_text())
    assert hit["neighbours"][0]["path"] == query and hit["neighbours"][0]["similarity"] == pytest.approx(1, abs=1e-5)
    # `saga export`: the same folder elsewhere; ONNX is refused with a reason
    assert main(["export", str(out), "--out", str(tmp_path / "exported")]) == 0
    assert isinstance(load_model(tmp_path / "exported", device="cpu"), AgffModel)
    assert main(["export", str(out), "--out", str(tmp_path / "onnx"), "--format", "onnx"]) == 2
    assert "keeps the MLLM" in capsys.readouterr().err


class Crash(Exception):
    pass


@pytest.mark.parametrize("trainable", ["lora", "modules"])
def test_killed_agff_run_resumes_to_the_same_weights(tiny_config, tmp_path, trainable):
    more = ("optim.steps=4", f"agff.trainable={trainable}", "agff.train_modules=[model.language_model.layers.1]",
            "agff.aspects=[crest, bill_shape]")
    full = train(tiny_config("agff", *more, f"out_dir={tmp_path / 'full'}"))
    cfg = tiny_config("agff", *more, f"out_dir={tmp_path / 'killed'}")

    def crash(step):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, on_step=crash)
    resumed = train(cfg, resume=True)
    assert resumed["test_metrics"] == full["test_metrics"]
    for name in ("adapters", "fusion", "loss", "optimizer"):
        a = load_file(tmp_path / "full" / "checkpoints" / "ckpt-000004" / f"{name}.safetensors")
        b = load_file(tmp_path / "killed" / "checkpoints" / "ckpt-000004" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name  # bit-identical
    adapters = load_file(tmp_path / "full" / "checkpoints" / "ckpt-000004" / "adapters.safetensors")
    if trainable == "modules":  # the named module's tensors, and only those
        assert adapters and all(k.startswith("model.language_model.layers.1.") for k in adapters)
    # the trained tensors moved away from the base checkpoint's (LoRA: B left zero)
    base = load_model(tmp_path / "full", device="cpu")
    assert len(base.prompts) == 3 and any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_A" not in k)
