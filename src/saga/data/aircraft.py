"""FGVC-Aircraft 2013b at the variant level, with the zero-shot split of docs/method.md, "Protocol".

Layout (root may be fgvc-aircraft-2013b/, its data/ folder, or the folder containing fgvc-aircraft-2013b/)::

    fgvc-aircraft-2013b/data/variants.txt                          one variant name a line (100 lines)
    fgvc-aircraft-2013b/data/images_variant_{train,val,test}.txt   "<image id> <variant name>"
    fgvc-aircraft-2013b/data/images/<image id>.jpg

Variant names contain spaces ("Cessna 172", "DHC-8-100"), so a list line is split on its first space only.

Split: the first 50 variants in variants.txt order train, the last 50 test, pooling the images of all three official
lists (5,000 / 5,000 images). This is our reading of the common zero-shot protocol: no primary source fixes the
order, and variants.txt order is the one the archive itself gives. Label = position in variants.txt (0-based).
With 100 variants the counts must match; fewer make a subset (see saga.data.base), and a missing list is then
only a warning. Images keep the ~20 px copyright banner at their bottom; cropping it is left to the transform.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from saga.data.base import (DatasetSplits, OfficialCounts, compare_counts, find_dataset_dir, first_half, no_split_file,
                            read_fields, read_lines, require_files, split_by_class)
from saga.errors import DataError

log = logging.getLogger(__name__)

OFFICIAL = OfficialCounts(total_classes=100, train_classes=50, train_images=5_000, test_classes=50,
                          test_images=5_000)
LISTS = ("images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")
LAYOUT = ("fgvc-aircraft-2013b/ (with data/variants.txt, data/images_variant_*.txt, data/images/), its data/ "
          "folder, or the folder containing it")


def read_variants(path: Path) -> list[str]:
    variants: dict[str, int] = {}
    for line, name in read_lines(path):
        if name in variants:
            raise DataError(f"{path}, line {line}: variant {name!r} already listed on line {variants[name]}")
        variants[name] = line
    return list(variants)


def load_aircraft(root: str | Path, split_file: str | Path | None = None, *,
               check_counts: bool = True) -> DatasetSplits:
    """FGVC-Aircraft as zero-shot splits: variant halves in variants.txt order over the pooled image lists."""
    no_split_file("aircraft", split_file)
    data = find_dataset_dir(root, ["variants.txt", "data/variants.txt"], LAYOUT).parent
    variants_file = data / "variants.txt"
    variants = read_variants(variants_file)
    label_of = {name: i for i, name in enumerate(variants)}
    lists = [data / name for name in LISTS if (data / name).is_file()]
    if not lists:
        raise DataError(f"{data}: none of {', '.join(LISTS)} found; expected {LAYOUT}")
    if len(lists) < len(LISTS):
        log.warning("aircraft (%s): only %s found; images of the missing lists are not loaded",
                    data, ", ".join(p.name for p in lists))
    paths: list[Path] = []
    labels: list[int] = []
    where: list[str] = []
    seen: dict[str, str] = {}  # image id -> where it was listed: an image in two lists would count twice
    for list_file in lists:
        for line, (image_id, variant) in read_fields(list_file, 2, names_last=True):
            here = f"{list_file}, line {line}"
            if variant not in label_of:
                raise DataError(f"{here}: variant {variant!r} is not in {variants_file}")
            if image_id in seen:
                raise DataError(f"{here}: image {image_id} is already listed at {seen[image_id]}")
            seen[image_id] = here
            paths.append(data / "images" / f"{image_id}.jpg")
            labels.append(label_of[variant])
            where.append(here)
    require_files(paths, lambda i: where[i], "aircraft")
    class_names = dict(enumerate(variants))
    splits = split_by_class("aircraft", data.parent, paths, np.array(labels, dtype=np.int64), class_names,
                            first_half(class_names))
    compare_counts(splits, OFFICIAL, len(variants), variants_file, enforce=check_counts)
    return splits
