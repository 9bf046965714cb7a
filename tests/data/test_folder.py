"""Generic image-folder datasets: class halves, split files, skipped files."""

from __future__ import annotations

import json
import logging

import pytest

from saga.cli import main
from saga.data import load_dataset
from saga.data.folder import load_folder
from saga.errors import DataError

CLASSES = {"b_shoe": 2, "a_bag": 3, "d_hat": 2, "c_cup": 1}  # sorted: a_bag 0, b_shoe 1, c_cup 2, d_hat 3


def test_sorted_class_halves(tmp_path, fakes):
    root = fakes.make_folder(tmp_path, CLASSES)
    ds = load_folder(root)
    assert ds.train.class_names == {0: "a_bag", 1: "b_shoe"} and ds.test.class_names == {2: "c_cup", 3: "d_hat"}
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1] and ds.test.labels.tolist() == [2, 3, 3]
    assert ds.train.paths[:2] == [root / "a_bag" / "img_0.jpg", root / "a_bag" / "img_1.jpg"]


def test_odd_class_count_gives_train_the_extra_class(tmp_path, fakes):
    ds = load_folder(fakes.make_folder(tmp_path, {"x": 1, "y": 1, "z": 1}))
    assert ds.info() == {"train": {"classes": 2, "images": 2}, "test": {"classes": 1, "images": 1}}


def test_hidden_and_non_image_files_are_skipped_nested_images_kept(tmp_path, fakes, caplog):
    root = fakes.make_folder(tmp_path, {"a": 1, "b": 1})
    (root / "a" / "._img_0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "a" / ".DS_Store").write_bytes(b"\x00")
    (root / "._a").write_bytes(b"\x00")  # macOS fork of the class folder itself
    (root / ".hidden_class").mkdir()
    fakes.write_jpeg(root / ".hidden_class" / "x.jpg")
    fakes.write_jpeg(root / "b" / "side views" / "IMG_9.JPG")  # nested folder, upper-case suffix
    (root / "b" / "notes.txt").write_text("not an image")
    fakes.write_jpeg(root / "stray.jpg")
    with caplog.at_level(logging.WARNING):
        ds = load_folder(root)
    assert ds.train.paths == [root / "a" / "img_0.jpg"]
    assert ds.test.paths == [root / "b" / "img_0.jpg", root / "b" / "side views" / "IMG_9.JPG"]
    assert "1 files without an image suffix" in caplog.text
    assert "1 images lie directly in the root" in caplog.text


def test_split_file_lists_train_classes(tmp_path, fakes):
    root = fakes.make_folder(tmp_path, CLASSES)
    split = tmp_path / "train_classes.txt"
    split.write_text("d_hat\n\na_bag\n")
    ds = load_dataset("folder", root, split_file=split)
    assert ds.train.class_names == {0: "a_bag", 3: "d_hat"} and ds.test.class_names == {1: "b_shoe", 2: "c_cup"}
    assert ds.train.labels.tolist() == [0, 0, 0, 3, 3] and ds.test.labels.tolist() == [1, 1, 2]


@pytest.mark.parametrize("text, message", [
    ("a_bag\nsandal\n", "line 2: no class folder 'sandal' in the dataset root"),
    ("a_bag\nc_cup\na_bag\n", "line 3: class 'a_bag' already listed on line 1"),
    ("a_bag\nb_shoe\nc_cup\nd_hat\n", "lists every class as a train class"),
    ("\n\n", "lists no train class"),
])
def test_bad_split_files(tmp_path, fakes, text, message):
    root = fakes.make_folder(tmp_path, CLASSES)
    split = tmp_path / "train_classes.txt"
    split.write_text(text)
    with pytest.raises(DataError, match=f"train_classes.txt.*{message}"):
        load_folder(root, split)


def test_bad_roots(tmp_path, fakes):
    with pytest.raises(DataError, match="no such folder; expected a folder with one subfolder of images per class"):
        load_folder(tmp_path / "absent")
    with pytest.raises(DataError, match="found 1 class subfolders; a zero-shot split needs at least 2"):
        load_folder(fakes.make_folder(tmp_path, {"only": 2}))


def test_cli_data_info_with_split_file(tmp_path, fakes, capsys):
    root = fakes.make_folder(tmp_path, CLASSES)
    (tmp_path / "split.txt").write_text("c_cup\n")
    argv = ["data", "info", "--dataset", "folder", "--root", str(root), "--split-file", str(tmp_path / "split.txt")]
    assert main(argv + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"train": {"classes": 1, "images": 1},
                                                   "test": {"classes": 3, "images": 7}}
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == ["train  classes      1  images        1",
                                                    "test   classes      3  images        7"]
