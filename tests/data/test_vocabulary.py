"""Attribute vocabularies: what each model.vocabulary setting resolves to, and the rule for older synthetic judges."""

import json
from pathlib import Path

import pytest

from saga.config import load_config
from saga.data import dataset_vocabulary, read_vocabulary_file, resolve_vocabulary
from saga.errors import ConfigError
from saga.judge import judge_vocabulary, reads_vocabularies
from saga.synth import ATTRIBUTE_NAMES

REPO = Path(__file__).resolve().parents[2]


def test_settings(tmp_path, synth_world):
    assert resolve_vocabulary(None, "synth", synth_world) is None
    assert resolve_vocabulary("none", "synth", synth_world) is None
    assert resolve_vocabulary(["crest", " bill shape "], "cub", tmp_path) == ["crest", "bill shape"]
    assert resolve_vocabulary("auto", "synth", synth_world) == list(ATTRIBUTE_NAMES)
    assert resolve_vocabulary("auto", "folder", tmp_path) is None
    for bad, message in (([], "non-empty list"), (["crest", "crest"], "named twice"), ([""], "non-empty strings")):
        with pytest.raises(ConfigError, match=message):
            resolve_vocabulary(bad, "synth", synth_world)


def test_files(tmp_path):
    (tmp_path / "v.yaml").write_text("source: written by hand\nattributes: [grille, wheels]\n")
    (tmp_path / "l.yml").write_text("- grille\n- roof\n")
    (tmp_path / "v.txt").write_text("# one a line\ngrille\n\nrear lights\n")
    assert resolve_vocabulary(str(tmp_path / "v.yaml"), "cars", tmp_path) == ["grille", "wheels"]
    assert read_vocabulary_file(tmp_path / "l.yml") == ["grille", "roof"]
    assert read_vocabulary_file(tmp_path / "v.txt") == ["grille", "rear lights"]
    with pytest.raises(ConfigError, match="vocabulary file not found"):
        resolve_vocabulary(str(tmp_path / "absent.yaml"), "cars", tmp_path)
    (tmp_path / "bad.yaml").write_text("attributes: grille\n")
    with pytest.raises(ConfigError, match="bad.yaml: a vocabulary is a non-empty list"):
        read_vocabulary_file(tmp_path / "bad.yaml")


@pytest.mark.parametrize("dataset", ["cars", "aircraft", "inat_aves"])
def test_the_written_lists_are_the_defaults_of_their_datasets(dataset, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # configs/ paths are relative to the repository root, as every config's are
    names = dataset_vocabulary(dataset, tmp_path)
    written = read_vocabulary_file(REPO / "configs" / "vocabularies" / f"{dataset}.yaml")
    assert 5 <= len(names) <= 20 and names == written
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"configs/vocabularies/{dataset}.yaml: vocabulary file not found"):
        dataset_vocabulary(dataset, tmp_path)


def test_auto_gives_no_vocabulary_to_a_judge_pretrained_without(tmp_path, synth_world):
    real = tmp_path / "real"  # a real MLLM: no pretrain.json
    real.mkdir()
    old, new = tmp_path / "old", tmp_path / "new"
    for path, meta in ((old, {"steps": 1}), (new, {"steps": 1, "vocabulary_subsets": 0.5})):
        path.mkdir()
        (path / "pretrain.json").write_text(json.dumps(meta))
    assert reads_vocabularies(real) and reads_vocabularies(new) and not reads_vocabularies(old)
    assert judge_vocabulary("auto", old, "synth", synth_world) is None
    assert judge_vocabulary("auto", new, "synth", synth_world) == list(ATTRIBUTE_NAMES)
    assert judge_vocabulary(["crest"], old, "synth", synth_world) == ["crest"]  # asked for, given


def test_config_field_takes_a_list_a_name_or_null(tmp_path):
    assert load_config(None, []).model.vocabulary == "auto"
    assert load_config(None, ["model.vocabulary=[crest, tail_shape]"]).model.vocabulary == ["crest", "tail_shape"]
    assert load_config(None, ["model.vocabulary=null"]).model.vocabulary is None
    assert load_config(None, ["model.vocabulary=configs/vocabularies/cars.yaml"]).model.vocabulary.endswith("cars.yaml")
    with pytest.raises(ConfigError, match="model.vocabulary"):
        load_config(None, ["model.vocabulary=3"])
