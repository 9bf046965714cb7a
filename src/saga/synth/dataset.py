"""The "synth" dataset: a generated world read by the CUB loader, with each class's attributes from world.json."""

from __future__ import annotations

from pathlib import Path

from saga.data.base import DatasetSplits
from saga.data.cub import find_cub_root, load_cub
from saga.errors import DataError
from saga.synth.schema import SCHEMA
from saga.synth.world import WORLD_FILE, load_world


def load_synth(root: str | Path, split_file: str | Path | None = None, *, check_counts: bool = True) -> DatasetSplits:
    """Zero-shot splits of a world written by `saga synth` (classes 1..ceil(n/2) train, the rest test) with
    `class_attributes[label] = {attribute: value}`. No official count checks: a world has the size it was made with."""
    splits = load_cub(root, split_file, name="synth", official=None)
    world_root = find_cub_root(root)
    world = load_world(world_root)
    names = {**splits.train.class_names, **splits.test.class_names}
    for c in world.classes:
        if names.get(c.id - 1) != c.folder:
            raise DataError(f"{world_root / WORLD_FILE}: class {c.id} is {c.folder!r} but classes.txt says "
                            f"{names.get(c.id - 1)!r}; the folder mixes two worlds")
    if len(names) != len(world.classes):
        raise DataError(f"{world_root / 'classes.txt'}: {len(names)} classes, {WORLD_FILE} has {len(world.classes)}")
    splits.class_attributes = {c.id - 1: c.combination.as_dict() for c in world.classes}
    return splits


def synth_vocabulary(root: str | Path) -> list[str]:
    """The attributes of the world at `root` (its schema, which load_world checks against this version's): the
    vocabulary the judge's prompt names by default on the synthetic dataset."""
    load_world(find_cub_root(root))
    return [a.name for a in SCHEMA]
