"""FGVC-Aircraft 2013b loader on generated mini sets in the archive layout."""

from __future__ import annotations

import json
import logging

import pytest

from saga.cli import main
from saga.data import aircraft, load_dataset
from saga.data.aircraft import load_aircraft
from saga.data.base import OfficialCounts
from saga.errors import DataError

# Not alphabetical: the split must follow variants.txt order. Names carry spaces and a slash, as the real ones do.
VARIANTS = ["Cessna 172", "A300B4", "F/A-18", "Boeing 707-320"]


def test_first_half_of_variants_txt_trains_pooling_all_lists(tmp_path, fakes):
    root = fakes.make_aircraft(tmp_path, VARIANTS)  # image n: list (n-1)//4, variant (n-1)%4
    ds = load_aircraft(root)
    assert ds.train.class_names == {0: "Cessna 172", 1: "A300B4"}
    assert ds.test.class_names == {2: "F/A-18", 3: "Boeing 707-320"}
    assert [p.name for p in ds.train.paths] == ["0000001.jpg", "0000002.jpg", "0000005.jpg", "0000006.jpg",
                                                "0000009.jpg", "0000010.jpg"]
    assert ds.train.labels.tolist() == [0, 1, 0, 1, 0, 1] and ds.test.labels.tolist() == [2, 3, 2, 3, 2, 3]
    assert ds.train.paths[0] == root / "data" / "images" / "0000001.jpg"  # leading zeros of the id are kept


@pytest.mark.parametrize("where", ["dataset", "parent", "data"])
def test_root_may_be_the_dataset_its_parent_or_its_data_folder(tmp_path, fakes, where):
    root = fakes.make_aircraft(tmp_path, VARIANTS)
    given = {"dataset": root, "parent": tmp_path, "data": root / "data"}[where]
    ds = load_dataset("aircraft", given)
    assert ds.root == root and ds.info() == {"train": {"classes": 2, "images": 6}, "test": {"classes": 2, "images": 6}}


def test_missing_image_names_list_line_and_path(tmp_path, fakes):
    root = fakes.make_aircraft(tmp_path, VARIANTS)
    (root / "data" / "images" / "0000007.jpg").unlink()  # the val list's third line
    with pytest.raises(DataError) as e:
        load_aircraft(root)
    assert str(e.value) == (f"{root / 'data' / 'images_variant_val.txt'}, line 3: image "
                            f"{root / 'data' / 'images' / '0000007.jpg'} does not exist")


@pytest.mark.parametrize("file, text, message", [
    ("train", "0000001 Cessna 172\n0000002\n", "train.txt, line 2: expected 2 fields, found 1"),
    ("train", "0000001 Cessna 152\n", "train.txt, line 1: variant 'Cessna 152' is not in"),
    ("val", "0000001 Cessna 172\n", "val.txt, line 1: image 0000001 is already listed at .*train.txt, line 1"),
])
def test_bad_list_lines_name_file_and_line(tmp_path, fakes, file, text, message):
    root = fakes.make_aircraft(tmp_path, VARIANTS)
    (root / "data" / f"images_variant_{file}.txt").write_text(text)
    with pytest.raises(DataError, match=f"images_variant_{message}"):
        load_aircraft(root)


def test_duplicate_variant_in_variants_txt(tmp_path, fakes):
    root = fakes.make_aircraft(tmp_path, VARIANTS)
    (root / "data" / "variants.txt").write_text("A300B4\nCessna 172\nA300B4\n")
    with pytest.raises(DataError, match=r"variants.txt, line 3: variant 'A300B4' already listed on line 1"):
        load_aircraft(root)


def test_missing_list_warns_and_no_list_fails(tmp_path, fakes, caplog):
    root = fakes.make_aircraft(tmp_path, VARIANTS)
    (root / "data" / "images_variant_test.txt").unlink()
    with caplog.at_level(logging.WARNING):
        assert len(load_aircraft(root).train) == 4
    assert "only images_variant_train.txt, images_variant_val.txt found" in caplog.text
    (root / "data" / "images_variant_train.txt").unlink()
    (root / "data" / "images_variant_val.txt").unlink()
    with pytest.raises(DataError, match="none of images_variant_train.txt"):
        load_aircraft(root)


def test_full_set_count_check(tmp_path, fakes, monkeypatch):
    root = fakes.make_aircraft(tmp_path, [f"V{i:03d}" for i in range(100)])  # 100 variants, 3 images each
    with pytest.raises(DataError, match="train images: expected 5,000, found 150; test images: expected 5,000, "
                                        "found 150"):
        load_aircraft(root)
    monkeypatch.setattr(aircraft, "OFFICIAL", OfficialCounts(100, 50, 150, 50, 150))
    assert len(load_aircraft(root).test) == 150


def test_cli_data_info_json(tmp_path, fakes, capsys):
    fakes.make_aircraft(tmp_path, VARIANTS, per_list=2)
    assert main(["data", "info", "--dataset", "aircraft", "--root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"train": {"classes": 2, "images": 12},
                                                   "test": {"classes": 2, "images": 12}}
