"""Render one photograph of a synthetic bird: the bird of bird.py placed in a cluttered scene with per-image nuisance.

Every nuisance is drawn from the image's own generator with the same distribution for every class, so nothing
but the bird's attributes tells classes apart:
- pose: facing left or right, rotation (body tilt), scale, position;
- background: a two-colour gradient, soft noise, and clutter shapes whose colours are drawn half the time from the
  attribute palette (so counting colours is no shortcut), and sometimes a perch under the feet;
- partial occlusion: a foreground patch that may hide a part (and with it, now and then, the deciding attribute);
- light: brightness, contrast, per-channel gain and a hue shift small enough to keep attribute colours apart.
The scene is drawn at twice the output size and reduced with a box filter (anti-aliasing at 64 px).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from saga.synth.bird import FEET, PALETTE, Build, Placement, draw_bird
from saga.synth.schema import Combination

SUPERSAMPLE = 2
_COLOURS = np.array(list(PALETTE.values()), dtype=float)


@dataclass(frozen=True)
class Nuisance:
    """Ranges of the per-image nuisance. `NUISANCE` is the benchmark's; `CLEAN` is a plain, centred bird."""

    max_rotation: float = 20.0  # degrees, either way
    scale: tuple[float, float] = (0.74, 0.92)  # side of the bird's canonical square / image side
    max_shift: float = 0.04  # of the image side, each axis
    flip_prob: float = 0.5  # facing left
    clutter: tuple[int, int] = (3, 9)  # number of background shapes, inclusive
    perch_prob: float = 0.6
    occlusion_prob: float = 0.3
    occluder_size: tuple[float, float] = (0.18, 0.32)  # of the image side
    individual: bool = True  # per-individual proportions (bird.Build)
    brightness: float = 0.15  # factor in 1 +- this
    contrast: float = 0.15
    gain: float = 0.04  # per channel
    hue_degrees: float = 8.0
    noise_std: float = 3.0  # grey levels


NUISANCE = Nuisance()
CLEAN = Nuisance(max_rotation=0.0, scale=(0.9, 0.9), max_shift=0.0, flip_prob=0.0, clutter=(0, 0), perch_prob=0.0,
                 occlusion_prob=0.0, individual=False, brightness=0.0, contrast=0.0, gain=0.0, hue_degrees=0.0,
                 noise_std=0.0)


@dataclass(frozen=True)
class Rendered:
    image: Image.Image  # RGB, size x size
    box: tuple[float, float, float, float]  # the bird's bounding box: x, y, width, height in pixels (CUB format)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Half the time an attribute colour, else a random muted one (foliage, sky, bark and the like)."""
    if rng.random() < 0.5:
        c = _COLOURS[rng.integers(len(_COLOURS))]
    else:
        c = rng.uniform(40, 230, size=3)
        c = c + (c.mean() - c) * rng.uniform(0.2, 0.7)  # desaturate toward grey
    return tuple(int(v) for v in c)  # type: ignore[return-value]


def _shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, px: int, centre: np.ndarray, radius: float) -> None:
    """One random blob, polygon or branch of about `radius` pixels around `centre`."""
    kind, fill = rng.integers(3), _colour(rng)
    if kind == 0:
        rx, ry = radius * rng.uniform(0.4, 1.0, size=2)
        draw.ellipse([centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry], fill=fill)
    elif kind == 1:
        n = int(rng.integers(3, 7))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = radius * rng.uniform(0.4, 1.0, n)
        draw.polygon([tuple(v) for v in centre + np.stack([r * np.cos(a), r * np.sin(a)], 1)], fill=fill)
    else:
        a = rng.uniform(0, np.pi)
        d = radius * 1.5 * np.array([np.cos(a), np.sin(a)])
        draw.line([tuple(centre - d), tuple(centre + d)], fill=fill, width=max(2, int(px * rng.uniform(0.01, 0.04))))


def _background(rng: np.random.Generator, px: int, clutter: int) -> Image.Image:
    """A vertical two-colour gradient with soft blotches (built on a 6 x 6 grid, enlarged bilinearly), then shapes."""
    top, bottom = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    t = np.linspace(0, 1, 6, dtype=np.float32)[:, None, None]
    grid = top + (bottom - top) * t + rng.uniform(-20, 20, (6, 6, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize((px, px), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(clutter):
        _shape(draw, rng, px, rng.uniform(0, px, 2), px * rng.uniform(0.05, 0.25))
    return img


def _hue_matrix(degrees: float) -> np.ndarray:
    """Rotation of hue about the grey axis, luminance kept (the matrix of the CSS/SVG hue-rotate filter)."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    lum = np.array([0.213, 0.715, 0.072])
    return (np.tile(lum, (3, 1)) + c * np.array([[0.787, -0.715, -0.072], [-0.213, 0.285, -0.072],
                                                 [-0.213, -0.715, 0.928]])
            + s * np.array([[-0.213, -0.715, 0.928], [0.143, 0.140, -0.283], [-0.787, 0.715, 0.072]]))


def _light(img: Image.Image, rng: np.random.Generator, nz: Nuisance) -> Image.Image:
    """Hue rotation, brightness, contrast (about mid-grey) and per-channel gain as one affine colour map
    (applied by PIL in C), then Gaussian sensor noise."""
    hue = _hue_matrix(rng.uniform(-1, 1) * nz.hue_degrees)
    bright = 1 + rng.uniform(-1, 1) * nz.brightness
    contrast = 1 + rng.uniform(-1, 1) * nz.contrast
    gain = 1 + rng.uniform(-1, 1, 3) * nz.gain
    # out = gain * bright * (contrast * (hue @ x - 128) + 128); about a fixed grey, not the image mean, so the
    # colour map of a scene does not depend on the bird (else one attribute would shift every pixel a little)
    matrix = (gain * bright * contrast)[:, None] * hue
    offset = gain * bright * (1 - contrast) * 128.0
    img = img.convert("RGB", tuple(np.concatenate([matrix, offset[:, None]], axis=1).ravel().tolist()))
    noise = rng.standard_normal((img.height, img.width, 3), dtype=np.float32) * nz.noise_std
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).round().astype(np.uint8))


def render_scene(combo: Combination, rng: np.random.Generator, size: int, nuisance: Nuisance = NUISANCE) -> Rendered:
    """The image and the bird's bounding box. Deterministic given the generator's state."""
    nz, px = nuisance, size * SUPERSAMPLE
    # pose first, in a fixed order, so its distribution is the same for every class
    flip = rng.random() < nz.flip_prob
    angle = rng.uniform(-1, 1) * nz.max_rotation
    scale = rng.uniform(*nz.scale)
    shift = rng.uniform(-1, 1, 2) * nz.max_shift * px
    build = Build.random(rng) if nz.individual else Build()
    place = Placement.make(px, flip, angle, scale, (float(shift[0]), float(shift[1])))

    scene = _background(rng, px, int(rng.integers(nz.clutter[0], nz.clutter[1] + 1)))
    if rng.random() < nz.perch_prob:  # a branch through the feet, drawn under the bird
        foot = place(FEET.mean(axis=0))[0]
        along = place.matrix @ np.array([1.0, 0.0]) / place.unit * px  # the bird's horizontal, a side long
        brown = tuple(int(v) for v in rng.uniform([70, 45, 20], [150, 110, 70]))
        ImageDraw.Draw(scene).line([tuple(foot - along), tuple(foot + along)], fill=brown, width=max(3, px // 30))
    x0, y0, x1, y1 = (float(v) for v in np.clip(draw_bird(scene, combo, place, build), 0, px))
    box = (x0 / SUPERSAMPLE, y0 / SUPERSAMPLE, (x1 - x0) / SUPERSAMPLE, (y1 - y0) / SUPERSAMPLE)

    if rng.random() < nz.occlusion_prob:  # a foreground patch centred somewhere in the bird's box
        centre = rng.uniform([x0, y0], [x1, y1])
        _shape(ImageDraw.Draw(scene), rng, px, centre, px * rng.uniform(*nz.occluder_size) / 2)
    image = scene.reduce(SUPERSAMPLE)
    return Rendered(_light(image, rng, nz), box)


def render(combo: Combination, rng: np.random.Generator, size: int, nuisance: Nuisance = NUISANCE) -> Image.Image:
    """An RGB size x size image of a bird of class `combo` (for the judge: any combination, not only benchmark ones)."""
    return render_scene(combo, rng, size, nuisance).image
