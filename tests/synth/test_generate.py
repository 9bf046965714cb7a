"""`saga synth` end to end on a tiny world: CUB layout line formats, attribute labels, determinism across seeds
and worker counts, the preview, and refusal to overwrite foreign folders."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from saga.cli import main
from saga.errors import ConfigError
from saga.synth.generate import generate_world
from saga.synth.schema import SCHEMA

CLASSES, PER_CLASS, SIZE = 8, 2, 64


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "world"
    assert main(["synth", "--out", str(out), "--classes", str(CLASSES), "--images-per-class", str(PER_CLASS),
                 "--size", str(SIZE), "--seed", "3", "--preview", "--workers", "1"]) == 0
    return out


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_index_files(world):
    meta = json.loads((world / "world.json").read_text())
    names = {c["id"]: c["name"] for c in meta["classes"]}
    assert lines(world / "classes.txt") == [[str(k), names[k]] for k in range(1, CLASSES + 1)]
    assert all(names[k].startswith(f"{k:03d}.") for k in names)
    images = lines(world / "images.txt")
    assert [int(i) for i, _ in images] == list(range(1, CLASSES * PER_CLASS + 1))
    labels = lines(world / "image_class_labels.txt")
    for (image_id, path), (label_id, cls) in zip(images, labels):
        assert image_id == label_id
        assert int(cls) == (int(image_id) - 1) // PER_CLASS + 1  # class by class
        assert path.split("/")[0] == names[int(cls)]
        with Image.open(world / "images" / path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (SIZE, SIZE)
    assert lines(world / "train_test_split.txt") == [[str(i), str(int(i % 2 == 1))]
                                                     for i in range(1, CLASSES * PER_CLASS + 1)]
    for row in lines(world / "bounding_boxes.txt"):
        x, y, w, h = map(float, row[1:])
        assert len(row) == 5 and 0 <= x < x + w <= SIZE and 0 <= y < y + h <= SIZE


def test_attribute_labels_match_class_combinations(world):
    meta = json.loads((world / "world.json").read_text())
    attrs = {int(i): name for i, name in lines(world / "attributes" / "attributes.txt")}
    assert len(attrs) == sum(len(a.values) for a in SCHEMA) == 45
    assert attrs[1] == "has_body_color::red" and attrs[45] == "has_leg_color::pink"
    present: dict[int, set[str]] = {}
    rows = lines(world / "attributes" / "image_attribute_labels.txt")
    assert len(rows) == CLASSES * PER_CLASS * 45
    for image_id, attr, is_present, certainty, time in rows:
        assert (certainty, time) == ("4", "0") and is_present in ("0", "1")
        if is_present == "1":
            present.setdefault(int(image_id), set()).add(attrs[int(attr)])
    for image_id in range(1, CLASSES * PER_CLASS + 1):
        combo = meta["classes"][(image_id - 1) // PER_CLASS]["attributes"]
        assert present[image_id] == {f"has_{k}::{v}" for k, v in combo.items()}


def test_preview_written(world):
    with Image.open(world / "preview.png") as img:
        assert img.width > 2 * 96 and img.height >= 3 * 96  # a label column + 2 images, >= 3 rows


def test_same_seed_same_bytes_any_worker_count(tmp_path, world):
    generate_world(tmp_path / "again", CLASSES, PER_CLASS, SIZE, seed=3, preview=True, workers=2)
    assert digests(tmp_path / "again") == digests(world)


def test_other_seed_other_world(tmp_path, world):
    generate_world(tmp_path / "other", CLASSES, PER_CLASS, SIZE, seed=4, workers=1)
    assert (tmp_path / "other" / "classes.txt").read_text() != (world / "classes.txt").read_text()
    jpegs = [{h for name, h in digests(root).items() if name.endswith(".jpg")} for root in (world, tmp_path / "other")]
    assert len(jpegs[0]) == len(jpegs[1]) == CLASSES * PER_CLASS and not jpegs[0] & jpegs[1]


def test_rerun_replaces_a_world_but_not_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "w"
    generate_world(out, 2, 1, 32, seed=0, workers=1)
    generate_world(out, 2, 2, 32, seed=0, workers=1)  # an earlier world is replaced
    assert len(lines(out / "images.txt")) == 4
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        generate_world(out, 2, 1, 32, seed=0, workers=1)
    assert main(["synth", "--out", str(out), "--classes", "2", "--size", "32"]) == 2
    assert "not a world written by `saga synth`" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="size must be at least 32"):
        generate_world(tmp_path / "small", 2, 1, 16)


def test_world_complete_tells_a_finished_world_from_an_interrupted_one(world, tmp_path):
    from saga.synth.generate import world_complete

    assert world_complete(world)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(world, interrupted)
    (interrupted / "attributes" / "image_attribute_labels.txt").unlink()  # killed before the last annotation file
    assert not world_complete(interrupted)
    assert not world_complete(tmp_path / "missing")


def test_the_default_world_is_byte_for_byte_what_it_was(tmp_path):
    """The sha256 over (relative path, sha256 of the bytes) of every file, in sorted path order, of
    `generate_world(out, 12, 2, 64, seed=0, preview=True, workers=1)`: computed at commit 275d960, before shifted
    worlds existed, with Pillow 13.0.0 and numpy 2.4.6 (other versions of those may encode other JPEG bytes)."""
    out = generate_world(tmp_path / "w", 12, 2, 64, seed=0, preview=True, workers=1)
    h = hashlib.sha256()
    for name, digest in digests(out).items():
        h.update(name.encode() + b"\0" + bytes.fromhex(digest))
    assert h.hexdigest() == "ccc1fe36694cd490987c8372831307d13a48372f2454daf5b60a049750453563"


def test_cli_renders_a_shifted_world_the_same_twice(tmp_path):
    args = ["--classes", "12", "--images-per-class", "1", "--size", "32", "--workers", "1",
            "--train-varied", "body_color", "wing_color", "--test-varied", "crest", "tail_shape",
            "--train-fixed", "crest"]
    assert main(["synth", "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["synth", "--out", str(tmp_path / "b"), *args]) == 0
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    shift = json.loads((tmp_path / "a" / "world.json").read_text())["shift"]
    assert shift["train_varied"] == ["body_color", "wing_color"] and list(shift["train_fixed"]) == ["crest"]
    assert main(["synth", "--out", str(tmp_path / "c"), "--classes", "12", "--test-varied", "leg_color"]) == 2
    assert not (tmp_path / "c").exists()  # refused before anything is written
