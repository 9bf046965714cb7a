"""The "synth" dataset: CUB loader + world.json attributes, zero-shot halves, mismatch detection."""

import json

import pytest

from saga.data import load_dataset
from saga.errors import DataError
from saga.synth import generate_world


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("synth") / "w", 6, 2, 32, seed=1, workers=1)


def test_load_synth_splits_and_attributes(root):
    ds = load_dataset("synth", root)
    assert ds.name == "synth"
    assert ds.info() == {"train": {"classes": 3, "images": 6}, "test": {"classes": 3, "images": 6}}
    assert sorted(ds.train.class_names) == [0, 1, 2] and sorted(ds.test.class_names) == [3, 4, 5]
    meta = json.loads((root / "world.json").read_text())
    assert ds.class_attributes == {c["id"] - 1: c["attributes"] for c in meta["classes"]}
    for path, label in zip(ds.test.paths, ds.test.labels):
        assert path.parent.name == ds.test.class_names[int(label)]
    assert load_dataset("synth", root.parent).info() == ds.info()  # the parent folder works too, as for CUB


def test_load_synth_detects_mixed_worlds(root, tmp_path):
    meta = json.loads((root / "world.json").read_text())
    meta["classes"][0]["attributes"]["crest"] = "tall" if meta["classes"][0]["attributes"]["crest"] != "tall" \
        else "none"
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("images.txt", "image_class_labels.txt", "classes.txt"):
        (bad / name).write_text((root / name).read_text())
    (bad / "images").symlink_to(root / "images")
    (bad / "world.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="class 1 is .* but classes.txt says"):
        load_dataset("synth", bad)
    with pytest.raises(DataError, match="split file"):
        load_dataset("synth", root, split_file="x.txt")
