"""The attribute schema of the synthetic birds: ten discrete attributes, and combinations of their values.

A class ("species") is one `Combination`: a value for every attribute of `SCHEMA`, in schema order. The names
follow CUB-200-2011's attribute file (`has_wing_color::blue`), so the world can be written in that format.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Attribute:
    """One discrete attribute and its possible values (3 to 6 of them)."""

    name: str
    values: tuple[str, ...]
    label: str  # the noun used in class names: "Red_Body", "Forked_Tail"


# Colours are spread over hue and lightness so that a small hue/brightness jitter never turns one value into
# another (see render.py, PALETTE). Colour sets differ per part, as in real birds, but overlap on purpose so that
# "there is red somewhere" does not identify a part.
SCHEMA: tuple[Attribute, ...] = (
    Attribute("body_color", ("red", "yellow", "green", "blue", "brown", "grey"), "Body"),
    Attribute("wing_color", ("black", "white", "red", "blue", "yellow", "brown"), "Wings"),
    Attribute("wing_pattern", ("plain", "bars", "spots", "stripes"), "Wing_Pattern"),
    Attribute("crest", ("none", "short", "tall", "swept"), "Crest"),
    Attribute("bill_shape", ("short", "long", "hooked", "thick"), "Bill"),
    Attribute("tail_shape", ("fan", "forked", "pointed", "square"), "Tail"),
    Attribute("eye_ring", ("none", "white", "yellow", "red"), "Eyering"),
    Attribute("breast_pattern", ("plain", "spotted", "streaked", "barred"), "Breast"),
    Attribute("head_color", ("black", "white", "red", "blue", "yellow", "green"), "Head"),
    Attribute("leg_color", ("black", "orange", "pink"), "Legs"),
)
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(a.name for a in SCHEMA)
_INDEX = {a.name: i for i, a in enumerate(SCHEMA)}


@dataclass(frozen=True)
class Combination:
    """A value for every attribute, in `SCHEMA` order. Hashable, so sets of classes can be excluded."""

    values: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(SCHEMA):
            raise ValueError(f"a combination needs {len(SCHEMA)} values, got {len(self.values)}")
        for attr, value in zip(SCHEMA, self.values):
            if value not in attr.values:
                raise ValueError(f"{value!r} is not a value of {attr.name} (one of {', '.join(attr.values)})")

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> Combination:
        missing = [n for n in ATTRIBUTE_NAMES if n not in values]
        extra = [n for n in values if n not in _INDEX]
        if missing or extra:
            raise ValueError(f"attributes missing {missing} / unknown {extra}")
        return cls(tuple(values[n] for n in ATTRIBUTE_NAMES))

    def __getitem__(self, name: str) -> str:
        return self.values[_INDEX[name]]

    def as_dict(self) -> dict[str, str]:
        return dict(zip(ATTRIBUTE_NAMES, self.values))

    def replace(self, **changes: str) -> Combination:
        values = list(self.values)
        for name, value in changes.items():
            values[_INDEX[name]] = value
        return Combination(tuple(values))

    def differing(self, other: Combination) -> list[str]:
        """Names of the attributes whose values differ (the Hamming distance is their number)."""
        return [n for n, a, b in zip(ATTRIBUTE_NAMES, self.values, other.values) if a != b]

    @property
    def name(self) -> str:
        """Readable, unique class name spelling every value: "Red_Body_Black_Wings_Bars_Wing_Pattern_..."."""
        words = []
        for attr, value in zip(SCHEMA, self.values):
            words.append(f"{'No' if value == 'none' else value.capitalize()}_{attr.label}")
        return "_".join(words)


def random_combination(rng: np.random.Generator, exclude: Collection[Combination] = ()) -> Combination:
    """Uniform over all combinations (6*6*4^6*6*3 = 2,654,208), rejecting those in `exclude`.

    The judge is pretrained on such combinations with the benchmark classes excluded (docs/design.md: its "world
    knowledge" must not contain the test species).
    """
    while True:
        combo = Combination(tuple(a.values[rng.integers(len(a.values))] for a in SCHEMA))
        if combo not in exclude:
            return combo


def vary(combo: Combination, k: int, rng: np.random.Generator) -> Combination:
    """A combination that differs from `combo` in exactly `k` attributes, chosen uniformly, each to a new value."""
    if not 0 <= k <= len(SCHEMA):
        raise ValueError(f"k must be in 0..{len(SCHEMA)}, got {k}")
    changes = {}
    for i in rng.choice(len(SCHEMA), size=k, replace=False):
        attr = SCHEMA[int(i)]
        others = [v for v in attr.values if v != combo[attr.name]]
        changes[attr.name] = others[rng.integers(len(others))]
    return combo.replace(**changes)


def combination_pair(
    rng: np.random.Generator, k: int, exclude: Collection[Combination] = ()
) -> tuple[Combination, Combination]:
    """Two combinations that differ in exactly `k` attributes (k = 0: the same class twice), neither in `exclude`."""
    a = random_combination(rng, exclude)
    while True:
        b = vary(a, k, rng)
        if b not in exclude:
            return a, b
