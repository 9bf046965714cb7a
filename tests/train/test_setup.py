import pytest
import torch

from saga.data import load_dataset
from saga.errors import ConfigError
from saga.models import AttentionPooler, MeanPooler, build_tiny_qwen3vl
from saga.train.setup import assert_frozen_judge, build_parts, dml_name, lr_factor, pooler_name


def _build(cfg):
    return build_parts(cfg, load_dataset("synth", cfg.data.root).train, torch.device("cpu"))


def test_lr_warmup_by_hand():
    assert [lr_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0) == 1.0


def test_method_decides_pooler_and_dml_loss(tiny_config):
    assert pooler_name(tiny_config("saga")) == "attention" and dml_name(tiny_config("saga")) == "proxy_anchor"
    assert pooler_name(tiny_config("potential_field")) == "mean"
    assert dml_name(tiny_config("potential_field")) == "potential_field"
    assert dml_name(tiny_config("saga", "dml.loss=potential_field")) == "potential_field"
    assert pooler_name(tiny_config("proxy_anchor", "model.pooler=attention")) == "attention"
    with pytest.raises(ConfigError, match="conflicts"):
        dml_name(tiny_config("proxy_anchor", "dml.loss=potential_field"))


def test_saga_parameter_groups_and_frozen_judge(tiny_config):
    parts = _build(tiny_config("saga"))  # lr_encoder 1e-3, lr_pooler 1e-2, proxies x 10
    groups = {g["name"]: g for g in parts.optimizer.param_groups}
    assert list(groups) == ["encoder", "encoder_no_decay", "pooler", "pooler_no_decay", "proxies"]
    assert [groups[n]["lr"] for n in groups] == pytest.approx([1e-3, 1e-3, 1e-2, 1e-2, 1e-2])
    assert [groups[n]["weight_decay"] for n in groups] == [1e-4, 0.0, 1e-4, 0.0, 0.0]
    assert all(p.ndim >= 2 for p in groups["encoder"]["params"] + groups["pooler"]["params"])
    assert all(p.ndim < 2 for p in groups["encoder_no_decay"]["params"] + groups["pooler_no_decay"]["params"])
    optimised = {id(p) for g in groups.values() for p in g["params"]}
    expected = [*parts.encoder.parameters(), *parts.pooler.parameters(), *parts.dml_loss.parameters()]
    assert optimised == {id(p) for p in expected} and len(optimised) == len(expected)
    assert isinstance(parts.pooler, AttentionPooler) and parts.reference is None
    # The encoder starts as an exact copy of the judge's own tower, in separate storage.
    judge_tower = dict(parts.judge.model.model.visual.named_parameters())
    for name, p in parts.encoder.tower.named_parameters():
        assert torch.equal(p, judge_tower[name]) and p.data_ptr() != judge_tower[name].data_ptr()

    parts.judge.model.lm_head.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen"):
        assert_frozen_judge(parts)
    parts.judge.model.lm_head.weight.requires_grad_(False)
    parts.optimizer.add_param_group({"params": [parts.judge.model.lm_head.weight], "name": "oops", "base_lr": 1.0})
    with pytest.raises(AssertionError, match="frozen"):
        assert_frozen_judge(parts)


def test_baseline_reads_only_the_tower_and_beta_adds_a_frozen_reference(tiny_config):
    parts = _build(tiny_config("proxy_anchor"))
    assert parts.judge is None and isinstance(parts.pooler, MeanPooler)
    assert [g["name"] for g in parts.optimizer.param_groups] == ["encoder", "encoder_no_decay", "proxies"]
    saga = _build(tiny_config("saga", "grpo.beta=0.04"))
    assert not any(p.requires_grad for p in saga.reference.parameters())
    for a, b in zip(saga.reference.parameters(), saga.encoder.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_incompatible_choices_are_config_errors(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="model.judge is not set"):
        _build(tiny_config("proxy_anchor", "model.judge=''"))
    with pytest.raises(ConfigError, match="attention"):
        _build(tiny_config("saga", "model.pooler=mean"))
    wide = tmp_path / "wide"
    build_tiny_qwen3vl(wide, preset="tiny", image_size=64, text_config={"hidden_size": 64, "head_dim": 16,
                                                                        "mrope_section": [4, 2, 2]})
    with pytest.raises(ConfigError, match="cannot feed the judge"):
        _build(tiny_config("saga", f"model.backbone={wide}"))
