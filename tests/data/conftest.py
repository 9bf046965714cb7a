"""Generators of mini datasets in each real on-disk format (tiny real JPEGs, real .mat and JSON files).

Exposed as fixtures returning functions, because tests run with --import-mode=importlib (no sibling imports).
Each image is an 8x8 JPEG of a colour derived from its index, so files differ and are valid images.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
from PIL import Image


def write_jpeg(path: Path, index: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (index * 37 % 256, index * 91 % 256, index * 13 % 256)).save(path, "JPEG")
    return path


def make_cub(parent: Path, num_classes: int = 4, per_class: int = 2, *, attributes: bool = False,
             images: bool = True) -> Path:
    """CUB_200_2011/ under `parent`: image ids 1.. class-major, class k named f"{k:03d}.Bird_{k}"."""
    root = parent / "CUB_200_2011"
    root.mkdir(parents=True)
    classes, image_lines, label_lines, split_lines = [], [], [], []
    image_id = 0
    for k in range(1, num_classes + 1):
        classes.append(f"{k} {k:03d}.Bird_{k}")
        for j in range(per_class):
            image_id += 1
            rel = f"{k:03d}.Bird_{k}/Bird_{k}_{j}.jpg"
            if images:
                write_jpeg(root / "images" / rel, image_id)
            image_lines.append(f"{image_id} {rel}")
            label_lines.append(f"{image_id} {k}")
            split_lines.append(f"{image_id} {j % 2}")  # the official file: must be ignored by the loader
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    (root / "images.txt").write_text("\n".join(image_lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(label_lines) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split_lines) + "\n")
    if attributes:
        (root / "attributes").mkdir()
        (root / "attributes.txt").write_text("1 has_bill_shape::curved\n2 has_wing_color::blue\n3 has_crest::yes\n")
    return root


def _annotation_struct(rows: list[dict]) -> np.ndarray:
    """A MATLAB 1xN struct array, as scipy.io.savemat writes it from a structured array of objects."""
    fields = list(rows[0])
    out = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        out[0, i] = tuple(row[f] if isinstance(row[f], str) else np.array([[row[f]]], dtype=np.uint16)
                          for f in fields)
    return out


def _cell(names: list[str]) -> np.ndarray:
    cell = np.empty((1, len(names)), dtype=object)
    cell[0, :] = names
    return cell


def _box(i: int) -> dict:
    return {"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 7, "bbox_y2": 7 + i % 2}


def make_cars(parent: Path, num_classes: int = 4, per_class: int = 2, *, num_names: int | None = None) -> Path:
    """cars_annos.mat + car_ims/: image i (1-based) of class k; every other image flagged test=1."""
    root = parent / "stanford_cars"
    rows = []
    for k in range(1, num_classes + 1):
        for _ in range(per_class):
            i = len(rows) + 1
            write_jpeg(root / "car_ims" / f"{i:06d}.jpg", i)
            rows.append({"relative_im_path": f"car_ims/{i:06d}.jpg", **_box(i), "class": k, "test": i % 2})
    names = [f"Make {k} Model 2012" for k in range(1, (num_names or num_classes) + 1)]
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": _annotation_struct(rows), "class_names": _cell(names)})
    return root


def make_cars_devkit(parent: Path, num_classes: int = 4, per_class: int = 2) -> Path:
    """The devkit layout: per class, the first image in cars_train/, the others in cars_test/."""
    root = parent / "cars_devkit"
    (root / "devkit").mkdir(parents=True)
    train, test = [], []
    for k in range(1, num_classes + 1):
        for j in range(per_class):
            rows, folder = (train, "cars_train") if j == 0 else (test, "cars_test")
            fname = f"{len(rows) + 1:05d}.jpg"
            write_jpeg(root / folder / fname, k * 10 + j)
            rows.append({**_box(j), "class": k, "fname": fname})
    names = [f"Make {k} Model 2012" for k in range(1, num_classes + 1)]
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": _cell(names)})
    scipy.io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _annotation_struct(train)})
    scipy.io.savemat(root / "devkit" / "cars_test_annos_withlabels.mat", {"annotations": _annotation_struct(test)})
    return root


def make_aircraft(parent: Path, variants: list[str], per_list: int = 1) -> Path:
    """fgvc-aircraft-2013b/data with `per_list` images of each variant in each of the train/val/test lists."""
    data = parent / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for split in ("train", "val", "test"):
        lines = []
        for variant in variants:
            for _ in range(per_list):
                n += 1
                write_jpeg(data / "images" / f"{n:07d}.jpg", n)
                lines.append(f"{n:07d} {variant}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return data.parent


def make_inat(parent: Path, birds: list[int], others: list[int], per_species: int = 2,
              json_name: str = "train_mini.json", extra_categories: int = 0) -> Path:
    """An iNat-2021-style folder: category ids `birds` (class Aves) and `others` (class Insecta), each with
    `per_species` images; `extra_categories` more insect categories without images pad the category list."""
    root = parent / "inat2021"
    split = json_name.removesuffix(".json")
    categories, images, annotations = [], [], []
    padding = list(range(10**6, 10**6 + extra_categories))
    for cid in birds + others + padding:
        cls = "Aves" if cid in birds else "Insecta"
        name = f"Species {cid}"
        categories.append({"id": cid, "name": name, "supercategory": "Birds", "kingdom": "Animalia",
                           "phylum": "Chordata", "class": cls, "order": "O", "family": "F", "genus": "G"})
        if cid in padding:
            continue
        for _ in range(per_species):
            image_id = len(images) + 1
            file_name = f"{split}/{cid:05d}_{cls}_{name.replace(' ', '_')}/{image_id}.jpg"
            write_jpeg(root / file_name, image_id)
            images.append({"id": image_id, "file_name": file_name, "width": 8, "height": 8})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": cid})
    coco = {"info": {}, "images": images, "annotations": annotations, "categories": categories, "licenses": []}
    (root / json_name).write_text(json.dumps(coco))
    return root


def make_folder(parent: Path, classes: dict[str, int]) -> Path:
    root = parent / "my_products"
    for c, (name, count) in enumerate(classes.items()):
        for j in range(count):
            write_jpeg(root / name / f"img_{j}.jpg", c * 10 + j)
    return root


@pytest.fixture
def fakes() -> SimpleNamespace:
    """The generators above as `fakes.make_cub(...)` etc. (test modules cannot import this file directly)."""
    return SimpleNamespace(write_jpeg=write_jpeg, make_cub=make_cub, make_cars=make_cars,
                           make_cars_devkit=make_cars_devkit, make_aircraft=make_aircraft, make_inat=make_inat,
                           make_folder=make_folder)
