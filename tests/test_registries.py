"""Every user choice by name is one registry; every entry of each registry builds and works, and the config's and
the CLI's choices are the registries' names."""

import dataclasses

import torch

from saga.cli import build_parser
from saga.config import choices
from saga.data import DATASETS, ImageDataset, load_dataset
from saga.losses import DML_LOSSES, build_dml_loss
from saga.models import POOLERS, build_pooler
from saga.synth.presets import JUDGE_PRESETS
from saga.synth.pretrain import build_judge
from saga.train import METHODS, build_parts, combine
from saga.train.batches import StepBatches
from saga.train.methods import Batch


def test_config_and_cli_choices_are_the_registries_names():
    allowed = choices()
    assert allowed["method"] == METHODS.names() == ("saga", "proxy_anchor", "potential_field", "agff")
    assert allowed["data.dataset"] == DATASETS.names()
    assert allowed["model.pooler"] == ("auto", *POOLERS.names())
    assert allowed["dml.loss"] == ("auto", *DML_LOSSES.names())
    sub = {a.dest: a for a in build_parser()._subparsers._group_actions}["command"].choices
    assert tuple(sub["data"]._subparsers._group_actions[0].choices["info"]._option_string_actions["--dataset"]
                 .choices) == DATASETS.names()
    pretrain = sub["judge"]._subparsers._group_actions[0].choices["pretrain"]
    assert tuple(pretrain._option_string_actions["--preset"].choices) == JUDGE_PRESETS.names()


def test_every_method_builds_and_takes_a_step(tiny_config):
    for name, method in METHODS.items():
        cfg = tiny_config(name)
        split = load_dataset("synth", cfg.data.root).train
        parts = build_parts(cfg, split, torch.device("cpu"))
        assert (parts.judge is not None) == method.needs_judge
        ids = StepBatches(split.labels, m=2, batch_size=6, seed=0).batch(0)
        images, labels = zip(*(ImageDataset(split)[i] for i in ids), strict=True)
        batch = Batch(parts.preprocessor(images), torch.tensor(labels), [str(split.paths[i]) for i in ids])
        loss, _ = combine(method.step(parts, cfg, batch, 0).terms, cfg.weights)
        loss.backward()
        assert torch.isfinite(loss) and any(p.grad is not None for p in parts.encoder.parameters()), name


def test_every_dml_loss_and_pooler_builds_and_computes():
    torch.manual_seed(0)
    embeddings, labels = torch.randn(6, 8, requires_grad=True), torch.tensor([0, 0, 1, 1, 2, 2])
    for name in DML_LOSSES:
        build_dml_loss(name, 3, 8)(embeddings, labels)["loss"].backward()
        assert embeddings.grad.abs().sum() > 0, name
        embeddings.grad = None
    tokens, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    for name in POOLERS:
        assert build_pooler(name, 8)(tokens, mask).embedding.shape == (2, 8), name


def test_every_judge_preset_builds():
    for name, preset in JUDGE_PRESETS.items():
        model, processor = build_judge(dataclasses.replace(preset, image_size=64))
        assert model.config.model_type == "qwen3_vl" and processor.tokenizer is not None, name
