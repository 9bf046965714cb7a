import pytest
import torch

from saga.errors import CheckpointError
from saga.judge import FrozenJudge
from saga.models import load_vlm


def test_load_freezes_every_parameter_in_eval_mode(tiny_vlm_dir):
    judge = FrozenJudge.load(tiny_vlm_dir, device="cpu")
    assert not any(p.requires_grad for p in judge.model.parameters())
    assert not judge.model.training and not any(m.training for m in judge.model.modules())
    assert judge.tokenizer is judge.processor.tokenizer and judge.device == torch.device("cpu")
    assert judge.dataset == "synth"
    judge.assert_frozen()


def test_gradient_checkpointing_keeps_train_mode(tiny_vlm_dir):
    judge = FrozenJudge.load(tiny_vlm_dir, device="cpu", gradient_checkpointing=True, dataset="cars")
    assert judge.model.training and all(m.training for m in judge.model.modules())
    assert all(layer.gradient_checkpointing for layer in judge.model.model.language_model.layers)
    assert judge.model.config.text_config.attention_dropout == 0.0  # train mode changes no output
    assert judge.dataset == "cars"
    judge.assert_frozen()


def test_wrapping_a_loaded_model_freezes_it(tiny_vlm_dir):
    model, processor = load_vlm(tiny_vlm_dir, device="cpu")
    assert all(p.requires_grad for p in model.parameters())
    judge = FrozenJudge(model, processor)
    assert judge.model is model and not any(p.requires_grad for p in model.parameters())


def test_assert_frozen_names_the_trainable_parameters(tiny_vlm_dir):
    judge = FrozenJudge.load(tiny_vlm_dir, device="cpu")
    judge.model.lm_head.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="1 parameters require grad: \\['lm_head.weight'\\]"):
        judge.assert_frozen()


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        FrozenJudge.load(tmp_path, device="cpu")
