"""Stanford Cars-196 with the zero-shot split of docs/method.md, "Protocol", from either of its two distributions.

Layouts (root may be the dataset folder or the folder containing it):

- all-in-one: `cars_annos.mat` + `car_ims/*.jpg`. The struct array `annotations` has relative_im_path (e.g.
  "car_ims/000001.jpg", relative to the root), bbox_x1..bbox_y2, class (1..196) and test; `class_names` is a cell
  array of the 196 names.
- devkit: `cars_train/`, `cars_test/`, `devkit/cars_meta.mat` (`class_names`), `devkit/cars_train_annos.mat` and
  `cars_test_annos_withlabels.mat` (in devkit/ or the root; the devkit's own cars_test_annos.mat has no labels).
  Their `annotations` have fname (relative to cars_train/ or cars_test/), bbox_x1..bbox_y2 and class.

If both are present, cars_annos.mat is used. Split: classes 1-98 train (8,054 images), 99-196 test (8,131), every
image of the dataset regardless of its `test` flag (that flag is the closed-set split). Class id k has label k - 1.
With 196 class names the counts must match; fewer names make a subset (see saga.data.base). Boxes are not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io

from saga.data.base import (DatasetSplits, OfficialCounts, compare_counts, find_dataset_dir, first_half, no_split_file,
                            require_files, split_by_class)
from saga.errors import DataError

OFFICIAL = OfficialCounts(total_classes=196, train_classes=98, train_images=8_054, test_classes=98,
                          test_images=8_131)
LAYOUT = ("the Stanford Cars folder with cars_annos.mat and car_ims/, or with the devkit layout (cars_train/, "
          "cars_test/, devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat), "
          "or the folder containing it")


@dataclass
class _Annotations:
    paths: list[Path] = field(default_factory=list)
    class_ids: list[int] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # the .mat entry of each image, for error messages


def _read_mat(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: annotation file does not exist")
    try:
        return scipy.io.loadmat(path, squeeze_me=True)
    except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as e:
        raise DataError(f"{path}: cannot read this MATLAB file ({e})") from None


def _class_names(path: Path) -> list[str]:
    names = _read_mat(path).get("class_names")
    if names is None:
        raise DataError(f"{path}: no variable 'class_names'")
    return [str(n) for n in np.atleast_1d(names)]


def _read_annotations(path: Path, image_dir: Path, path_field: str, num_classes: int, out: _Annotations) -> None:
    """Append the images of one `annotations` struct array to `out`, checking each class id."""
    annotations = _read_mat(path).get("annotations")
    if annotations is None:
        raise DataError(f"{path}: no variable 'annotations'")
    annotations = np.atleast_1d(annotations)  # squeeze_me turns a single entry into a 0-d array
    for needed in (path_field, "class"):
        if annotations.dtype.names is None or needed not in annotations.dtype.names:
            raise DataError(f"{path}: 'annotations' has no field {needed!r} (fields: {annotations.dtype.names})")
    for i, entry in enumerate(annotations):
        where = f"{path}, annotations({i + 1})"  # MATLAB's 1-based index, as the user would look it up
        try:
            class_id = int(entry["class"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: class must be an integer, found {entry['class']!r}") from None
        if not 1 <= class_id <= num_classes:
            raise DataError(f"{where}: class {class_id} is outside 1..{num_classes} (the class_names)")
        out.paths.append(image_dir / str(entry[path_field]))
        out.class_ids.append(class_id)
        out.where.append(where)


def _read_devkit(root: Path) -> tuple[_Annotations, list[str], Path]:
    devkit = root / "devkit"
    names_file = devkit / "cars_meta.mat"
    names = _class_names(names_file)
    test_file = next((d / "cars_test_annos_withlabels.mat" for d in (devkit, root)
                      if (d / "cars_test_annos_withlabels.mat").is_file()), None)
    if test_file is None:
        raise DataError(f"{root}: no cars_test_annos_withlabels.mat in {devkit} or {root}; the test images need "
                        "these labels (the devkit's cars_test_annos.mat has none)")
    annotations = _Annotations()
    _read_annotations(devkit / "cars_train_annos.mat", root / "cars_train", "fname", len(names), annotations)
    _read_annotations(test_file, root / "cars_test", "fname", len(names), annotations)
    return annotations, names, names_file


def load_cars(root: str | Path, split_file: str | Path | None = None, *,
               check_counts: bool = True) -> DatasetSplits:
    """Cars-196 as zero-shot splits: class halves over all images, labels = class id - 1."""
    no_split_file("cars", split_file)
    marker = find_dataset_dir(root, ["cars_annos.mat", "devkit/cars_meta.mat"], LAYOUT)
    if marker.name == "cars_annos.mat":
        root, names_file = marker.parent, marker
        names = _class_names(marker)
        annotations = _Annotations()
        _read_annotations(marker, root, "relative_im_path", len(names), annotations)
    else:
        root = marker.parent.parent
        annotations, names, names_file = _read_devkit(root)
    require_files(annotations.paths, lambda i: annotations.where[i], "cars")
    class_names = dict(enumerate(names))
    splits = split_by_class("cars", root, annotations.paths, np.array(annotations.class_ids, dtype=np.int64) - 1,
                            class_names, first_half(class_names))
    compare_counts(splits, OFFICIAL, len(names), names_file, enforce=check_counts)
    return splits
