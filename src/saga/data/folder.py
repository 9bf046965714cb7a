"""A generic image-folder dataset (one subfolder per class) for the user's own classes.

Layout: root/<class name>/**/<image>; images may sit in nested folders of their class. Image files are those with
the suffixes in IMAGE_SUFFIXES (any case); hidden entries, including macOS `._*` files, are skipped. Other files are
not loaded, and a logged warning says how many there were, as does any image lying directly in root.

Classes are the subfolder names in sorted order; label = position in that order (0-based). Split:

- no split file: the first half of the sorted classes train, the rest test (odd count: train gets the extra one);
- a split file: the train classes, one folder name per line (blank lines ignored); all other classes test. A name
  without a folder, a repeated name, or a file that leaves no test class is a DataError naming file and line.

No official counts exist for such data, so nothing is count-checked.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from saga.data.base import DatasetSplits, first_half, is_hidden, read_lines, split_by_class
from saga.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def list_images(folder: Path) -> tuple[list[Path], int]:
    """(sorted image paths under `folder`, number of other non-hidden files skipped)."""
    images: list[Path] = []
    others = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))  # pruning in place stops os.walk descending
        for name in filenames:
            if is_hidden(name):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                images.append(Path(dirpath) / name)
            else:
                others += 1
    return sorted(images), others


def read_split_file(path: Path, classes: list[str]) -> set[int]:
    """Labels of the train classes named in `path`."""
    label_of = {name: i for i, name in enumerate(classes)}
    listed: dict[str, int] = {}
    for line, name in read_lines(path):
        if name not in label_of:
            raise DataError(f"{path}, line {line}: no class folder {name!r} in the dataset root")
        if name in listed:
            raise DataError(f"{path}, line {line}: class {name!r} already listed on line {listed[name]}")
        listed[name] = line
    if not listed:
        raise DataError(f"{path}: lists no train class")
    if len(listed) == len(classes):
        raise DataError(f"{path}: lists every class as a train class, which leaves no test class")
    return {label_of[name] for name in listed}


def load_folder(root: str | Path, split_file: str | Path | None = None, *, check_counts: bool = True) -> DatasetSplits:
    """An image-folder dataset as zero-shot splits, by class halves or by a split file of train classes (no
    official counts: `check_counts` is accepted for a uniform signature)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; expected a folder with one subfolder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class subfolders; a zero-shot split needs at least 2")
    loose = [p for p in root.iterdir() if p.is_file() and not is_hidden(p.name)
             and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        log.warning("folder (%s): %d images lie directly in the root, outside any class folder, and are not "
                    "loaded (e.g. %s)", root, len(loose), loose[0].name)
    paths: list[Path] = []
    labels: list[int] = []
    skipped = 0
    for label, name in enumerate(classes):
        images, others = list_images(root / name)
        paths.extend(images)
        labels.extend([label] * len(images))
        skipped += others
    if skipped:
        log.warning("folder (%s): %d files without an image suffix (%s) were not loaded", root, skipped,
                    " ".join(sorted(IMAGE_SUFFIXES)))
    class_names = dict(enumerate(classes))
    train = read_split_file(Path(split_file), classes) if split_file is not None else first_half(class_names)
    return split_by_class("folder", root, paths, np.array(labels, dtype=np.int64), class_names, train)
