"""Class design: families of close relatives, whole families per split side, world.json round trip."""

import itertools
import json

import pytest

from saga.errors import DataError
from saga.synth.world import MIN_BASE_DISTANCE, design_world, load_world, varied_attributes


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
