"""Write a rendered world's annotations in the CUB_200_2011 layout (docs/method.md, "Protocol"), so the CUB loader
reads it (saga.data.cub.load_cub with official=None) and CUB tools see familiar files:

    images.txt                          "<image id> <ccc.Class_Name>/<file>.jpg"
    image_class_labels.txt              "<image id> <class id>"
    classes.txt                         "<class id> <ccc.Class_Name>"
    train_test_split.txt                "<image id> <is_training>": CUB's closed-set split, which the zero-shot
                                        protocol does not use; here the first half of each class's images is 1
    bounding_boxes.txt                  "<image id> <x> <y> <width> <height>" of the whole bird, occluded or not
    attributes/attributes.txt           "<attribute id> has_<attribute>::<value>", schema order
    attributes/certainties.txt          CUB's certainty scale
    attributes/image_attribute_labels.txt  "<image id> <attribute id> <is_present> <certainty> <time>"

Image attribute labels are the class's combination (the truth by construction): certainty 4 ("definitely") and
time 0 for every line, also when an occluder happens to hide the part (occlusion is not tracked per part).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from saga.synth.schema import SCHEMA
from saga.synth.world import SynthClass

Box = tuple[float, float, float, float]
CERTAINTIES = ("not visible", "guessing", "probably", "definitely")
# Everything `saga synth` writes at the top of its output folder (it may replace these, and nothing else).
OUTPUTS = ("images", "attributes", "images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt",
           "bounding_boxes.txt", "world.json", "preview.png")


def image_file(cls: SynthClass, index: int) -> str:
    """Path under images/ of image `index` (0-based) of a class."""
    return f"{cls.folder}/{cls.id:03d}_{index + 1:04d}.jpg"


def image_id(cls: SynthClass, index: int, images_per_class: int) -> int:
    """1-based, class by class: the images of class k are ids (k-1)*n+1 .. k*n."""
    return (cls.id - 1) * images_per_class + index + 1


def attribute_names() -> list[str]:
    """CUB-style attribute names in id order: "has_body_color::red", ..."""
    return [f"has_{a.name}::{v}" for a in SCHEMA for v in a.values]


def write_cub_files(out: Path, classes: Sequence[SynthClass], images_per_class: int,
                    boxes: Sequence[Sequence[Box]]) -> None:
    """All annotation files; `boxes[k][i]` is the box of image i of classes[k]. The attribute labels are written
    last: `generate.world_complete` takes them as the sign of a finished world."""
    images, labels, split, bbox, attr_lines = [], [], [], [], []
    names = attribute_names()
    for cls, class_boxes in zip(classes, boxes):
        present = [int(cls.combination[a.name] == v) for a in SCHEMA for v in a.values]  # = names' order
        for i, (x, y, w, h) in enumerate(class_boxes):
            k = image_id(cls, i, images_per_class)
            images.append(f"{k} {image_file(cls, i)}")
            labels.append(f"{k} {cls.id}")
            split.append(f"{k} {int(i < (images_per_class + 1) // 2)}")
            bbox.append(f"{k} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
            attr_lines.extend(f"{k} {a} {p} 4 0" for a, p in enumerate(present, start=1))

    def write(name: str, lines: list[str]) -> None:
        (out / name).write_text("\n".join(lines) + "\n")

    (out / "attributes").mkdir(exist_ok=True)
    write("images.txt", images)
    write("image_class_labels.txt", labels)
    write("classes.txt", [f"{c.id} {c.folder}" for c in classes])
    write("train_test_split.txt", split)
    write("bounding_boxes.txt", bbox)
    write("attributes/attributes.txt", [f"{i} {n}" for i, n in enumerate(names, start=1)])
    write("attributes/certainties.txt", [f"{i} {c}" for i, c in enumerate(CERTAINTIES, start=1)])
    write("attributes/image_attribute_labels.txt", attr_lines)
