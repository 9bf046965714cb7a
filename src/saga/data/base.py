"""What every dataset loader returns, and the checks they share.

A loader reads annotation files only (it never opens an image, so loading is fast and light) and returns a
`DatasetSplits`: the zero-shot train and test `Split`s, whose classes are disjoint (docs/method.md, "Protocol").
Labels are dataset-wide 0-based class ids, so a train label never equals a test label.

Shared policy, decided here once for all loaders:

- Every image an annotation names must exist; a missing one is a `DataError` naming the annotation file, the
  line (or entry) and the missing path. Nothing is dropped silently.
- "Full official" set: the class list (classes.txt, class_names, variants.txt, the iNat category list) has the
  official number of classes. Then the image and class counts of both sides must equal the published ones, or
  loading fails with expected vs found. With fewer classes the set is a subset (a mini set for tests, a trimmed
  copy): it loads, counts unchecked, with a logged warning.
- Subsets are split like the full set: the first half of the classes in the dataset's canonical order trains, the
  rest tests; with an odd number of classes the train side gets the extra one.
- macOS `._*` resource-fork files and other hidden entries are skipped wherever a folder is listed.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from saga.errors import DataError
from saga.images import load_image  # noqa: F401  (re-exported: saga.data.load_image)
from saga.progress import progress

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One side of the zero-shot split: image paths with their dataset-wide 0-based class ids."""

    name: str
    paths: list[Path]
    labels: np.ndarray
    class_names: dict[int, str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"split {self.name}: {len(self.paths)} paths but labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class DatasetSplits:
    """A dataset as train and test splits with disjoint classes."""

    name: str
    root: Path
    train: Split
    test: Split
    class_attributes: dict[int, dict[str, str]] | None = None  # per class: attribute name -> value (synth world)

    def info(self) -> dict:
        return {side.name: {"classes": side.num_classes, "images": len(side)} for side in (self.train, self.test)}


@dataclass(frozen=True)
class OfficialCounts:
    """Published size of a dataset and of its zero-shot halves (docs/method.md, "Protocol")."""

    total_classes: int
    train_classes: int
    train_images: int | None  # None: not published (iNat-2021 train.json), only classes are checked
    test_classes: int
    test_images: int | None


class ImageDataset(torch.utils.data.Dataset):
    """A `Split` as a torch dataset of (image, label); `transform` maps the PIL image (e.g. to a tensor)."""

    def __init__(self, split: Split, transform: Callable[[Image.Image], object] | None = None) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[object, int]:
        image = load_image(self.split.paths[i])
        return (self.transform(image) if self.transform else image), int(self.split.labels[i])


# ---------------------------------------------------------------- finding and reading files
def is_hidden(name: str) -> bool:
    """macOS `._*` resource forks, `.DS_Store` and other dot-files are never data."""
    return name.startswith(".")


def find_dataset_dir(root: str | Path, markers: Sequence[str], expected: str) -> Path:
    """The first marker file found in `root`, else in exactly one of its subfolders (root may be the dataset
    folder or its parent). `expected` describes the layout for the error message."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; expected {expected}")
    for marker in markers:
        if (root / marker).is_file():
            return root / marker
    children = sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
    for marker in markers:
        found = [c / marker for c in children if (c / marker).is_file()]
        if len(found) > 1:
            raise DataError(f"{root}: several datasets found ({', '.join(str(f.parent) for f in found)}); "
                            "give the one to load as the root")
        if found:
            return found[0]
    raise DataError(f"{root}: no {' or '.join(markers)} here or in a subfolder; expected {expected}")


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of a UTF-8 text file."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def read_fields(path: Path, n: int, *, names_last: bool = False, extra_ok: bool = False,
                ) -> Iterator[tuple[int, list[str]]]:
    """Lines of a whitespace-separated file as exactly `n` fields. `names_last`: the last field is the rest of the
    line (names with spaces); `extra_ok`: fields past the n-th are ignored."""
    for number, line in read_lines(path):
        fields = line.split(maxsplit=n - 1) if names_last else line.split()
        if len(fields) < n or (len(fields) > n and not extra_ok):
            raise DataError(f"{path}, line {number}: expected {n} fields, found {len(fields)}: {line!r}")
        yield number, fields[:n]


def parse_int(value: str, path: Path, line: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}, line {line}: {what} must be an integer, found {value!r}") from None


def require_files(paths: Sequence[Path], where: Callable[[int], str], dataset: str) -> None:
    """Every path must exist. Lists each folder once instead of one stat per file (fast on 100k-image sets);
    a name absent from the listing is re-checked with `exists()` (case-insensitive file systems).
    `where(i)` names the annotation of path i, e.g. "images.txt, line 12"."""
    by_dir: dict[Path, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_dir[p.parent].append(i)
    missing: list[int] = []
    with progress(total=len(by_dir), desc=f"{dataset}: checking images", unit="folder") as bar:
        for folder, indices in by_dir.items():
            try:
                present = set(os.listdir(folder))
            except OSError:
                present = set()
            missing.extend(i for i in indices if paths[i].name not in present and not paths[i].exists())
            bar.update(1)
    if missing:
        first = min(missing)
        more = f" ({len(missing) - 1} more images are missing)" if len(missing) > 1 else ""
        raise DataError(f"{where(first)}: image {paths[first]} does not exist{more}")


# ---------------------------------------------------------------- splitting and count checks
def first_half(class_ids: Collection[int]) -> set[int]:
    """The train classes of the zero-shot split: the first half of the ids in sorted (canonical) order; with an
    odd number of classes the train side gets the extra one."""
    ordered = sorted(class_ids)
    return set(ordered[: (len(ordered) + 1) // 2])


def split_by_class(name: str, root: Path, paths: list[Path], labels: np.ndarray, class_names: dict[int, str],
                   train_classes: Collection[int]) -> DatasetSplits:
    """Every image of a class goes to the side of its class. Classes without images are kept in the class list
    and reported with a warning (a subset may lack them; a full set is caught by the count check)."""
    labels = np.asarray(labels, dtype=np.int64)
    train_set = set(train_classes)
    is_train = np.isin(labels, sorted(train_set))
    empty = sorted(set(class_names) - set(np.unique(labels).tolist()))
    if empty:
        log.warning("%s (%s): %d classes have no images: %s", name, root, len(empty),
                    ", ".join(class_names[c] for c in empty[:5]) + (" ..." if len(empty) > 5 else ""))

    def side(side_name: str, mask: np.ndarray, keep: Callable[[int], bool]) -> Split:
        return Split(side_name, [p for p, m in zip(paths, mask) if m], labels[mask],
                     {c: n for c, n in sorted(class_names.items()) if keep(c)})

    return DatasetSplits(name, root, side("train", is_train, lambda c: c in train_set),
                         side("test", ~is_train, lambda c: c not in train_set))


def compare_counts(splits: DatasetSplits, official: OfficialCounts | None, listed_classes: int, source: Path,
                 enforce: bool = True) -> None:
    """Compare a full official set with its published counts (see the module docstring); warn on a subset.
    enforce=False (`--no-count-check`, `data.check_counts: false`): a full set whose counts differ loads, with a
    warning giving expected vs found (e.g. a copy with some images held out on purpose)."""
    if official is None:
        return
    if listed_classes != official.total_classes:
        log.warning("%s: %s lists %d classes, not the official %d; loading it as a subset without count checks",
                    splits.name, source, listed_classes, official.total_classes)
        return
    expected = {("train", "classes"): official.train_classes, ("train", "images"): official.train_images,
                ("test", "classes"): official.test_classes, ("test", "images"): official.test_images}
    # classes are counted by their images: a listed class without any is part of the dataset gone missing
    found = {s.name: {"classes": len(np.unique(s.labels)), "images": len(s)} for s in (splits.train, splits.test)}
    wrong = [f"{side} {what}: expected {n:,}, found {found[side][what]:,}"
             for (side, what), n in expected.items() if n is not None and found[side][what] != n]
    if wrong and not enforce:
        log.warning("%s: the %s set differs from its official counts (%s); loading it as it is (count check off)",
                    source, splits.name, "; ".join(wrong))
    elif wrong:
        raise DataError(f"{source}: the full {splits.name} set does not have its official counts ("
                        + "; ".join(wrong) + "); is part of the dataset missing or duplicated? (--no-count-check, "
                        "or data.check_counts: false, loads it anyway)")


def no_split_file(dataset: str, split_file: str | Path | None) -> None:
    """Named datasets have the fixed split of docs/method.md, "Protocol"; a split file is for folder datasets."""
    if split_file is not None:
        raise DataError(f"{split_file}: a split file applies to the 'folder' dataset only; "
                        f"'{dataset}' has the fixed zero-shot split of its benchmark")

