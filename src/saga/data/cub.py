"""CUB-200-2011 (Caltech-UCSD Birds) in its archive layout, with the zero-shot split of docs/method.md, "Protocol".

Layout (root may be the CUB_200_2011 folder or the folder containing it)::

    CUB_200_2011/images.txt               "<image id> <path under images/>"
    CUB_200_2011/image_class_labels.txt   "<image id> <class id>"
    CUB_200_2011/classes.txt              "<class id> <ccc.Name>"
    CUB_200_2011/images/<ccc.Name>/<file>.jpg
    optional: bounding_boxes.txt, train_test_split.txt, attributes.txt, attributes/image_attribute_labels.txt

Split: classes 1-100 train (5,864 images), 101-200 test (5,924). The official train_test_split.txt is NOT used: it
splits images of the same classes, which is the closed-set protocol, not zero-shot retrieval. Class id k has label
k - 1. A set whose classes.txt lists 200 classes must have exactly those counts; a smaller classes.txt is a subset,
split in halves of its sorted class ids (see saga.data.base). Bounding boxes are not used by the loader.

The same reader serves the synthetic world (written in this layout): `load_cub(root, name="synth", official=None)`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saga.data.base import (DatasetSplits, OfficialCounts, compare_counts, find_dataset_dir, first_half, no_split_file,
                            parse_int, read_fields, read_lines, require_files, split_by_class)
from saga.errors import DataError

OFFICIAL = OfficialCounts(total_classes=200, train_classes=100, train_images=5_864, test_classes=100,
                          test_images=5_924)
LAYOUT = ("the CUB_200_2011 folder (images.txt, image_class_labels.txt, classes.txt, images/) "
          "or the folder containing it")


def find_cub_root(root: str | Path) -> Path:
    return find_dataset_dir(root, ["images.txt"], LAYOUT).parent


def read_id_table(path: Path, what: str) -> dict[int, tuple[str, int]]:
    """A file of "<positive id> <text>" lines as id -> (text, line number); duplicate ids are errors."""
    table: dict[int, tuple[str, int]] = {}
    for line, (key, text) in read_fields(path, 2, names_last=True):
        i = parse_int(key, path, line, f"the {what} id")
        if i < 1:
            raise DataError(f"{path}, line {line}: {what} ids start at 1, found {i}")
        if i in table:
            raise DataError(f"{path}, line {line}: {what} id {i} already given on line {table[i][1]}")
        table[i] = (text, line)
    return table


@dataclass
class CubIndex:
    """The image and class lists of a CUB-layout folder, images in images.txt order."""

    ids: list[int]               # CUB image ids
    paths: list[Path]
    class_ids: list[int]         # 1-based, as in classes.txt
    lines: list[int]             # line of each image in images.txt, for error messages
    classes: dict[int, str]      # class id -> name


def read_cub_index(root: Path) -> CubIndex:
    """Read images.txt, classes.txt and image_class_labels.txt; every image must have exactly one known class."""
    images = read_id_table(root / "images.txt", "image")
    classes = read_id_table(root / "classes.txt", "class")
    labels_file = root / "image_class_labels.txt"
    class_of: dict[int, int] = {}
    for line, (image, cls) in read_fields(labels_file, 2):
        image_id = parse_int(image, labels_file, line, "image id")
        class_id = parse_int(cls, labels_file, line, "class id")
        if image_id not in images:
            raise DataError(f"{labels_file}, line {line}: image id {image_id} is not in images.txt")
        if class_id not in classes:
            raise DataError(f"{labels_file}, line {line}: class id {class_id} is not in classes.txt")
        if image_id in class_of:
            raise DataError(f"{labels_file}, line {line}: image id {image_id} is labelled twice")
        class_of[image_id] = class_id
    for image_id, (_, line) in images.items():
        if image_id not in class_of:
            raise DataError(f"{root / 'images.txt'}, line {line}: image id {image_id} has no class in {labels_file}")
    ids = list(images)
    return CubIndex(ids, [root / "images" / images[i][0] for i in ids], [class_of[i] for i in ids],
                    [images[i][1] for i in ids], {k: text for k, (text, _) in classes.items()})


def load_cub(root: str | Path, split_file: str | Path | None = None, *, check_counts: bool = True,
             name: str = "cub", official: OfficialCounts | None = OFFICIAL) -> DatasetSplits:
    """CUB-200-2011 as zero-shot splits: class halves, labels = class id - 1. `official=None` skips count checks
    (for other data in this layout, e.g. the synthetic world)."""
    no_split_file(name, split_file)
    root = find_cub_root(root)
    index = read_cub_index(root)
    require_files(index.paths, lambda i: f"{root / 'images.txt'}, line {index.lines[i]}", name)
    class_names = {k - 1: text for k, text in index.classes.items()}
    splits = split_by_class(name, root, index.paths, np.array(index.class_ids, dtype=np.int64) - 1, class_names,
                            first_half(class_names))
    compare_counts(splits, official, len(class_names), root / "classes.txt", enforce=check_counts)
    return splits


@dataclass
class CubAttributes:
    """Per-image attribute annotations, rows in images.txt order, column j = attribute id j + 1."""

    names: list[str]         # e.g. "has_bill_shape::curved"
    image_ids: np.ndarray    # (N,) int64 CUB image ids
    paths: list[Path]        # (N,) image paths, as in the loader's splits
    present: np.ndarray      # (N, A) bool: the annotator marked the attribute present
    certainty: np.ndarray    # (N, A) int8: 1 not visible, 2 guessing, 3 probably, 4 definitely; 0 no annotation


def _attribute_file(root: Path, name: str) -> Path:
    # The archive unpacks attributes.txt beside the CUB_200_2011 folder, not inside it: the parent is looked in too.
    for candidate in (root / name, root / "attributes" / name, root.parent / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root}: no {name} here, in {root / 'attributes'} or in {root.parent}; attribute annotations "
                    "are optional in CUB but needed for this call")


def cub_attribute_groups(root: str | Path) -> list[str]:
    """The attribute groups of attributes.txt in id order, as words: "has_bill_shape::curved" -> "bill shape"
    (28 in CUB-200-2011). They are the vocabulary the judge's prompt names on CUB (saga.data.vocabulary)."""
    names_file = _attribute_file(find_cub_root(root), "attributes.txt")
    groups: list[str] = []
    for line, (_, name) in read_fields(names_file, 2, names_last=True):
        group, sep, _ = name.partition("::")
        if not sep:
            raise DataError(f"{names_file}, line {line}: expected <group>::<value>, found {name!r}")
        word = group.removeprefix("has_").replace("_", " ").strip()
        if word not in groups:
            groups.append(word)
    return groups


def _attribute_rows(path: Path) -> np.ndarray:
    """(M, 4) ints per line: image id, attribute id, is_present, certainty. numpy parses the official 3.7M lines in
    well under a second (a Python loop takes ~8 s); where it cannot, the line-by-line reader names the bad line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below as a DataError
            rows = np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 2, 3), ndmin=2, comments=None)
    except ValueError:  # too few fields, a non-integer, not UTF-8
        rows = np.array([[parse_int(v, path, line, "every field") for v in fields]
                         for line, fields in read_fields(path, 4, extra_ok=True)], dtype=np.int64)
    if rows.size == 0:
        raise DataError(f"{path}: no annotation lines")
    return rows


def read_cub_attributes(root: str | Path) -> CubAttributes:
    """attributes.txt ("<id> <group>::<value>", in the root or under attributes/) and
    image_attribute_labels.txt ("<image> <attribute> <present> <certainty> <time>"). Some lines of the official
    file carry extra fields; only the first four are read."""
    root = find_cub_root(root)
    names_file = _attribute_file(root, "attributes.txt")
    labels_file = _attribute_file(root, "image_attribute_labels.txt")
    table = read_id_table(names_file, "attribute")
    if sorted(table) != list(range(1, len(table) + 1)):
        raise DataError(f"{names_file}: attribute ids must be 1..{len(table)} without gaps")
    index = read_cub_index(root)
    rows = _attribute_rows(labels_file)
    image, attribute, is_present, certain = rows.T
    row_of = np.full(max(index.ids) + 1, -1, dtype=np.int64)  # image id -> row in images.txt order
    row_of[index.ids] = np.arange(len(index.ids))
    known = (image >= 0) & (image < len(row_of))
    known[known] = row_of[image[known]] >= 0
    checks = [(~known, "image id is not in images.txt"),
              ((attribute < 1) | (attribute > len(table)), f"attribute id is not in {names_file}"),
              ((is_present != 0) & (is_present != 1), "is_present must be 0 or 1"),
              ((certain < 1) | (certain > 4), "certainty must be 1-4")]
    for bad, problem in checks:
        if bad.any():
            first = int(np.argmax(bad))
            line = next(n for k, (n, _) in enumerate(read_lines(labels_file)) if k == first)  # blank lines skipped
            raise DataError(f"{labels_file}, line {line}: {problem}, found {rows[first].tolist()}")
    present = np.zeros((len(index.ids), len(table)), dtype=bool)
    certainty = np.zeros((len(index.ids), len(table)), dtype=np.int8)
    present[row_of[image], attribute - 1] = is_present == 1
    certainty[row_of[image], attribute - 1] = certain
    return CubAttributes([table[k][0] for k in range(1, len(table) + 1)], np.array(index.ids, dtype=np.int64),
                         index.paths, present, certainty)
