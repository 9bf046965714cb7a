"""iNaturalist-2021 birds (class Aves) with a zero-shot split of our own (docs/method.md, "Protocol").

Layout: the COCO-style annotation files train_mini.json, train.json and val.json with the image folders they name
(file_name is relative to the folder holding the JSON): images[{id, file_name}], annotations[{image_id,
category_id}], categories[{id, name, ..., class, ...}].

Choosing the file: `root` may be a JSON file itself, or a folder (or its parent) holding them; then
`annotations` names one, and by default the first present of train_mini.json (50 images per species, 74,300 birds,
parses in seconds), train.json (all 2.7M images: parsing it takes several GB of memory) and val.json is used.

Split (no standard one exists, so this is ours): keep the categories whose `class` is "Aves" (1,486 species), sort
them by category id, the first 743 train and the last 743 test; label = rank in that order (0-based), so labels are
stable across the three files. A file listing all 10,000 iNat-2021 categories is the full set: it must have 1,486
bird species, and train_mini.json / val.json must hold 50 / 10 images of each (train.json's per-species counts
vary and are not checked). A file with fewer categories is a subset (see saga.data.base).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from saga.data.base import (DatasetSplits, OfficialCounts, compare_counts, find_dataset_dir, first_half, no_split_file,
                            require_files, split_by_class)
from saga.errors import DataError

ANNOTATION_FILES = ("train_mini.json", "train.json", "val.json")
ALL_CATEGORIES = 10_000
AVES_SPECIES = 1_486
IMAGES_PER_SPECIES = {"train_mini.json": 50, "val.json": 10}  # iNat-2021 release notes; train.json varies
LAYOUT = "an iNat-2021 annotation file (train_mini.json, train.json or val.json), or a folder holding one"


def official_counts(json_name: str) -> OfficialCounts:
    """Expected counts of the full file `json_name` (module constants are read at call time)."""
    train = len(first_half(range(AVES_SPECIES)))
    per_species = IMAGES_PER_SPECIES.get(json_name)

    def images(classes: int) -> int | None:
        return None if per_species is None else classes * per_species

    return OfficialCounts(ALL_CATEGORIES, train, images(train), AVES_SPECIES - train, images(AVES_SPECIES - train))


def find_annotation_file(root: str | Path, annotations: str | None) -> Path:
    root = Path(root).expanduser()
    if root.suffix == ".json":
        if not root.is_file():
            raise DataError(f"{root}: annotation file does not exist")
        return root
    return find_dataset_dir(root, [annotations] if annotations else list(ANNOTATION_FILES), LAYOUT)


def _entries(coco: dict, key: str, fields: tuple[str, ...], path: Path) -> list[dict]:
    entries = coco.get(key)
    if not isinstance(entries, list):
        raise DataError(f"{path}: no list '{key}'; not a COCO-style iNat annotation file")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(f not in entry for f in fields):
            raise DataError(f"{path}: {key}[{i}] lacks one of the fields {', '.join(fields)}: {entry!r:.200}")
    return entries


def load_inat_aves(root: str | Path, split_file: str | Path | None = None, *, check_counts: bool = True,
                   annotations: str | None = None) -> DatasetSplits:
    """iNat-2021 Aves as zero-shot splits: species sorted by category id, first half train."""
    no_split_file("inat_aves", split_file)
    path = find_annotation_file(root, annotations)
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a valid JSON file ({e})") from None
    if not isinstance(coco, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
    categories = _entries(coco, "categories", ("id", "name", "class"), path)
    birds = sorted((c["id"], c["name"]) for c in categories if c["class"] == "Aves")
    label_of = {category_id: label for label, (category_id, _) in enumerate(birds)}
    images = {e["id"]: (e["file_name"], i) for i, e in enumerate(_entries(coco, "images", ("id", "file_name"), path))}

    paths: list[Path] = []
    labels: list[int] = []
    where: list[str] = []
    seen: set = set()
    for i, a in enumerate(_entries(coco, "annotations", ("image_id", "category_id"), path)):
        if a["category_id"] not in label_of:
            continue  # not a bird
        if a["image_id"] not in images:
            raise DataError(f"{path}: annotations[{i}] names image id {a['image_id']}, which is not in images")
        if a["image_id"] in seen:
            raise DataError(f"{path}: annotations[{i}]: image id {a['image_id']} is annotated twice")
        seen.add(a["image_id"])
        file_name, image_index = images[a["image_id"]]
        paths.append(path.parent / file_name)
        labels.append(label_of[a["category_id"]])
        where.append(f"{path}, images[{image_index}] (annotations[{i}])")
    del coco, images  # the parsed JSON is the large part; free it before checking files
    require_files(paths, lambda i: where[i], "inat_aves")
    class_names = {label: name for label, (_, name) in enumerate(birds)}
    splits = split_by_class("inat_aves", path.parent, paths, np.array(labels, dtype=np.int64), class_names,
                            first_half(class_names))
    compare_counts(splits, official_counts(path.name), len(categories), path, enforce=check_counts)
    return splits
