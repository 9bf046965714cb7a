"""Stanford Cars loader on generated .mat files in both distributions' layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from saga.cli import main
from saga.data import load_dataset
from saga.data.cars import load_cars
from saga.errors import DataError


def test_all_in_one_layout_splits_by_class_ignoring_the_test_flag(tmp_path, fakes):
    root = fakes.make_cars(tmp_path, num_classes=4, per_class=2)  # images 1-8; class k has images 2k-1, 2k
    ds = load_cars(root)
    assert [p.name for p in ds.train.paths] == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    assert ds.train.paths[0] == root / "car_ims" / "000001.jpg"
    assert ds.train.labels.tolist() == [0, 0, 1, 1] and ds.test.labels.tolist() == [2, 2, 3, 3]
    assert ds.test.class_names == {2: "Make 3 Model 2012", 3: "Make 4 Model 2012"}
    assert ds.root == root


def test_devkit_layout(tmp_path, fakes):
    root = fakes.make_cars_devkit(tmp_path, num_classes=4, per_class=3)  # per class: 1 train-folder + 2 test-folder
    ds = load_dataset("cars", tmp_path)  # the parent folder
    assert ds.root == root
    assert ds.train.paths == [root / "cars_train" / "00001.jpg", root / "cars_train" / "00002.jpg",
                              root / "cars_test" / "00001.jpg", root / "cars_test" / "00002.jpg",
                              root / "cars_test" / "00003.jpg", root / "cars_test" / "00004.jpg"]
    assert ds.train.labels.tolist() == [0, 1, 0, 0, 1, 1]
    assert ds.test.labels.tolist() == [2, 3, 2, 2, 3, 3]
    assert ds.info() == {"train": {"classes": 2, "images": 6}, "test": {"classes": 2, "images": 6}}


def test_devkit_without_test_labels_is_explained(tmp_path, fakes):
    root = fakes.make_cars_devkit(tmp_path)
    (root / "devkit" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match="no cars_test_annos_withlabels.mat in"):
        load_cars(root)


def test_single_annotation_entry(tmp_path, fakes):
    root = fakes.make_cars(tmp_path, num_classes=1, per_class=1, num_names=2)  # squeeze_me gives a 0-d struct
    ds = load_cars(root)
    assert ds.train.labels.tolist() == [0] and len(ds.test) == 0 and ds.test.class_names == {1: "Make 2 Model 2012"}


def test_missing_image_names_the_mat_entry_and_path(tmp_path, fakes):
    root = fakes.make_cars(tmp_path)
    (root / "car_ims" / "000003.jpg").unlink()
    with pytest.raises(DataError) as e:
        load_cars(root)
    assert str(e.value) == (f"{root / 'cars_annos.mat'}, annotations(3): image {root / 'car_ims' / '000003.jpg'} "
                            "does not exist")


def test_bad_class_and_bad_files(tmp_path, fakes):
    root = fakes.make_cars(tmp_path, num_classes=2, per_class=1)
    mat = scipy.io.loadmat(root / "cars_annos.mat")
    mat["annotations"][0, 1]["class"] = np.array([[3]], dtype=np.uint8)
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": mat["annotations"], "class_names": mat["class_names"]})
    with pytest.raises(DataError, match=r"annotations\(2\): class 3 is outside 1..2"):
        load_cars(root)
    scipy.io.savemat(root / "cars_annos.mat", {"class_names": mat["class_names"]})
    with pytest.raises(DataError, match="cars_annos.mat: no variable 'annotations'"):
        load_cars(root)
    (root / "cars_annos.mat").write_bytes(b"not a MATLAB file at all, just some bytes" * 4)
    with pytest.raises(DataError, match="cars_annos.mat: cannot read this MATLAB file"):
        load_cars(root)


def test_missing_field_is_named(tmp_path, fakes):
    root = fakes.make_cars(tmp_path, num_classes=2, per_class=1)
    mat = scipy.io.loadmat(root / "cars_annos.mat")
    kept = [f for f in mat["annotations"].dtype.names if f != "relative_im_path"]
    annotations = np.zeros(mat["annotations"].shape, dtype=[(f, "O") for f in kept])
    for f in kept:
        annotations[f] = mat["annotations"][f]
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": mat["class_names"]})
    with pytest.raises(DataError, match="'annotations' has no field 'relative_im_path'"):
        load_cars(root)


def test_full_set_with_too_few_images_fails_the_count_check(tmp_path, fakes):
    root = fakes.make_cars(tmp_path, num_classes=4, per_class=2, num_names=196)  # 196 names: the full set
    with pytest.raises(DataError) as e:
        load_cars(root)
    message = str(e.value)
    assert message.startswith(f"{root / 'cars_annos.mat'}: the full cars set does not have its official counts")
    assert ("(train classes: expected 98, found 4; train images: expected 8,054, found 8; "
            "test classes: expected 98, found 0; test images: expected 8,131, found 0)") in message


def test_cli_data_info_json(tmp_path, fakes, capsys):
    fakes.make_cars(tmp_path, num_classes=3, per_class=2)
    assert main(["data", "info", "--dataset", "cars", "--root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"train": {"classes": 2, "images": 4},
                                                   "test": {"classes": 1, "images": 2}}
