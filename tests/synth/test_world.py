"""Class design: families of close relatives, whole families per split side, world.json round trip."""

import itertools
import json

import pytest

from saga.errors import DataError
from saga.synth.world import MIN_BASE_DISTANCE, WorldShift, design_world, load_world, varied_attributes


@pytest.fixture(scope="module")
def world():
    return design_world(200, seed=0)


def test_two_hundred_unique_classes(world):
    assert [c.id for c in world.classes] == list(range(1, 201))
    assert len({c.combination for c in world.classes}) == 200
    assert len({c.folder for c in world.classes}) == 200
    assert world.num_train_classes == 100


def test_family_members_differ_in_one_or_two_attributes(world):
    for members in world.families().values():
        assert 3 <= len(members) <= 6
        for a, b in itertools.combinations(members, 2):
            assert len(a.combination.differing(b.combination)) in (1, 2)


def test_classes_of_different_families_differ_in_at_least_three(world):
    for a, b in itertools.combinations(world.classes, 2):
        if a.family != b.family:
            assert len(a.combination.differing(b.combination)) >= MIN_BASE_DISTANCE - 2


def test_each_split_side_holds_whole_families(world):
    for members in world.families().values():
        sides = {m.id <= world.num_train_classes for m in members}
        assert len(sides) == 1
        assert [m.id for m in members] == list(range(members[0].id, members[-1].id + 1))  # contiguous


def test_design_is_seeded(world):
    assert design_world(200, 0).classes == world.classes
    assert design_world(200, 1).classes != world.classes


def test_odd_and_tiny_worlds():
    odd = design_world(7, 3)
    assert odd.num_train_classes == 4 and len(odd.classes) == 7
    tiny = design_world(2, 0)
    assert len(tiny.families()) == 2
    with pytest.raises(ValueError):
        design_world(1, 0)


def test_varied_attributes(world):
    members = world.families()[0]
    varied = varied_attributes(members)
    changed = {n for m in members for n in members[0].combination.differing(m.combination)}
    assert set(varied) == changed


def test_world_json_round_trip(tmp_path):
    world = design_world(13, seed=4)
    world.images_per_class, world.size = 5, 64
    (tmp_path / "world.json").write_text(json.dumps(world.to_json()))
    back = load_world(tmp_path)
    assert back.classes == world.classes
    assert (back.seed, back.images_per_class, back.size) == (4, 5, 64)
    data = world.to_json()
    assert data["split"] == {"rule": data["split"]["rule"], "train_classes": [1, 2, 3, 4, 5, 6, 7],
                             "test_classes": [8, 9, 10, 11, 12, 13]}
    assert sorted(c for f in data["families"] for c in f["classes"]) == list(range(1, 14))


def test_load_world_rejects_bad_files(tmp_path, world):
    with pytest.raises(DataError, match="no such file"):
        load_world(tmp_path)
    path = tmp_path / "world.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_world(tmp_path)
    data = world.to_json()
    data["classes"][3]["attributes"]["crest"] = "huge"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="world.json: malformed.*huge"):
        load_world(tmp_path)
    data = world.to_json()
    data["schema"][0]["values"].append("purple")
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="schema differs"):
        load_world(tmp_path)


# ---------------------------------------------------------------- shifted worlds
SHAPES = ("crest", "tail_shape")  # what separates test siblings and never varies among the training classes
OTHERS = ("body_color", "wing_color", "wing_pattern", "bill_shape", "eye_ring", "breast_pattern", "head_color",
          "leg_color")


def test_the_default_shift_is_the_default_world(world):
    """The sha256 of design_world(200, 0).to_json() dumped as generate_world writes it (indent=1), computed at
    commit 275d960, before shifted worlds existed."""
    import hashlib

    assert design_world(200, 0, WorldShift()).classes == world.classes
    text = json.dumps(world.to_json(), indent=1)
    assert "shift" not in world.to_json()
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "01d56fc0b035203a09a59bf7754a1b5c29793f98bb1dd5de383bcab884137adc")


@pytest.fixture(scope="module")
def shifted():
    return design_world(200, 0, WorldShift(train_varied=OTHERS, test_varied=SHAPES, train_fixed=SHAPES))


def test_siblings_differ_only_in_their_side_s_attributes(shifted):
    n_train = shifted.num_train_classes
    for members in shifted.families().values():
        allowed = OTHERS if members[0].id <= n_train else SHAPES
        assert set(varied_attributes(members)) <= set(allowed)
    tested = {a for m in shifted.families().values() if m[0].id > n_train for a in varied_attributes(m)}
    assert tested == set(SHAPES)  # every test-separating attribute is used


def test_fixed_attributes_are_the_same_on_every_training_class(shifted):
    train = [c for c in shifted.classes if c.id <= shifted.num_train_classes]
    for name in SHAPES:
        assert len({c.combination[name] for c in train}) == 1
    test = [c for c in shifted.classes if c.id > shifted.num_train_classes]
    assert all(len({c.combination[n] for c in test}) > 1 for n in SHAPES)  # the test side is free
    for a, b in itertools.combinations(shifted.classes, 2):  # families stay apart
        if a.family != b.family:
            assert len(a.combination.differing(b.combination)) >= MIN_BASE_DISTANCE - 2


def test_a_shifted_world_json_records_the_shift_and_round_trips(tmp_path, shifted):
    data = shifted.to_json()
    first = shifted.classes[0].combination
    assert data["shift"] == {"train_varied": list(OTHERS), "test_varied": list(SHAPES),
                             "train_fixed": {n: first[n] for n in SHAPES}}
    (tmp_path / "world.json").write_text(json.dumps(data))
    back = load_world(tmp_path)
    assert back.shift == shifted.shift and back.classes == shifted.classes
    order = WorldShift(train_varied=tuple(reversed(OTHERS)), test_varied=SHAPES, train_fixed=SHAPES)
    assert design_world(200, 0, order).classes == shifted.classes  # names are taken in schema order
    assert design_world(200, 1, shifted.shift).classes != shifted.classes


@pytest.mark.parametrize("kwargs, message", [
    ({"test_varied": ("crest", "colour")}, "unknown attribute"),
    ({"test_varied": ("leg_color",)}, "give 2 one-attribute variants"),
    ({"train_varied": ("crest", "bill_shape"), "train_fixed": ("crest",)}, "crest: held fixed"),
    ({"train_fixed": OTHERS[:6], "train_varied": SHAPES + ("leg_color",)}, "cannot be 5 attributes apart"),
])
def test_impossible_shifts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorldShift(**kwargs)


def test_a_world_without_room_for_its_families_is_refused(monkeypatch):
    import saga.synth.world as world_module

    monkeypatch.setattr(world_module, "MAX_DRAWS", 2_000)
    with pytest.raises(ValueError, match="hold fewer attributes fixed"):
        design_world(200, 0, WorldShift(train_varied=OTHERS[4:], test_varied=SHAPES,
                                        train_fixed=SHAPES + ("bill_shape",)))
