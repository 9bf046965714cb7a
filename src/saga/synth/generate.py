"""`saga synth`: render a world's images in parallel and write it in the CUB_200_2011 layout.

Reproducible to the byte: image i of class k is drawn from its own generator, seeded by (seed, 1, k, i), so the
output does not depend on the number of workers or the order in which they finish; JPEG settings are fixed.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from saga.errors import ConfigError
from saga.progress import progress
from saga.synth.layout import OUTPUTS, Box, image_file, write_cub_files
from saga.synth.preview import write_preview
from saga.synth.render import NUISANCE, render_scene
from saga.synth.world import WORLD_FILE, SynthClass, WorldShift, design_world, load_world

# 4:4:4 chroma: with the default 4:2:0 subsampling a 2-pixel eye ring at 64 px bleeds into its neighbours.
JPEG = {"quality": 90, "subsampling": 0}
MIN_SIZE = 32  # below this the eye ring and wing marks are a pixel or less


def image_rng(seed: int, class_id: int, index: int) -> np.random.Generator:
    """The generator of one image (stream 1; stream 0 designs the classes, see world.design_world)."""
    return np.random.default_rng([seed, 1, class_id, index])


@dataclass(frozen=True)
class _ClassJob:
    cls: SynthClass
    images_per_class: int
    size: int
    seed: int
    images_dir: Path


def _render_class(job: _ClassJob) -> list[Box]:
    """Render and save every image of one class (in a worker); returns their bounding boxes."""
    boxes = []
    for i in range(job.images_per_class):
        shot = render_scene(job.cls.combination, image_rng(job.seed, job.cls.id, i), job.size)
        shot.image.save(job.images_dir / image_file(job.cls, i), format="JPEG", **JPEG)
        boxes.append(shot.box)
    return boxes


def _prepare(out: Path) -> None:
    """An empty or new folder, or an earlier world (recognised by its world.json), whose outputs are removed."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
    if not (out / WORLD_FILE).is_file() or foreign:
        raise ConfigError(f"{out}: not empty and not a world written by `saga synth` "
                          f"(found {', '.join(foreign[:3]) or 'no ' + WORLD_FILE}); give a new or empty folder")
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def world_complete(out: str | Path) -> bool:
    """Whether `out` holds a whole `generate_world` output: world.json is written first (so that a rerun recognises
    an interrupted world and replaces it), the annotation files last, after every image; the attribute labels are
    the last of those (`write_cub_files`)."""
    out = Path(out)
    return (out / WORLD_FILE).is_file() and (out / "attributes" / "image_attribute_labels.txt").is_file()


def ensure_world(out: str | Path, num_classes: int = 200, images_per_class: int = 60, size: int = 128,
                 seed: int = 0, *, shift: WorldShift | None = None, preview: bool = True,
                 asked_by: str = "asked") -> Path:
    """Render the world into `out` unless a complete one is there; a complete world of other parameters is an
    error (it would silently be another benchmark) and nothing is deleted. The defaults are `saga synth`'s."""
    out = Path(out)
    wanted = {"num_classes": num_classes, "images_per_class": images_per_class, "size": size, "seed": seed,
              "shift": shift or WorldShift()}
    if not world_complete(out):  # world.json alone is what an interrupted render leaves
        shown = {k: v for k, v in wanted.items() if k != "shift" or not v.is_default}
        print(f"rendering the synthetic world into {out} ({', '.join(f'{k} {v}' for k, v in shown.items())}) ...")
        return generate_world(out, **wanted, preview=preview)
    world = load_world(out)
    found = {"num_classes": len(world.classes), "images_per_class": world.images_per_class, "size": world.size,
             "seed": world.seed, "shift": world.shift}
    differ = [f"{k} {found[k]} ({asked_by}: {v})" for k, v in wanted.items() if found[k] != v]
    if differ:
        raise ConfigError(f"{out / WORLD_FILE}: this world was rendered with {', '.join(differ)}; remove {out} to "
                          "re-render it, or point elsewhere")
    return out


def generate_world(out: str | Path, num_classes: int = 200, images_per_class: int = 60, size: int = 128,
                   seed: int = 0, preview: bool = False, workers: int = 0, shift: WorldShift | None = None) -> Path:
    """Render `num_classes` x `images_per_class` images of `size` px into `out` (CUB_200_2011 layout plus
    world.json; preview.png with `preview`). `workers` = 0: one process per core; `shift`: which attributes separate
    siblings on each side (`world.WorldShift`; None: the default world). Returns `out`.

    Workers are spawned processes: a script that calls this with workers != 1 needs the usual
    `if __name__ == "__main__":` guard."""
    for name, value, low in (("classes", num_classes, 2), ("images per class", images_per_class, 1),
                             ("size", size, MIN_SIZE), ("workers", workers, 0)):
        if value < low:
            raise ConfigError(f"saga synth: {name} must be at least {low}, got {value}")
    out = Path(out)
    try:
        world = design_world(num_classes, seed, shift)
    except ValueError as e:
        raise ConfigError(f"saga synth: {e}") from None
    _prepare(out)
    world.images_per_class, world.size = images_per_class, size
    # world.json first: an interrupted run leaves a folder that a rerun recognises and replaces
    meta = world.to_json() | {"render": {"jpeg": JPEG, "nuisance": asdict(NUISANCE)}}
    (out / WORLD_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    for c in world.classes:
        (out / "images" / c.folder).mkdir(parents=True)

    jobs = [_ClassJob(c, images_per_class, size, seed, out / "images") for c in world.classes]
    workers = min(workers or _cpus(), len(jobs))
    boxes: list[list[Box]] = []
    # spawn, not fork: the parent may hold torch's thread pools (forking those can deadlock); workers need no torch
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    with pool or contextlib.nullcontext(), progress(total=num_classes * images_per_class, desc="synth: rendering",
                                                    unit="img") as bar:
        for b in pool.imap(_render_class, jobs) if pool else map(_render_class, jobs):  # both keep class order
            boxes.append(b)
            bar.update(len(b))
    write_cub_files(out, world.classes, images_per_class, boxes)
    if preview:
        write_preview(out)
    return out
