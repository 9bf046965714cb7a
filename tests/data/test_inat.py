"""iNaturalist-2021 Aves loader on generated COCO-style annotation files."""

from __future__ import annotations

import json

import pytest

from saga.cli import main
from saga.data import inat, load_dataset
from saga.data.inat import load_inat_aves
from saga.errors import DataError

BIRDS, INSECTS = [20, 3, 12, 25, 7], [5, 9]


def test_birds_sorted_by_category_id_first_half_train(tmp_path, fakes):
    root = fakes.make_inat(tmp_path, BIRDS, INSECTS)
    ds = load_inat_aves(root)
    # Aves ids sorted: 3 7 12 | 20 25 -> labels 0 1 2 | 3 4; the odd species goes to train; insects are left out
    assert ds.train.class_names == {0: "Species 3", 1: "Species 7", 2: "Species 12"}
    assert ds.test.class_names == {3: "Species 20", 4: "Species 25"}
    # images follow the annotation order: species 20 (images 1-2), 3, 12, 25, 7
    assert ds.train.labels.tolist() == [0, 0, 2, 2, 1, 1] and ds.test.labels.tolist() == [3, 3, 4, 4]
    assert ds.test.paths[0] == root / "train_mini" / "00020_Aves_Species_20" / "1.jpg"
    assert ds.root == root


def test_root_may_be_the_folder_its_parent_or_a_json_file(tmp_path, fakes):
    root = fakes.make_inat(tmp_path, BIRDS, INSECTS)
    fakes.make_inat(tmp_path, [3, 7], [], per_species=1, json_name="val.json")  # val.json beside train_mini.json
    expected = {"train": {"classes": 3, "images": 6}, "test": {"classes": 2, "images": 4}}
    assert load_dataset("inat_aves", root).info() == expected  # train_mini.json is preferred
    assert load_dataset("inat_aves", tmp_path).info() == expected
    val = {"train": {"classes": 1, "images": 1}, "test": {"classes": 1, "images": 1}}
    assert load_dataset("inat_aves", root / "val.json").info() == val
    assert load_inat_aves(tmp_path, annotations="val.json").info() == val


def test_missing_image_names_the_json_entry_and_path(tmp_path, fakes):
    root = fakes.make_inat(tmp_path, BIRDS, INSECTS)
    missing = root / "train_mini" / "00012_Aves_Species_12" / "6.jpg"
    missing.unlink()
    with pytest.raises(DataError) as e:
        load_inat_aves(root)
    assert str(e.value) == f"{root / 'train_mini.json'}, images[5] (annotations[5]): image {missing} does not exist"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["categories"][1].pop("class"), r"categories\[1\] lacks one of the fields id, name, class"),
    (lambda c: c["annotations"][2].update(image_id=999), r"annotations\[2\] names image id 999, which is not in"),
    (lambda c: c["annotations"][1].update(image_id=1), r"annotations\[1\]: image id 1 is annotated twice"),
    (lambda c: c.pop("images"), "no list 'images'; not a COCO-style iNat annotation file"),
])
def test_malformed_json_is_reported(tmp_path, fakes, edit, message):
    root = fakes.make_inat(tmp_path, BIRDS, INSECTS)
    coco = json.loads((root / "train_mini.json").read_text())
    edit(coco)
    (root / "train_mini.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=message):
        load_inat_aves(root)


def test_invalid_json_and_missing_file(tmp_path, fakes):
    root = fakes.make_inat(tmp_path, BIRDS, INSECTS)
    (root / "train_mini.json").write_text('{"images": [')
    with pytest.raises(DataError, match="train_mini.json: not a valid JSON file"):
        load_inat_aves(root)
    with pytest.raises(DataError, match="absent.json: annotation file does not exist"):
        load_inat_aves(root / "absent.json")


def test_full_category_list_fails_the_species_count(tmp_path, fakes):
    root = fakes.make_inat(tmp_path, BIRDS, INSECTS, extra_categories=10_000 - 7)  # all 10,000 categories
    with pytest.raises(DataError) as e:
        load_inat_aves(root)
    message = str(e.value)
    assert "train classes: expected 743, found 3" in message and "test classes: expected 743, found 2" in message
    assert "train images: expected 37,150, found 6" in message  # 50 images per species in train_mini.json


def test_full_set_with_official_counts_loads(tmp_path, fakes, monkeypatch):
    root = fakes.make_inat(tmp_path, BIRDS, INSECTS)
    monkeypatch.setattr(inat, "ALL_CATEGORIES", 7)
    monkeypatch.setattr(inat, "AVES_SPECIES", 5)
    monkeypatch.setattr(inat, "IMAGES_PER_SPECIES", {"train_mini.json": 2})
    assert len(load_inat_aves(root).train) == 6
    monkeypatch.setattr(inat, "IMAGES_PER_SPECIES", {"train_mini.json": 3})
    with pytest.raises(DataError, match="train images: expected 9, found 6; test images: expected 6, found 4"):
        load_inat_aves(root)


def test_cli_data_info_json(tmp_path, fakes, capsys):
    root = fakes.make_inat(tmp_path, BIRDS, INSECTS, per_species=1)
    assert main(["data", "info", "--dataset", "inat_aves", "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"train": {"classes": 3, "images": 3},
                                                   "test": {"classes": 2, "images": 2}}
