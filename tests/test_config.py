import pytest

from saga.config import TrainConfig, describe, dump_config, load_config
from saga.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: proxy_anchor\noptim:\n  lr_encoder: 1e-5\n  steps: 7\nattention:\n  layers: [1, 2]\n")
    cfg = load_config(p, ["optim.steps=9", "grpo.num_generations=4", "model.backbone=null", "dml.alpha=16"])
    assert cfg.method == "proxy_anchor"
    assert cfg.optim.lr_encoder == 1e-5 and isinstance(cfg.optim.lr_encoder, float)
    assert cfg.optim.steps == 9  # the override wins over the file
    assert cfg.grpo.num_generations == 4
    assert cfg.attention.layers == [1, 2]
    assert cfg.dml.alpha == 16.0 and isinstance(cfg.dml.alpha, float)
    assert cfg.model.backbone is None


def test_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr_encodr: 1e-5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: optim: unknown key\(s\) \['lr_encodr'\]"):
        load_config(p)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["grpo.G=8"])


def test_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="optim.steps: expected int"):
        load_config(None, ["optim.steps=abc"])
    with pytest.raises(ConfigError, match="expected a list"):
        load_config(None, ["attention.layers=3"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["optim.steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_dump_round_trip_and_every_field_has_help(tmp_path):
    cfg = load_config(None, ["seed=3", "data.image_size=32"])
    dump_config(cfg, tmp_path / "r.yaml")
    assert load_config(tmp_path / "r.yaml") == cfg
    lines = describe(TrainConfig)
    assert any(line.startswith("grpo.num_generations = 8") for line in lines)
    assert all(line.split("#", 1)[1].strip() for line in lines)


def test_base_composition_merges_sections_relative_to_the_file(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "root.yaml").write_text("seed: 1\noptim:\n  steps: 5\n  lr_encoder: 2e-5\n"
                                                   "attention:\n  layers: [0, 1]\n")
    (tmp_path / "shared" / "mid.yaml").write_text("base: root.yaml\nseed: 2\noptim:\n  steps: 6\n")
    (tmp_path / "run.yaml").write_text("base: shared/mid.yaml\noptim:\n  warmup_steps: 3\nattention:\n  layers: [4]\n")
    cfg = load_config(tmp_path / "run.yaml", ["optim.steps=7"])
    assert cfg.seed == 2  # the child wins over its base
    assert (cfg.optim.steps, cfg.optim.lr_encoder, cfg.optim.warmup_steps) == (7, 2e-5, 3)  # sections merge
    assert cfg.attention.layers == [4]  # lists are replaced, not concatenated


def test_base_errors_name_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: base .*missing\.yaml: config file not found"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="base: expected a file path"):
        load_config(tmp_path / "d.yaml")


def test_names_are_checked_at_load_time():
    with pytest.raises(ConfigError, match=r"method: 'sag' is not one of \['saga'"):
        load_config(None, ["method=sag"])
    with pytest.raises(ConfigError, match="grpo.loss_type"):
        load_config(None, ["grpo.loss_type=ppo"])
