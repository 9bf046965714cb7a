"""Split containers, image loading and the checks shared by all loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saga.data import DATASETS, ImageDataset, Split, load_dataset, load_image
from saga.data.base import (DatasetSplits, OfficialCounts, compare_counts, find_dataset_dir, first_half, read_fields,
                            require_files, split_by_class)
from saga.errors import ConfigError, DataError


def _splits(tmp_path: Path) -> DatasetSplits:
    paths = [tmp_path / f"{i}.jpg" for i in range(6)]
    labels = np.array([2, 0, 1, 2, 0, 3])
    return split_by_class("toy", tmp_path, paths, labels, {0: "a", 1: "b", 2: "c", 3: "d"}, train_classes={0, 1})


def test_split_by_class_keeps_every_image_on_its_class_side(tmp_path):
    ds = _splits(tmp_path)
    assert [p.name for p in ds.train.paths] == ["1.jpg", "2.jpg", "4.jpg"]
    assert ds.train.labels.tolist() == [0, 1, 0] and ds.train.labels.dtype == np.int64
    assert [p.name for p in ds.test.paths] == ["0.jpg", "3.jpg", "5.jpg"]
    assert ds.test.labels.tolist() == [2, 2, 3]
    assert ds.train.class_names == {0: "a", 1: "b"} and ds.test.class_names == {2: "c", 3: "d"}
    assert ds.info() == {"train": {"classes": 2, "images": 3}, "test": {"classes": 2, "images": 3}}
    assert len(ds.train) == 3 and ds.test.num_classes == 2


def test_split_by_class_warns_about_classes_without_images(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = split_by_class("toy", tmp_path, [tmp_path / "x.jpg"], np.array([0]), {0: "a", 1: "empty"}, {0})
    assert "1 classes have no images: empty" in caplog.text
    assert ds.test.class_names == {1: "empty"} and len(ds.test) == 0


def test_split_rejects_labels_of_the_wrong_length(tmp_path):
    with pytest.raises(ValueError, match="2 paths"):
        Split("train", [tmp_path / "a", tmp_path / "b"], np.array([0]), {0: "a"})


def test_first_half_is_in_sorted_order_and_gives_train_the_odd_class():
    assert first_half([4, 2, 3, 1]) == {1, 2}
    assert first_half(range(5)) == {0, 1, 2}
    assert first_half(range(1, 201)) == set(range(1, 101))


def test_check_counts_full_set_subset_and_mismatch(tmp_path, caplog):
    ds = _splits(tmp_path)  # train 2 classes / 3 images, test 2 / 3
    compare_counts(ds, OfficialCounts(4, 2, 3, 2, 3), listed_classes=4, source=tmp_path / "classes.txt")
    compare_counts(ds, OfficialCounts(4, 2, None, 2, None), listed_classes=4, source=tmp_path / "classes.txt")
    with caplog.at_level(logging.WARNING):
        compare_counts(ds, OfficialCounts(10, 5, 50, 5, 50), listed_classes=4, source=tmp_path / "classes.txt")
    assert "lists 4 classes, not the official 10" in caplog.text
    with pytest.raises(DataError) as e:
        compare_counts(ds, OfficialCounts(4, 2, 3, 2, 1_234), listed_classes=4, source=tmp_path / "classes.txt")
    assert str(tmp_path / "classes.txt") in str(e.value)
    assert "test images: expected 1,234, found 3" in str(e.value) and "train" not in str(e.value).split("(")[1]


def test_load_image_converts_to_rgb(tmp_path):
    Image.new("L", (5, 3), 200).save(tmp_path / "gray.png")
    Image.new("RGBA", (2, 2), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    gray = load_image(tmp_path / "gray.png")
    assert gray.mode == "RGB" and gray.size == (5, 3) and gray.getpixel((0, 0)) == (200, 200, 200)
    assert load_image(tmp_path / "alpha.png").getpixel((1, 1)) == (10, 20, 30)


def test_load_image_names_a_corrupt_truncated_or_missing_file(tmp_path, fakes):
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg")
    good = fakes.write_jpeg(tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    for name in ("junk.jpg", "cut.jpg", "missing.jpg"):
        with pytest.raises(DataError, match=str(tmp_path / name)):
            load_image(tmp_path / name)


def test_image_dataset_items(tmp_path, fakes):
    paths = [fakes.write_jpeg(tmp_path / f"{i}.jpg", i) for i in range(3)]
    split = Split("test", paths, np.array([4, 5, 4]), {4: "x", 5: "y"})
    ds = ImageDataset(split)
    image, label = ds[1]
    assert len(ds) == 3 and isinstance(image, Image.Image) and image.size == (8, 8) and label == 5
    assert ImageDataset(split, transform=lambda im: im.size)[2] == ((8, 8), 4)


def test_require_files_names_the_annotation_of_the_first_missing_image(tmp_path, fakes):
    paths = [fakes.write_jpeg(tmp_path / "a" / "1.jpg"), tmp_path / "a" / "2.jpg", tmp_path / "b" / "3.jpg"]
    require_files(paths[:1], lambda i: f"list.txt, line {i + 1}", "toy")
    with pytest.raises(DataError) as e:
        require_files(paths, lambda i: f"list.txt, line {i + 1}", "toy")
    assert str(e.value) == f"list.txt, line 2: image {paths[1]} does not exist (1 more images are missing)"


def test_find_dataset_dir_root_parent_hidden_and_ambiguous(tmp_path):
    (tmp_path / "set" / "CUB").mkdir(parents=True)
    (tmp_path / "set" / "CUB" / "images.txt").write_text("1 a.jpg\n")
    (tmp_path / "set" / "._CUB").mkdir()  # macOS metadata: never a dataset
    (tmp_path / "set" / "._CUB" / "images.txt").write_text("junk")
    found = tmp_path / "set" / "CUB" / "images.txt"
    assert find_dataset_dir(tmp_path / "set" / "CUB", ["images.txt"], "CUB") == found
    assert find_dataset_dir(tmp_path / "set", ["images.txt"], "CUB") == found
    (tmp_path / "set" / "CUB2").mkdir()
    (tmp_path / "set" / "CUB2" / "images.txt").write_text("1 a.jpg\n")
    with pytest.raises(DataError, match="several datasets"):
        find_dataset_dir(tmp_path / "set", ["images.txt"], "CUB")
    with pytest.raises(DataError, match="no such folder; expected the CUB folder"):
        find_dataset_dir(tmp_path / "nowhere", ["images.txt"], "the CUB folder")
    with pytest.raises(DataError, match="set: no classes.txt here or in a subfolder; expected the CUB folder"):
        find_dataset_dir(tmp_path / "set", ["classes.txt"], "the CUB folder")


def test_read_fields_field_counts_and_line_numbers(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("1 Boeing 707-320\n\n2 A300B4 extra\n")
    assert list(read_fields(f, 2, names_last=True)) == [(1, ["1", "Boeing 707-320"]), (3, ["2", "A300B4 extra"])]
    with pytest.raises(DataError, match=rf"{f}, line 1: expected 2 fields, found 3"):
        list(read_fields(f, 2))
    assert [fields for _, fields in read_fields(f, 2, extra_ok=True)] == [["1", "Boeing"], ["2", "A300B4"]]
    f.write_text("1\n")
    with pytest.raises(DataError, match=rf"{f}, line 1: expected 2 fields, found 1"):
        list(read_fields(f, 2, names_last=True))
    with pytest.raises(DataError, match="annotation file does not exist"):
        list(read_fields(tmp_path / "none.txt", 2))


def test_registry_passes_split_file_only_when_given(tmp_path, monkeypatch):
    calls = []

    def loader(root, split_file=None):
        calls.append((root, split_file))
        return _splits(tmp_path)

    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))  # registrations undone after the test
    DATASETS.register("toy", loader)
    assert load_dataset("toy", "r").info()["train"] == {"classes": 2, "images": 3}
    load_dataset("toy", "r", split_file="s.txt")
    DATASETS.register("toy-root-only", lambda root: calls.append(root) or _splits(tmp_path))
    load_dataset("toy-root-only", "r2")
    assert calls == [("r", None), ("r", "s.txt"), "r2"]
    with pytest.raises(ConfigError, match="unknown dataset 'nope'; choose one of \\['cub', 'cars', 'aircraft'"):
        load_dataset("nope", tmp_path)


def test_every_dataset_loads_its_own_format(fakes, synth_world, tmp_path):
    roots = {
        "cub": fakes.make_cub(tmp_path / "cub"),
        "cars": fakes.make_cars(tmp_path / "cars"),
        "aircraft": fakes.make_aircraft(tmp_path / "aircraft", ["A", "B", "C", "D"]),
        "inat_aves": fakes.make_inat(tmp_path / "inat", [1, 2, 3, 4], [9]),
        "folder": fakes.make_folder(tmp_path / "folder", {"a": 2, "b": 2, "c": 2, "d": 2}),
        "synth": synth_world,
    }
    assert set(roots) == set(DATASETS.names())
    for name in DATASETS:
        ds = load_dataset(name, roots[name])
        assert ds.train.num_classes >= 2 and ds.test.num_classes >= 2, name
        assert not set(ds.train.labels) & set(ds.test.labels), name
