"""Attribute vocabularies: the attributes the judge's pair prompt names (saga.judge.prompts.pair_prompt).

The paper's stated limitation is that SAGA relies on per-dataset attribute vocabularies; it does not publish them
(docs/method.md, "What the paper does not state"). `model.vocabulary` (and `saga judge eval --vocabulary`) is one of:

    "auto"       the dataset's own (`dataset_vocabulary`): CUB's attribute groups from attributes.txt, the synthetic
                 world's schema, the written list configs/vocabularies/<dataset>.yaml for Cars, Aircraft and
                 iNat-Aves; a folder dataset has none
    a list       of attribute names, in the order the prompt names them
    a file path  a YAML file (a list, or a mapping whose `attributes` is one) or a text file, one name a line
    None, "none" no vocabulary: the prompt asks to compare "their attributes" (the prompt of judges pretrained
                 before vocabularies existed)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from saga.errors import ConfigError

AUTO, NONE = "auto", "none"
# The written lists, relative to the directory `saga` runs from (as every path in configs/ is).
VOCABULARY_DIR = Path("configs/vocabularies")
WRITTEN = ("cars", "aircraft", "inat_aves")

Vocabulary = list[str] | None


def _checked(names: object, where: str) -> list[str]:
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(f"{where}: a vocabulary is a non-empty list of attribute names, got {names!r}")
    out = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: attribute names are non-empty strings, got {name!r}")
        if name.strip() in out:
            raise ConfigError(f"{where}: {name!r} is named twice")
        out.append(name.strip())
    return out


def read_vocabulary_file(path: str | Path) -> list[str]:
    """A vocabulary file: YAML (.yaml / .yml: a list, or a mapping with an `attributes` list) or text (one name a
    line; blank lines and lines starting with # are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: vocabulary file not found")
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if isinstance(data, dict):
            data = data.get("attributes")
        return _checked(data, str(path))
    lines = [line.strip() for line in path.read_text().splitlines()]
    return _checked([line for line in lines if line and not line.startswith("#")], str(path))


def dataset_vocabulary(dataset: str, root: str | Path) -> Vocabulary:
    """The vocabulary "auto" gives for `dataset` stored at `root` (see the module docstring)."""
    if dataset == "cub":
        from saga.data.cub import cub_attribute_groups

        return cub_attribute_groups(root)
    if dataset == "synth":  # read where the dataset is, lazily: the runtime never imports saga.synth itself
        from saga.synth.dataset import synth_vocabulary

        return synth_vocabulary(root)
    if dataset in WRITTEN:
        return read_vocabulary_file(VOCABULARY_DIR / f"{dataset}.yaml")
    return None


def resolve_vocabulary(setting: str | Sequence[str] | None, dataset: str, root: str | Path) -> Vocabulary:
    """The attribute names a `model.vocabulary` setting stands for (None: the prompt names none)."""
    if setting is None or setting == NONE:
        return None
    if isinstance(setting, str):
        if setting == AUTO:
            return dataset_vocabulary(dataset, root)
        return read_vocabulary_file(setting)
    return _checked(list(setting), "model.vocabulary")
