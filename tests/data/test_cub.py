"""CUB-200-2011 loader on generated mini sets in the archive layout."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from saga.cli import main
from saga.data import load_dataset, read_cub_attributes
from saga.data.base import OfficialCounts
from saga.data.cub import load_cub
from saga.errors import DataError


def test_class_halves_labels_and_paths(tmp_path, fakes):
    root = fakes.make_cub(tmp_path, num_classes=4, per_class=2)
    ds = load_dataset("cub", root)
    # classes 1-2 train, 3-4 test; label = class id - 1; train_test_split.txt (alternating 0/1) is ignored
    assert ds.train.labels.tolist() == [0, 0, 1, 1] and ds.test.labels.tolist() == [2, 2, 3, 3]
    assert ds.train.paths[0] == root / "images" / "001.Bird_1" / "Bird_1_0.jpg"
    assert ds.test.paths[-1] == root / "images" / "004.Bird_4" / "Bird_4_1.jpg"
    assert ds.train.class_names == {0: "001.Bird_1", 1: "002.Bird_2"}
    assert ds.test.class_names == {2: "003.Bird_3", 3: "004.Bird_4"}
    assert ds.root == root and ds.name == "cub"


def test_root_may_be_the_parent_folder(tmp_path, fakes):
    root = fakes.make_cub(tmp_path, num_classes=3, per_class=1)
    (tmp_path / "._CUB_200_2011").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork beside it
    ds = load_cub(tmp_path)
    assert ds.root == root
    assert ds.info() == {"train": {"classes": 2, "images": 2}, "test": {"classes": 1, "images": 1}}


def test_missing_root_says_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="no such folder; expected the CUB_200_2011 folder"):
        load_cub(tmp_path / "absent")
    with pytest.raises(DataError, match="no images.txt here or in a subfolder"):
        load_cub(tmp_path)


def test_missing_image_names_annotation_line_and_path(tmp_path, fakes):
    root = fakes.make_cub(tmp_path, num_classes=2, per_class=2)
    missing = root / "images" / "002.Bird_2" / "Bird_2_0.jpg"
    missing.unlink()
    with pytest.raises(DataError) as e:
        load_cub(root)
    assert str(e.value) == f"{root / 'images.txt'}, line 3: image {missing} does not exist"


@pytest.mark.parametrize("file, text, message", [
    ("image_class_labels.txt", "1 1\n2 1\n3\n4 2\n", "image_class_labels.txt, line 3: expected 2 fields, found 1"),
    ("image_class_labels.txt", "1 1\n2 x\n3 2\n4 2\n", "line 2: class id must be an integer, found 'x'"),
    ("image_class_labels.txt", "1 1\n2 1\n3 2\n4 9\n", "line 4: class id 9 is not in classes.txt"),
    ("image_class_labels.txt", "1 1\n2 1\n3 2\n", "images.txt, line 4: image id 4 has no class"),
    ("image_class_labels.txt", "1 1\n1 2\n", "line 2: image id 1 is labelled twice"),
    ("images.txt", "1 001.Bird_1/Bird_1_0.jpg\n1 001.Bird_1/Bird_1_1.jpg\n", "line 2: image id 1 already given"),
    ("classes.txt", "1 001.Bird_1\n0 002.Bird_2\n", "classes.txt, line 2: class ids start at 1, found 0"),
])
def test_malformed_annotations_name_file_and_line(tmp_path, fakes, file, text, message):
    root = fakes.make_cub(tmp_path, num_classes=2, per_class=2)
    (root / file).write_text(text)
    with pytest.raises(DataError, match=message):
        load_cub(root)


def test_full_set_with_too_few_images_fails_the_count_check(tmp_path, fakes):
    root = fakes.make_cub(tmp_path, num_classes=200, per_class=1)  # the official 200 classes, 1 image each
    with pytest.raises(DataError) as e:
        load_cub(root)
    message = str(e.value)
    assert message.startswith(f"{root / 'classes.txt'}: the full cub set does not have its official counts")
    assert "train images: expected 5,864, found 100" in message
    assert "test images: expected 5,924, found 100" in message and "classes" not in message.split("(")[1]


def test_count_check_passes_and_fails_against_given_counts(tmp_path, fakes, caplog):
    root = fakes.make_cub(tmp_path, num_classes=4, per_class=2)
    assert len(load_cub(root, official=OfficialCounts(4, 2, 4, 2, 4)).train) == 4
    with pytest.raises(DataError, match="train classes: expected 3, found 2"):
        load_cub(root, official=OfficialCounts(4, 3, 4, 2, 4))
    with caplog.at_level(logging.WARNING):
        load_cub(root)  # 4 of the official 200 classes: a subset, loaded with a warning
    assert "lists 4 classes, not the official 200" in caplog.text
    load_cub(root, name="synth", official=None)


def test_split_file_is_refused(tmp_path, fakes):
    root = fakes.make_cub(tmp_path)
    with pytest.raises(DataError, match="applies to the 'folder' dataset only"):
        load_dataset("cub", root, split_file=tmp_path / "train.txt")


def test_attributes_with_extra_fields_and_both_locations(tmp_path, fakes):
    root = fakes.make_cub(tmp_path, num_classes=2, per_class=1, attributes=True)  # attributes.txt in the root
    (root / "attributes" / "image_attribute_labels.txt").write_text(
        "1 1 1 4 2.5\n"
        "1 2 0 2 0.0 0 1.3\n"  # the official file has a few lines with extra fields
        "2 3 1 3 7.1\n"
        "1 3 0 1 0.0\n")
    attrs = read_cub_attributes(tmp_path)
    assert attrs.names == ["has_bill_shape::curved", "has_wing_color::blue", "has_crest::yes"]
    assert attrs.image_ids.tolist() == [1, 2]
    assert attrs.paths == [root / "images" / "001.Bird_1" / "Bird_1_0.jpg",
                           root / "images" / "002.Bird_2" / "Bird_2_0.jpg"]
    np.testing.assert_array_equal(attrs.present, [[True, False, False], [False, False, True]])
    np.testing.assert_array_equal(attrs.certainty, [[4, 2, 1], [0, 0, 3]])
    (root / "attributes.txt").rename(root / "attributes" / "attributes.txt")
    assert read_cub_attributes(root).names[2] == "has_crest::yes"


@pytest.mark.parametrize("text, message", [
    ("1 1 1\n", ", line 1: expected 4 fields, found 3"),
    ("1 1 1 4 0.0\n\n1 2 x 4 0.0\n", ", line 3: every field must be an integer, found 'x'"),
    ("1 1 1 4 0.0\n\n1 4 1 4 0.0\n", r", line 3: attribute id is not in .*attributes.txt, found \[1, 4, 1, 4\]"),
    ("9 1 1 4 0.0\n", r", line 1: image id is not in images.txt, found \[9, 1, 1, 4\]"),
    ("1 1 1 4 0.0\n1 2 2 4 0.0\n", r", line 2: is_present must be 0 or 1, found \[1, 2, 2, 4\]"),
    ("1 1 1 4 0.0\n1 2 1 0 0.0\n", r", line 2: certainty must be 1-4, found \[1, 2, 1, 0\]"),
    ("\n", ": no annotation lines"),
])
def test_attribute_errors_name_file_and_line(tmp_path, fakes, text, message):
    root = fakes.make_cub(tmp_path, num_classes=2, per_class=1, attributes=True)
    (root / "attributes" / "image_attribute_labels.txt").write_text(text)
    with pytest.raises(DataError, match=f"image_attribute_labels.txt{message}"):
        read_cub_attributes(root)


def test_missing_attribute_files_are_reported(tmp_path, fakes):
    root = fakes.make_cub(tmp_path, num_classes=2, per_class=1)
    with pytest.raises(DataError, match="no attributes.txt here, in .*attributes or in"):
        read_cub_attributes(root)


def test_attribute_groups_are_the_vocabulary_wherever_attributes_txt_lies(tmp_path, fakes):
    from saga.data import cub_attribute_groups, dataset_vocabulary

    root = fakes.make_cub(tmp_path, num_classes=2, per_class=1, attributes=True)
    (root / "attributes.txt").write_text("1 has_bill_shape::curved\n2 has_bill_shape::dagger\n"
                                         "3 has_wing_color::blue\n4 has_under_tail_color::red\n")
    assert cub_attribute_groups(root) == ["bill shape", "wing color", "under tail color"]
    assert dataset_vocabulary("cub", tmp_path) == ["bill shape", "wing color", "under tail color"]
    (root / "attributes.txt").rename(tmp_path / "attributes.txt")  # where the archive unpacks it
    assert cub_attribute_groups(root) == ["bill shape", "wing color", "under tail color"]
    (tmp_path / "attributes.txt").write_text("1 has_bill_shape\n")
    with pytest.raises(DataError, match=r"attributes.txt, line 1: expected <group>::<value>"):
        cub_attribute_groups(root)


def test_cli_data_info_json(tmp_path, fakes, capsys):
    fakes.make_cub(tmp_path, num_classes=5, per_class=3)
    assert main(["data", "info", "--dataset", "cub", "--root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"train": {"classes": 3, "images": 9},
                                                   "test": {"classes": 2, "images": 6}}
    assert main(["data", "info", "--dataset", "cub", "--root", str(tmp_path / "none")]) == 2
    assert "saga: error: " in capsys.readouterr().err


def test_a_full_set_with_other_counts_loads_on_purpose_with_a_warning(tmp_path, fakes, caplog, capsys):
    """A full CUB copy with images held out on purpose: refused by default, loaded with --no-count-check
    (data.check_counts: false) with a warning giving expected vs found."""
    root = fakes.make_cub(tmp_path, num_classes=200, per_class=1)
    assert main(["data", "info", "--dataset", "cub", "--root", str(root)]) == 2
    assert "--no-count-check" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("cub", root, check_counts=False)
        assert main(["data", "info", "--dataset", "cub", "--root", str(root), "--no-count-check", "--json"]) == 0
    assert ds.info() == {"train": {"classes": 100, "images": 100}, "test": {"classes": 100, "images": 100}}
    assert "train images: expected 5,864, found 100" in caplog.text and "count check off" in caplog.text
    assert json.loads(capsys.readouterr().out)["train"]["images"] == 100
