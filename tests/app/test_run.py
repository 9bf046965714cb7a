"""End to end: `saga train` on a tiny synthetic world with the tiny random judge (a few steps, CPU)."""

import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from saga.app import run
from saga.app.report import write_report
from saga.app.run import train
from saga.cli import main
from saga.config import load_config
from saga.data import load_dataset
from saga.data.base import Split
from saga.errors import CheckpointError, ConfigError
from saga.eval import evaluate
from saga.judge import FrozenJudge
from saga.models import load_vlm
from saga.train import setup

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
METRIC_KEYS = {"R@1", "R@2", "R@4", "R@8", "MAP@R", "RP", "NMI"}


@pytest.fixture
def text_rewards(monkeypatch):
    """A random tiny judge rarely states a verdict, so every reward would be 0. Read a verdict from the parity of
    each completion's length instead: rewards then vary, and depend on what was sampled."""
    rollout = FrozenJudge.rollout

    def patched(self, enc_out, **kwargs):
        r = rollout(self, enc_out, **kwargs)
        return dataclasses.replace(r, verdicts=[len(t) % 2 == 0 for t in r.texts])

    monkeypatch.setattr(FrozenJudge, "rollout", patched)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_saga_train_command_end_to_end(tiny_overrides, tiny_vlm_dir, tmp_path, monkeypatch, capsys, text_rewards):
    built = []
    monkeypatch.setattr(run, "build_parts", lambda *a: built.append(setup.build_parts(*a)) or built[-1])
    overrides = tiny_overrides("saga", "eval_every=2")
    assert main(["train", "--config", str(CONFIGS / "synth" / "saga.yaml"), *overrides]) == 0
    out = tmp_path / "run"

    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    assert files == {"config.yaml", "environment.json", "metrics.jsonl", "completions.jsonl", "test_metrics.json",
                     "test_embeddings.npz", "checkpoints/latest", "export/encoder.safetensors",
                     "export/pooler.safetensors",
                     "export/preprocessor_config.json", "export/saga_model.json", "export/README.md"} | {
        f"checkpoints/ckpt-00000{s}/{f}" for s in (2, 3) for f in (
            "encoder.safetensors", "pooler.safetensors", "loss.safetensors", "optimizer.safetensors",
            "optimizer.json", "rng.safetensors", "state.json")}
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    cfg = load_config(CONFIGS / "synth" / "saga.yaml", overrides)
    assert load_config(out / "config.yaml") == cfg
    assert {"versions", "git_commit", "python"} <= set(json.loads((out / "environment.json").read_text()))

    # metrics.jsonl: test metrics at 0, 2 and 3; every train step with each loss term and the GRPO diagnostics.
    lines = _lines(out / "metrics.jsonl")
    assert [(d["step"], "loss" in d) for d in lines] == [(0, False), (1, True), (2, True), (2, False), (3, True),
                                                         (3, False)]
    train_line = lines[1]
    assert {"loss", "grpo/loss", "kl/loss", "dml/loss", "reward_mean", "frac_reward_zero_std", "verdict_accuracy",
            "parse_failures", "clipped_ratio", "grpo/completion_length", "lr/encoder", "lr/pooler", "lr/proxies",
            "grad_norm"} <= set(train_line)
    report_curves = inspect.signature(write_report).parameters["curve_keys"].default
    assert set(report_curves) <= set(train_line)  # the report plots what the trainer logs
    weights = cfg.weights
    assert train_line["loss"] == pytest.approx(weights.grpo * train_line["grpo/loss"] + weights.kl *
                                               train_line["kl/loss"] + weights.dml * train_line["dml/loss"], rel=1e-5)
    assert train_line["verdict_accuracy"] == train_line["reward_mean"]  # 0/1 rewards
    rows = _lines(out / "completions.jsonl")  # every step: 2 pairs x 2 completions
    assert [r["step"] for r in rows] == [1] * 4 + [2] * 4 + [3] * 4
    assert all(Path(r["image_a"]).is_file() and r["reward"] in (0.0, 1.0) for r in rows)

    final = json.loads((out / "test_metrics.json").read_text())
    assert set(final) == METRIC_KEYS and json.loads(capsys.readouterr().out) == final
    assert {k: lines[-1][f"test/{k}"] for k in METRIC_KEYS} == final

    # Trainable weights moved; the judge is bit-identical to its checkpoint on disk.
    parts = built[0]
    judge, _ = load_vlm(tiny_vlm_dir, device="cpu")
    for name, value in judge.state_dict().items():
        assert torch.equal(parts.judge.model.state_dict()[name], value), name
    tower = judge.model.visual.state_dict()
    assert any(not torch.equal(v, tower[k]) for k, v in parts.encoder.tower.state_dict().items())
    assert parts.pooler.query.abs().sum() > 0  # starts at zero
    # The exported encoder + pooler reproduce the reported test metrics, through `saga eval --model` and through
    # `saga embed --model` (the training image size is the default of both).
    model = ["--model", str(out / "export"), "--dataset", "synth", "--root", cfg.data.root, "--device", "cpu"]
    assert main(["eval", *model, "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text()) == pytest.approx(final, abs=1e-6)
    # The run's own test_embeddings.npz is what `saga embed --model RUN/export` writes.
    assert main(["embed", *model, "--out", str(tmp_path / "test.npz")]) == 0
    with np.load(tmp_path / "test.npz") as f, np.load(out / "test_embeddings.npz") as g:
        assert set(f.files) == set(g.files) == {"embeddings", "labels", "paths", "model", "model_kind", "image_size"}
        np.testing.assert_allclose(f["embeddings"], g["embeddings"], atol=1e-6)
        assert all(np.array_equal(f[k], g[k]) for k in ("labels", "paths", "model", "model_kind", "image_size"))
        assert evaluate(g["embeddings"], g["labels"], seed=cfg.seed) == pytest.approx(final, abs=1e-6)
        assert g["paths"].tolist() == [str(p) for p in load_dataset("synth", cfg.data.root).test.paths]
    # `saga search` embeds its queries with the model the gallery records: a gallery image finds itself first.
    query = str(load_dataset("synth", cfg.data.root).test.paths[5])
    assert main(["search", query, "--gallery", str(out / "test_embeddings.npz"), "-k", "3", "--json",
                 str(tmp_path / "hits.json")]) == 0
    [hit] = json.loads((tmp_path / "hits.json").read_text())
    assert hit["query"] == query and len(hit["neighbours"]) == 3
    assert hit["neighbours"][0]["path"] == query and hit["neighbours"][0]["similarity"] == pytest.approx(1, abs=1e-5)


def test_baseline_train_command(tiny_overrides, tmp_path):
    assert main(["train", "--config", str(CONFIGS / "synth" / "proxy_anchor.yaml"),
                 *tiny_overrides("proxy_anchor")]) == 0
    out = tmp_path / "run"
    assert not (out / "completions.jsonl").exists()
    lines = _lines(out / "metrics.jsonl")  # the preset evaluates at step 0
    assert lines[0]["step"] == 0 and set(lines[0]) == {"step"} | {f"test/{k}" for k in METRIC_KEYS}
    assert set(lines[1]) == {"step", "loss", "dml/loss", "dml/pos_sim", "dml/neg_sim",
                                                     "grad_norm", "step_seconds", "lr/encoder",
                                                     "lr/encoder_no_decay", "lr/proxies", "skipped_steps"}
    assert json.loads((out / "export" / "saga_model.json").read_text())["pooler"]["name"] == "mean"


class Crash(Exception):
    pass


def test_killed_run_resumes_to_the_same_weights(tiny_config, tmp_path, text_rewards, monkeypatch):
    # With neighbour batches: the resumed run reads their table back instead of recomputing it.
    full = train(tiny_config("saga", "optim.steps=4", "dml.neighbour_classes=1", f"out_dir={tmp_path / 'full'}"))
    cfg = tiny_config("saga", "optim.steps=4", "dml.neighbour_classes=1", f"out_dir={tmp_path / 'killed'}")

    def crash(step):
        if step == 3:  # after the checkpoint of step 2 and one more update
            raise Crash

    with pytest.raises(Crash):
        train(cfg, on_step=crash)
    killed = tmp_path / "killed"
    assert (killed / "checkpoints" / "latest").read_text().strip() == "ckpt-000002"
    leftover = killed / "checkpoints" / "ckpt-000004.tmp"  # as if killed while saving a later checkpoint
    leftover.mkdir()
    (leftover / "encoder.safetensors").write_bytes(b"partial")

    monkeypatch.setattr(run, "class_neighbours", lambda *a, **k: pytest.fail("recomputed on resume"))
    resumed = train(cfg, resume=True)
    assert resumed["test_metrics"] == full["test_metrics"]
    for name in ("encoder", "pooler", "loss", "optimizer"):
        a = load_file(tmp_path / "full" / "checkpoints" / "ckpt-000004" / f"{name}.safetensors")
        b = load_file(killed / "checkpoints" / "ckpt-000004" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name  # bit-identical
    # The logs read as one run: the killed run's step-3 line was replaced, not duplicated.
    def comparable(path):
        return [{k: v for k, v in d.items() if k != "step_seconds"} for d in _lines(path)]

    assert comparable(killed / "metrics.jsonl") == comparable(tmp_path / "full" / "metrics.jsonl")
    assert _lines(killed / "completions.jsonl") == _lines(tmp_path / "full" / "completions.jsonl")
    neighbours = json.loads((killed / "class_neighbours.json").read_text())  # 3 train classes, 1 neighbour each
    assert len(neighbours) == 3 and all(len(v) == 1 and v[0] in neighbours and v[0] != k for k, v in neighbours.items())


def test_neighbour_table_read_back(tmp_path):
    names = {0: "001.a", 1: "002.b", 2: "003.c"}
    split = Split("train", [Path(f"{i}.jpg") for i in names], np.array(list(names)), names)
    table = np.array([[1, 2], [0, 2], [1, 0]])
    path = tmp_path / "class_neighbours.json"
    run._write_neighbours(path, split, table)
    assert np.array_equal(run._read_neighbours(path, split, 2), table)
    with pytest.raises(CheckpointError, match="expected 1 nearest classes"):
        run._read_neighbours(path, split, 1)
    path.write_text('{"001.a": ["002.b"], "002.b": ["999.z"]}')  # an unknown class; 003.c missing
    with pytest.raises(CheckpointError, match=r"class_neighbours.json: not this run's nearest-class table"):
        run._read_neighbours(path, split, 1)
    path.write_text("{")
    with pytest.raises(CheckpointError, match="delete it to recompute it"):
        run._read_neighbours(path, split, 1)


def test_resume_errors(tiny_config, tiny_overrides, tmp_path, capsys):
    cfg = tiny_config("proxy_anchor", "optim.steps=2")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        train(cfg, resume=True)
    train(cfg)
    with pytest.raises(ConfigError, match="pass --resume"):
        train(cfg)
    with pytest.raises(ConfigError, match=r"dml.margin: None -> 0.2; optim.lr_encoder: 0.001 -> 0.002$"):
        train(tiny_config("proxy_anchor", "optim.steps=2", "dml.margin=0.2", "optim.lr_encoder=2e-3"), resume=True)
    # Through the command line: the same error, without a traceback.
    assert main(["train", "--config", str(CONFIGS / "synth" / "proxy_anchor.yaml"), *tiny_overrides("proxy_anchor"),
                 "seed=5", "--resume"]) == 2
    assert "seed: 0 -> 5" in capsys.readouterr().err
    # optim.steps may change: the run continues to the new end. A key the checkpoint's config lacks (saved before
    # the key existed) counts as its default.
    state_file = tmp_path / "run" / "checkpoints" / "ckpt-000002" / "state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["dml"]["neighbour_classes"]
    state_file.write_text(json.dumps(state))
    assert train(tiny_config("proxy_anchor", "optim.steps=3"), resume=True)["steps"] == 3
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["optim"]["steps"] == 3 and json.loads(
        (tmp_path / "run" / "checkpoints" / "ckpt-000003" / "state.json").read_text())["step"] == 3


@pytest.mark.parametrize("option", ["grpo.attribute_reward=1.0", "weights.attribute_nll=1.0"])
def test_class_attribute_options_need_a_dataset_with_class_attributes(option, tiny_config, synth_world):
    # The synthetic world's images read as a plain image folder: the same classes, but no attributes.
    cfg = tiny_config("saga", option, "data.dataset=folder", f"data.root={synth_world / 'images'}")
    with pytest.raises(ConfigError, match="weights.attribute_nll need per-class attributes.*'folder'"):
        train(cfg)
