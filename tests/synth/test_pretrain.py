import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from saga.cli import build_parser
from saga.errors import ConfigError
from saga.models import load_vlm
from saga.synth.pairs import PairInputs
from saga.synth.pretrain import (JUDGE_PRESETS, JudgePreset, _lr_factor, build_judge, pretrain_judge, warm_up_reading,
                                 warm_up_vision)

# A minuscule judge: 64 px images (4 tokens each), one vision block, one text layer; a few steps of each stage.
MINI = JudgePreset(
    base="tiny",
    vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                   "num_position_embeddings": 16, "deepstack_visual_indexes": [0]},
    text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "num_key_value_heads": 1, "head_dim": 32, "mrope_section": [6, 5, 5]},
    vocab_size=600, image_size=64, steps=25, batch_size=4, lr=5e-3, warmup=3,
    reading_steps=3, reading_batch_size=4, vision_steps=4, vision_batch_size=4, vision_ramp=2)


def test_lr_schedule():
    assert _lr_factor(0, 10, 100) == pytest.approx(0.1) and _lr_factor(9, 10, 100) == 1.0
    assert _lr_factor(10, 10, 100) == pytest.approx(1.0) and _lr_factor(100, 10, 100) == pytest.approx(0.1)
    assert _lr_factor(55, 10, 100) == pytest.approx(0.55)  # half-way through the decay: 0.1 + 0.9 / 2


def test_unknown_preset_and_save_dtype():
    with pytest.raises(ConfigError, match="unknown judge preset"):
        pretrain_judge("unused", preset="huge")
    with pytest.raises(ConfigError, match="save_dtype"):
        pretrain_judge("unused", preset=MINI, save_dtype="float16")


def test_cli_offers_every_preset():
    for name in JUDGE_PRESETS:
        assert build_parser().parse_args(["judge", "pretrain", "--out", "x", "--preset", name]).preset == name


def _changed(model, before):
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def test_stage_zero_trains_only_the_llm_on_text():
    model, processor = build_judge(MINI)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = warm_up_reading(model, processor, MINI, seed=0, device=torch.device("cpu"))
    assert stats["reading_steps"] == 3 and np.isfinite(stats["reading_final_loss"])
    changed = _changed(model, before)
    assert changed and not any(k.startswith("model.visual.") for k in changed)


def test_stage_one_trains_the_tower_and_only_the_tower():
    model, processor = build_judge(MINI)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = warm_up_vision(model, processor, MINI, seed=0, device=torch.device("cpu"), workers=0)
    assert stats["vision_steps"] == 4 and 0.0 <= stats["vision_final_attribute_accuracy"] <= 1.0
    changed = _changed(model, before)
    assert changed and all(k.startswith("model.visual.") for k in changed)


def test_pretrain_writes_a_loadable_judge_whose_loss_decreased(tmp_path):
    summary = pretrain_judge(tmp_path / "judge", preset=MINI, seed=0, device="cpu", workers=0,
                             save_dtype="bfloat16")
    assert summary["steps"] == 25 and summary["final_loss"] < 0.7 * summary["initial_loss"]
    assert {t.dtype for t in load_file(tmp_path / "judge" / "model.safetensors").values()} == {torch.bfloat16}
    assert summary["reading_steps"] == 3 and summary["vision_steps"] == 4
    saved = json.loads((tmp_path / "judge" / "pretrain.json").read_text())
    assert saved["final_loss"] == summary["final_loss"] and saved["image_size"] == 64
    assert saved["command"].startswith("saga judge pretrain --out ") and "versions" in saved["environment"]
    assert saved["excluded_world"] == {"num_classes": 200, "seed": 0}
    assert (tmp_path / "judge" / "generation_config.json").is_file()
    assert saved["command"].endswith("--save-dtype bfloat16")
    model, processor = load_vlm(tmp_path / "judge", device="cpu")
    assert sum(p.numel() for p in model.parameters()) == summary["parameters"]
    assert model.dtype == torch.float32  # a CPU judge computes in float32 whatever it was saved in
    batch = PairInputs(processor, 64)([Image.new("RGB", (64, 64))] * 2)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 4


@pytest.mark.parametrize("name", sorted(JUDGE_PRESETS))
def test_every_preset_builds_and_takes_a_step_of_each_stage(name, tmp_path):
    """Each preset's real geometry (the `small` one has not run on a GPU yet): one step per stage, saved in bfloat16.
    The small judge must stay small enough to travel between GPU sessions (64 MiB carried in all)."""
    spec = dataclasses.replace(JUDGE_PRESETS[name], steps=1, reading_steps=1, vision_steps=1, warmup=1, batch_size=2,
                               reading_batch_size=2, vision_batch_size=2)
    summary = pretrain_judge(tmp_path / "judge", preset=spec, device="cpu", workers=0, save_dtype="bfloat16")
    assert np.isfinite(summary["final_loss"]) and np.isfinite(summary["reading_final_loss"])
    weights = (tmp_path / "judge" / "model.safetensors").stat().st_size
    if name == "small":
        assert 13e6 < summary["parameters"] < 15e6 and 10e6 < summary["vision_parameters"] < 11e6
        assert weights < 32 * 2**20
