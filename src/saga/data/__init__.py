"""Datasets as zero-shot train/test splits with disjoint classes (docs/method.md, "Protocol").

    from saga.data import load_dataset
    ds = load_dataset("cub", "/data/CUB_200_2011")   # also: cars, aircraft, inat_aves, folder, synth
    ds.info()  # {"train": {"classes": 100, "images": 5864}, "test": {"classes": 100, "images": 5924}}
    dataset_vocabulary("cub", "/data/CUB_200_2011")   # the attributes the judge's prompt names (saga.data.vocabulary)

A loader is any callable `loader(root, split_file=None) -> DatasetSplits`, registered by name in `DATASETS`; the
config's `data.dataset` and the CLI's `--dataset` choices are its names. The split policy, count checks and error
rules shared by all loaders are described in saga.data.base.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from saga.data.aircraft import load_aircraft
from saga.data.base import DatasetSplits, ImageDataset, OfficialCounts, Split, load_image
from saga.data.cars import load_cars
from saga.data.cub import CubAttributes, cub_attribute_groups, load_cub, read_cub_attributes
from saga.data.folder import load_folder
from saga.data.inat import load_inat_aves
from saga.data.vocabulary import dataset_vocabulary, read_vocabulary_file, resolve_vocabulary
from saga.registry import Registry

Loader = Callable[..., DatasetSplits]

DATASETS: Registry[Loader] = Registry("dataset")


def load_synth(root: str | Path, split_file: str | Path | None = None, *, check_counts: bool = True) -> DatasetSplits:
    """The synthetic world (saga.synth), read like CUB; imported on use, so a run on real data never loads the
    world's renderer. A world has the size it was made with: no official counts."""
    from saga.synth.dataset import load_synth as load

    return load(root, split_file)


def load_dataset(name: str, root: str | Path, split_file: str | Path | None = None, *,
                 check_counts: bool = True) -> DatasetSplits:
    """The zero-shot train/test splits of dataset `name` stored at `root`. check_counts=False loads a full official
    set whose counts differ from the published ones, with a warning (saga.data.base.compare_counts)."""
    loader = DATASETS.get(name)
    # Only pass what differs from the defaults, so a loader with a fixed split and no counts may take just `root`.
    options = {"split_file": split_file} if split_file is not None else {}
    if not check_counts:
        options["check_counts"] = False
    return loader(root, **options)


DATASETS.register("cub", load_cub)
DATASETS.register("cars", load_cars)
DATASETS.register("aircraft", load_aircraft)
DATASETS.register("inat_aves", load_inat_aves)
DATASETS.register("folder", load_folder)
DATASETS.register("synth", load_synth)

__all__ = ["DATASETS", "CubAttributes", "DatasetSplits", "ImageDataset", "OfficialCounts", "Split",
           "cub_attribute_groups", "dataset_vocabulary", "load_aircraft", "load_cars", "load_cub", "load_dataset",
           "load_folder", "load_image", "load_inat_aves", "read_cub_attributes", "read_vocabulary_file",
           "resolve_vocabulary"]
