import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from saga.errors import CheckpointError
from saga.train.checkpoint import (capture_rng, complete_checkpoints, config_differences, flatten_optimizer,
                                   latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint,
                                   unflatten_optimizer)


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = torch.optim.AdamW([{"params": list(model[0].parameters()), "name": "a", "base_lr": 0.1, "lr": 0.1},
                             {"params": list(model[1].parameters()), "name": "b", "base_lr": 0.2, "lr": 0.2}])
    return model, opt


def _train(model, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()


def test_optimizer_state_flattens_to_tensors_and_json_and_back():
    model, opt = _model_and_optimizer()
    _train(model, opt, 2)
    tensors, meta = flatten_optimizer(opt.state_dict())
    assert sorted(tensors) == sorted(f"state.{i}.{k}" for i in range(4) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert [g["name"] for g in json.loads(json.dumps(meta))["param_groups"]] == ["a", "b"]
    back = unflatten_optimizer(tensors, json.loads(json.dumps(meta)))
    fresh_model, fresh = _model_and_optimizer(seed=1)
    fresh.load_state_dict(back)
    assert torch.equal(fresh.state_dict()["state"][2]["exp_avg"], opt.state_dict()["state"][2]["exp_avg"])
    assert fresh.param_groups[1]["base_lr"] == 0.2


def test_rng_states_round_trip_through_json():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    tensors, meta = capture_rng()
    expected = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(tensors, json.loads(json.dumps(meta)))
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1]) and random.random() == expected[2]


def test_resumed_training_is_bit_identical(tmp_path):
    model, opt = _model_and_optimizer()
    _train(model, opt, 2)
    save_checkpoint(tmp_path, 2, {"net": model}, opt, {"note": "x"})
    _train(model, opt, 3)  # continues from the RNG state of the checkpoint

    other, other_opt = _model_and_optimizer(seed=7)
    torch.manual_seed(1234)  # whatever happened in between
    state = load_checkpoint(latest_checkpoint(tmp_path), {"net": other}, other_opt)
    assert state["step"] == 2 and state["note"] == "x" and state["modules"] == ["net"]
    _train(other, other_opt, 3)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_save_is_atomic_keeps_the_last_k_and_ignores_tmp_leftovers(tmp_path):
    model, opt = _model_and_optimizer()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"net": model}, opt, {}, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["ckpt-000003", "ckpt-000004"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-000004"
    assert sorted(p.name for p in (tmp_path / "ckpt-000004").iterdir()) == [
        "net.safetensors", "optimizer.json", "optimizer.safetensors", "rng.safetensors", "state.json"]

    # A save killed half-way leaves a .tmp folder (here a newer step, without state.json): never read.
    leftover = tmp_path / "ckpt-000009.tmp"
    leftover.mkdir()
    (leftover / "net.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "ckpt-000004"
    # A folder without state.json is not complete either; a stale pointer falls back to the newest complete one.
    (tmp_path / "ckpt-000008").mkdir()
    (tmp_path / "latest").write_text("ckpt-000008\n")
    assert latest_checkpoint(tmp_path).name == "ckpt-000004"
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "ckpt-000004"
    # The next save removes the leftover.
    save_checkpoint(tmp_path, 5, {"net": model}, opt, {}, keep=2)
    assert not leftover.exists() and latest_checkpoint(tmp_path).name == "ckpt-000005"


def test_missing_file_is_a_checkpoint_error(tmp_path):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, {"net": model}, opt, {})
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ckpt-000001"):
        load_checkpoint(path, {"net": model}, opt)
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_config_differences_name_the_keys():
    saved = {"seed": 0, "optim": {"steps": 10, "lr_encoder": 1e-5}, "grpo": {"beta": 0.0}}
    current = {"seed": 1, "optim": {"steps": 20, "lr_encoder": 1e-5}, "grpo": {"beta": 0.1}}
    assert config_differences(saved, current) == ["grpo.beta: 0.0 -> 0.1", "seed: 0 -> 1"]
    assert config_differences(saved, saved) == []
