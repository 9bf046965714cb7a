"""The benchmark's classes: families of close species, their zero-shot split, and world.json.

Design (docs/design.md, "The synthetic world"):
- A family (a "genus") has a base combination; its other members each change ONE attribute of the base, so two
  members of a family differ in one or two attributes (two when they changed different attributes). Families have
  3-5 members (a half too small for that gets one family of what is left).
- Bases are at least `MIN_BASE_DISTANCE` = 5 attributes apart, so classes of different families differ in at least
  three: the hard negatives of the benchmark are the relatives inside a family.
- Split, as the CUB loader applies it: the first half of the class ids trains, the rest tests (with an odd count
  the train side gets the extra class; saga.data.base.first_half). Families are numbered so that each half holds
  WHOLE families. The test set then consists of families of close relatives that no training class belongs to:
  zero-shot retrieval among them needs the one or two attributes that separate them, and a model cannot have
  learnt those particular species. (CUB splits some genera across its halves; we do not, so that no test class has
  a training sibling one attribute away, which would make the test classes partly "seen".)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saga.errors import DataError
from saga.synth.schema import SCHEMA, Combination, random_combination

WORLD_FILE = "world.json"
FORMAT, VERSION = "saga-synth-world", 1
MIN_BASE_DISTANCE = 5
FAMILY_SIZES = (3, 5)  # inclusive range of a family's number of classes


@dataclass(frozen=True)
class SynthClass:
    id: int  # CUB class id, 1-based; the dataset label is id - 1
    family: int  # 0-based family index; families are contiguous in id
    combination: Combination

    @property
    def folder(self) -> str:
        """The CUB class name and image folder: "001.Red_Body_Black_Wings_..."."""
        return f"{self.id:03d}.{self.combination.name}"


@dataclass
class World:
    seed: int
    classes: list[SynthClass]
    images_per_class: int = 0  # 0 until the images are rendered
    size: int = 0

    @property
    def num_train_classes(self) -> int:
        return (len(self.classes) + 1) // 2

    def families(self) -> dict[int, list[SynthClass]]:
        out: dict[int, list[SynthClass]] = {}
        for c in self.classes:
            out.setdefault(c.family, []).append(c)
        return out

    def to_json(self) -> dict:
        n_train = self.num_train_classes
        families = [{"id": f, "split": "train" if members[0].id <= n_train else "test",
                     "classes": [c.id for c in members], "varied": varied_attributes(members)}
                    for f, members in self.families().items()]
        return {
            "format": FORMAT, "version": VERSION, "seed": self.seed, "num_classes": len(self.classes),
            "images_per_class": self.images_per_class, "size": self.size,
            "schema": [{"name": a.name, "values": list(a.values)} for a in SCHEMA],
            "split": {"rule": "classes 1..ceil(n/2) train, the rest test (whole families on each side)",
                      "train_classes": list(range(1, n_train + 1)),
                      "test_classes": list(range(n_train + 1, len(self.classes) + 1))},
            "families": families,
            "classes": [{"id": c.id, "name": c.folder, "family": c.family,
                         "attributes": c.combination.as_dict()} for c in self.classes],
        }


def varied_attributes(members: list[SynthClass]) -> list[str]:
    """The attributes (schema order) whose values are not the same across a family's members."""
    return [a.name for a in SCHEMA if len({m.combination[a.name] for m in members}) > 1]


def _family_sizes(n: int, rng: np.random.Generator) -> list[int]:
    lo, hi = FAMILY_SIZES
    sizes = []
    while n > 0:
        s = n if n <= hi + 1 else int(rng.integers(lo, hi + 1))
        if 0 < n - s < lo:  # never leave a remainder too small to be a family
            s = n - lo
        sizes.append(s)
        n -= s
    return sizes


def _family(base: Combination, size: int, rng: np.random.Generator) -> list[Combination]:
    """The base and `size - 1` distinct one-attribute variants of it."""
    members = [base]
    while len(members) < size:
        attr = SCHEMA[rng.integers(len(SCHEMA))]
        others = [v for v in attr.values if v != base[attr.name]]
        variant = base.replace(**{attr.name: others[rng.integers(len(others))]})
        if variant not in members:
            members.append(variant)
    return members


def design_world(num_classes: int, seed: int) -> World:
    """The benchmark's classes for `seed` (no images): deterministic, independent of anything else."""
    if num_classes < 2:
        raise ValueError(f"a zero-shot world needs at least 2 classes (one per side), got {num_classes}")
    rng = np.random.default_rng([seed, 0])  # stream 0: the design; images use stream 1 (generate.py)
    n_train = (num_classes + 1) // 2
    sizes = _family_sizes(n_train, rng) + _family_sizes(num_classes - n_train, rng)
    bases: list[Combination] = []
    while len(bases) < len(sizes):
        candidate = random_combination(rng)
        if all(len(candidate.differing(b)) >= MIN_BASE_DISTANCE for b in bases):
            bases.append(candidate)
    classes: list[SynthClass] = []
    for f, (base, size) in enumerate(zip(bases, sizes)):
        for combo in _family(base, size, rng):
            classes.append(SynthClass(len(classes) + 1, f, combo))
    return World(seed, classes)


def load_world(root: str | Path) -> World:
    """Read world.json from a generated world folder (the CUB_200_2011-style root)."""
    path = Path(root) / WORLD_FILE
    if not path.is_file():
        raise DataError(f"{path}: no such file; is {root} a world written by `saga synth`?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        found = (data.get("format"), data.get("version")) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: not a {FORMAT} version {VERSION} file (found {found})")
    try:
        schema = [(a["name"], tuple(a["values"])) for a in data["schema"]]
        classes = [SynthClass(int(c["id"]), int(c["family"]), Combination.from_dict(c["attributes"]))
                   for c in data["classes"]]
        world = World(int(data["seed"]), classes, int(data["images_per_class"]), int(data["size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed world file ({type(e).__name__}: {e})") from None
    if schema != [(a.name, a.values) for a in SCHEMA]:
        raise DataError(f"{path}: its attribute schema differs from this version of saga.synth.schema")
    if [c.id for c in classes] != list(range(1, len(classes) + 1)):
        raise DataError(f"{path}: class ids must be 1..{len(classes)} in order")
    return world
