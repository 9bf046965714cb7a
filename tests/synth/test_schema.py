"""Attribute schema and combinations: sizes, validation, names, exact-k variation for the judge's pairs."""

import numpy as np
import pytest

from saga.synth.schema import ATTRIBUTE_NAMES, SCHEMA, Combination, combination_pair, random_combination, vary

RED_BIRD = {"body_color": "red", "wing_color": "black", "wing_pattern": "bars", "crest": "none",
            "bill_shape": "short", "tail_shape": "fan", "eye_ring": "white", "breast_pattern": "plain",
            "head_color": "black", "leg_color": "pink"}


def test_schema_has_enough_attributes_and_values():
    assert len(SCHEMA) >= 8
    assert all(3 <= len(a.values) <= 6 and len(set(a.values)) == len(a.values) for a in SCHEMA)
    assert len(set(ATTRIBUTE_NAMES)) == len(SCHEMA)


def test_combination_round_trip_and_name():
    c = Combination.from_dict(RED_BIRD)
    assert c.as_dict() == RED_BIRD
    assert c["crest"] == "none"
    assert c.name == ("Red_Body_Black_Wings_Bars_Wing_Pattern_No_Crest_Short_Bill_Fan_Tail_White_Eyering_"
                      "Plain_Breast_Black_Head_Pink_Legs")
    assert " " not in c.name


def test_combination_rejects_bad_values():
    with pytest.raises(ValueError, match="not a value of crest"):
        Combination.from_dict({**RED_BIRD, "crest": "huge"})
    with pytest.raises(ValueError, match="missing"):
        Combination.from_dict({k: v for k, v in RED_BIRD.items() if k != "crest"})
    with pytest.raises(ValueError, match="needs 10 values"):
        Combination(("red",))


def test_differing_and_replace():
    a = Combination.from_dict(RED_BIRD)
    b = a.replace(crest="tall", leg_color="black")
    assert a.differing(b) == ["crest", "leg_color"]
    assert a.differing(a) == []


def test_vary_and_pairs_differ_in_exactly_k():
    rng = np.random.default_rng(0)
    base = Combination.from_dict(RED_BIRD)
    for k in range(len(SCHEMA) + 1):
        assert len(base.differing(vary(base, k, rng))) == k
        a, b = combination_pair(rng, k)
        assert len(a.differing(b)) == k


def test_random_combination_excludes_and_is_seeded():
    rng = np.random.default_rng(1)
    first = random_combination(np.random.default_rng(1))
    assert random_combination(rng) == first
    again = random_combination(np.random.default_rng(1), exclude={first})
    assert again != first
    a, b = combination_pair(np.random.default_rng(2), 1, exclude={first})
    assert first not in (a, b)
