"""Datasets as zero-shot train/test splits with disjoint classes (REFERENCE.md section 5).

    from saga.data import load_dataset
    ds = load_dataset("cub", "/data/CUB_200_2011")   # also: cars, aircraft, inat_aves, folder, synth
    ds.info()  # {"train": {"classes": 100, "images": 5864}, "test": {"classes": 100, "images": 5924}}

A loader is any callable `loader(root, split_file=None) -> DatasetSplits`; `register_dataset` adds one by name.
"synth" registers itself when saga.data.synth is imported, which `load_dataset` does on first use of that name.
The split policy, count checks and error rules shared by all loaders are described in saga.data.base.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from saga.data.aircraft import load_aircraft
from saga.data.base import DatasetSplits, ImageDataset, OfficialCounts, Split, load_image
from saga.data.cars import load_cars
from saga.data.cub import CubAttributes, load_cub, read_cub_attributes
from saga.data.folder import load_folder
from saga.data.inat import load_inat_aves
from saga.errors import DataError

Loader = Callable[..., DatasetSplits]

DATASETS: dict[str, Loader] = {}

# Modules that register a dataset when imported, kept out of the eager imports above (the synthetic world pulls
# in its renderer).
_LAZY = {"synth": "saga.data.synth"}


def register_dataset(name: str, loader: Loader) -> None:
    """Make `loader(root, split_file=None) -> DatasetSplits` available as `load_dataset(name, ...)`."""
    DATASETS[name] = loader


def load_dataset(name: str, root: str | Path, split_file: str | Path | None = None) -> DatasetSplits:
    """The zero-shot train/test splits of dataset `name` stored at `root`."""
    if name not in DATASETS and name in _LAZY:
        importlib.import_module(_LAZY[name])
        if name not in DATASETS:
            raise DataError(f"dataset {name!r}: importing {_LAZY[name]} did not register it")
    if name not in DATASETS:
        known = sorted(set(DATASETS) | set(_LAZY))
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(known)}")
    loader = DATASETS[name]
    # Only pass split_file when given, so loaders with a fixed split may take just `root`.
    return loader(root) if split_file is None else loader(root, split_file=split_file)


register_dataset("cub", load_cub)
register_dataset("cars", load_cars)
register_dataset("aircraft", load_aircraft)
register_dataset("inat_aves", load_inat_aves)
register_dataset("folder", load_folder)

__all__ = ["DATASETS", "CubAttributes", "DatasetSplits", "ImageDataset", "OfficialCounts", "Split", "load_aircraft",
           "load_cars", "load_cub", "load_dataset", "load_folder", "load_image", "load_inat_aves",
           "read_cub_attributes", "register_dataset"]
