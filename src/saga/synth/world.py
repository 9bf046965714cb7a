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
- A shifted world (`WorldShift`, `saga synth --train-varied/--test-varied/--train-fixed`): the attributes that may
  separate siblings inside training families and inside test families can be chosen (disjoint sets allowed), and
  some attributes can be held fixed across all training classes (at the first training base's values). Then the
  test classes need attributes that the training classes never needed. The default shift gives the default world
  byte for byte: the same random draws, and world.json carries a "shift" entry only when it is not the default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saga.errors import DataError
from saga.synth.schema import ATTRIBUTE_NAMES, SCHEMA, Attribute, Combination, random_combination

WORLD_FILE = "world.json"
FORMAT, VERSION = "saga-synth-world", 1
MIN_BASE_DISTANCE = 5
FAMILY_SIZES = (3, 5)  # inclusive range of a family's number of classes
# Base candidates before a world's constraints are declared unsatisfiable: 200 classes with two attributes fixed
# across the training side place their bases in about 30,000 draws; with three, the training bases (pairwise
# MIN_BASE_DISTANCE apart in the seven free attributes) run out of room near 23 families.
MAX_DRAWS = 200_000


def _names(names: Sequence[str], what: str) -> tuple[str, ...]:
    """Attribute names in schema order (so the draws do not depend on the order given); unknown names are errors."""
    unknown = [n for n in names if n not in ATTRIBUTE_NAMES]
    if unknown:
        raise ValueError(f"{what}: unknown attribute(s) {unknown}; known: {', '.join(ATTRIBUTE_NAMES)}")
    return tuple(n for n in ATTRIBUTE_NAMES if n in names)


@dataclass(frozen=True)
class WorldShift:
    """Which attributes may separate siblings inside training families (`train_varied`) and inside test families
    (`test_varied`), and which are held fixed across all training classes (`train_fixed`). Names are kept in schema
    order. The default (every attribute on both sides, none fixed) is the default world."""

    train_varied: tuple[str, ...] = ATTRIBUTE_NAMES
    test_varied: tuple[str, ...] = ATTRIBUTE_NAMES
    train_fixed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("train_varied", "test_varied", "train_fixed"):
            object.__setattr__(self, name, _names(getattr(self, name), name))
        largest = FAMILY_SIZES[1] + 1  # `_family_sizes` may make one family this large
        for side in ("train_varied", "test_varied"):
            variants = sum(len(a.values) - 1 for a in self.attributes(side))
            if variants < largest - 1:
                raise ValueError(f"{side}: {', '.join(getattr(self, side)) or 'nothing'} give {variants} one-attribute "
                                 f"variants of a base; a family of {largest} needs {largest - 1}")
        both = sorted(set(self.train_fixed) & set(self.train_varied))
        if both:
            raise ValueError(f"{', '.join(both)}: held fixed across the training classes and varied inside training "
                             "families; take them out of train_varied")
        if len(SCHEMA) - len(self.train_fixed) < MIN_BASE_DISTANCE:
            raise ValueError(f"train_fixed: with {len(self.train_fixed)} attributes fixed, training families cannot "
                             f"be {MIN_BASE_DISTANCE} attributes apart")

    def attributes(self, side: str) -> tuple[Attribute, ...]:
        names = getattr(self, side)
        return tuple(a for a in SCHEMA if a.name in names)

    @property
    def is_default(self) -> bool:
        return self == WorldShift()

    def to_json(self, fixed_values: dict[str, str]) -> dict:
        return {"train_varied": list(self.train_varied), "test_varied": list(self.test_varied),
                "train_fixed": fixed_values}


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
    shift: WorldShift = field(default_factory=WorldShift)

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
        shift = {}
        if not self.shift.is_default:  # the default world's file stays byte for byte what it was
            first = self.classes[0].combination
            shift = {"shift": self.shift.to_json({n: first[n] for n in self.shift.train_fixed})}
        return {
            "format": FORMAT, "version": VERSION, "seed": self.seed, "num_classes": len(self.classes),
            "images_per_class": self.images_per_class, "size": self.size, **shift,
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


def _family(base: Combination, size: int, rng: np.random.Generator,
            varied: tuple[Attribute, ...] = SCHEMA) -> list[Combination]:
    """The base and `size - 1` distinct variants of it, each changing one attribute of `varied`."""
    members = [base]
    while len(members) < size:
        attr = varied[rng.integers(len(varied))]
        others = [v for v in attr.values if v != base[attr.name]]
        variant = base.replace(**{attr.name: others[rng.integers(len(others))]})
        if variant not in members:
            members.append(variant)
    return members


def design_world(num_classes: int, seed: int, shift: WorldShift | None = None) -> World:
    """The benchmark's classes for `seed` (no images): deterministic, independent of anything else. `shift`: which
    attributes separate siblings on each side and which are fixed across the training classes (default: none)."""
    if num_classes < 2:
        raise ValueError(f"a zero-shot world needs at least 2 classes (one per side), got {num_classes}")
    shift = shift or WorldShift()
    rng = np.random.default_rng([seed, 0])  # stream 0: the design; images use stream 1 (generate.py)
    n_train = (num_classes + 1) // 2
    train_sizes = _family_sizes(n_train, rng)
    sizes = train_sizes + _family_sizes(num_classes - n_train, rng)
    bases: list[Combination] = []
    for _ in range(MAX_DRAWS):
        if len(bases) == len(sizes):
            break
        candidate = random_combination(rng)
        if bases and len(bases) < len(train_sizes) and shift.train_fixed:  # the first training base sets them
            candidate = candidate.replace(**{n: bases[0][n] for n in shift.train_fixed})
        if all(len(candidate.differing(b)) >= MIN_BASE_DISTANCE for b in bases):
            bases.append(candidate)
    else:
        raise ValueError(f"could not place {len(sizes)} families {MIN_BASE_DISTANCE} attributes apart in "
                         f"{MAX_DRAWS:,} draws; hold fewer attributes fixed (train_fixed: "
                         f"{', '.join(shift.train_fixed)})")
    classes: list[SynthClass] = []
    for f, (base, size) in enumerate(zip(bases, sizes)):
        varied = shift.attributes("train_varied" if f < len(train_sizes) else "test_varied")
        for combo in _family(base, size, rng, varied):
            classes.append(SynthClass(len(classes) + 1, f, combo))
    return World(seed, classes, shift=shift)


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
        shift = data.get("shift")
        shift = WorldShift() if shift is None else WorldShift(
            tuple(shift["train_varied"]), tuple(shift["test_varied"]), tuple(shift["train_fixed"]))
        world = World(int(data["seed"]), classes, int(data["images_per_class"]), int(data["size"]), shift)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed world file ({type(e).__name__}: {e})") from None
    if schema != [(a.name, a.values) for a in SCHEMA]:
        raise DataError(f"{path}: its attribute schema differs from this version of saga.synth.schema")
    if [c.id for c in classes] != list(range(1, len(classes) + 1)):
        raise DataError(f"{path}: class ids must be 1..{len(classes)} in order")
    return world
