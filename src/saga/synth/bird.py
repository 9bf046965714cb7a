"""Draw one bird: parts laid out in a canonical frame (unit square, facing right), placed into an image by a
similarity transform (`Placement`: flip, rotation, scale, shift), drawn straight onto the scene.

Each attribute of the schema owns one part, drawn in a fixed place so that it reads at 64 px: a large head with a
thick eye ring, bold wing and breast marks, a bill and tail whose silhouettes differ in length and outline. Every
part has a dark outline, so a part stays visible when its colour equals its neighbour's or the background's.
Small per-individual proportions (`Build`) vary inside a class, as individuals of a species do; the scene
(pose, background, light, occlusion) is render.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from saga.synth.schema import Combination

RGB = tuple[int, int, int]

# Attribute colours. Hues are >= 30 degrees apart within each attribute, so the +-8 degree hue jitter of
# render.py never turns one value into another; brown and grey differ from red/blue in lightness and saturation.
PALETTE: dict[str, RGB] = {
    "red": (205, 30, 35), "orange": (245, 135, 20), "yellow": (245, 215, 40), "green": (45, 160, 55),
    "blue": (40, 85, 215), "brown": (125, 78, 38), "grey": (150, 150, 150), "black": (28, 28, 30),
    "white": (245, 245, 240), "pink": (245, 150, 180),
}
OUTLINE: RGB = (22, 20, 18)
BILL: RGB = (70, 62, 55)


@dataclass(frozen=True)
class Build:
    """Individual proportions (multipliers and degree offsets); the defaults are the canonical bird."""

    body_w: float = 1.0
    body_h: float = 1.0
    head_r: float = 1.0
    tail_angle: float = 0.0
    wing_angle: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> Build:
        w, h, r = rng.uniform(0.93, 1.07, size=3)
        ta, wa = rng.uniform(-8.0, 8.0, size=2)
        return cls(float(w), float(h), float(r), float(ta), float(wa))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _rotate(points: np.ndarray, center: tuple[float, float], degrees: float) -> np.ndarray:
    """Rotate (n, 2) points about `center`; in image coordinates (y down) a negative angle turns counter-clockwise."""
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - center) @ rot.T + center


class _Frame:
    """An ellipse's own coordinates: (u, v) in [-1, 1] along its long and short axes -> canonical units."""

    def __init__(self, cx: float, cy: float, rx: float, ry: float, degrees: float):
        self.c, self.r, self.deg = np.array([cx, cy]), np.array([rx, ry]), degrees

    def __call__(self, uv: np.ndarray) -> np.ndarray:
        return _rotate(self.c + np.atleast_2d(uv) * self.r, tuple(self.c), self.deg)

    def outline(self, n: int = 48) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return self(np.stack([np.cos(t), np.sin(t)], axis=1))


class _WingFrame(_Frame):
    """A teardrop: an ellipse whose back half (u < 0) tapers to a point, like a folded wing."""

    @staticmethod
    def half_width(u: np.ndarray | float) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        return np.sqrt(np.clip(1 - u * u, 0, None)) * ((1 + u) / 2) ** 0.6

    def outline(self, n: int = 48) -> np.ndarray:
        u = np.cos(np.linspace(0, 2 * np.pi, n, endpoint=False))
        side = np.where(np.arange(n) < n // 2, 1.0, -1.0)
        return self(np.stack([u, side * self.half_width(u)], axis=1))


@dataclass(frozen=True)
class Placement:
    """Canonical unit coordinates q -> image pixels p = matrix @ q + offset (a similarity, maybe mirrored)."""

    matrix: np.ndarray
    offset: np.ndarray

    @classmethod
    def make(cls, px: int, flip: bool = False, degrees: float = 0.0, scale: float = 1.0,
             shift: tuple[float, float] = (0.0, 0.0)) -> Placement:
        """Mirror about the vertical centre line (facing left), rotate by `degrees` and scale about the image
        centre, then shift by `shift` pixels. `Placement.make(px)` fills a px x px image with the canonical bird."""
        a = np.deg2rad(degrees)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        matrix = scale * px * rot @ np.diag([-1.0 if flip else 1.0, 1.0])
        return cls(matrix, px / 2 + np.asarray(shift, dtype=float) - matrix @ np.array([0.5, 0.5]))

    @property
    def unit(self) -> float:
        """Pixels per canonical unit of length."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        return np.atleast_2d(pts) @ self.matrix.T + self.offset


class _Pen:
    """ImageDraw in canonical units, through a `Placement`; remembers the extent of what it drew (the bird's box)."""

    def __init__(self, image: Image.Image, place: Placement):
        self.draw, self.place, self.unit = ImageDraw.Draw(image), place, place.unit
        self.line_w = max(2, round(image.width / 110))
        self.lo, self.hi = np.full(2, np.inf), np.full(2, -np.inf)

    def _xy(self, pts: np.ndarray, margin: float = 0.0) -> list[tuple[float, float]]:
        p = self.place(pts)
        self.lo, self.hi = np.minimum(self.lo, p.min(0) - margin), np.maximum(self.hi, p.max(0) + margin)
        return [tuple(v) for v in p]

    def polygon(self, pts: np.ndarray, fill: RGB | int | None, outline: bool = True) -> None:
        self.draw.polygon(self._xy(pts), fill=fill, outline=OUTLINE if outline else None,
                          width=self.line_w if outline else 0)

    def line(self, pts: np.ndarray, fill: RGB | int, width: float) -> None:
        w = max(1, round(width * self.unit))
        self.draw.line(self._xy(pts, w / 2), fill=fill, width=w, joint="curve")

    def dot(self, center: np.ndarray, radius: float, fill: RGB | int, outline: bool = False) -> None:
        r = radius * self.unit
        ((x, y),) = self._xy(center, r)
        self.draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=OUTLINE if outline else None,
                          width=self.line_w if outline else 0)


def _tail(shape: str, tilt: float) -> np.ndarray:
    """Tail polygon rooted inside the body's back end, pointing left and slightly down."""
    root = [(0.32, 0.56), (0.32, 0.66)]
    if shape == "fan":  # wide, with a rounded end
        t = np.deg2rad(np.linspace(150, 222, 12))
        tip = np.stack([0.32 + 0.27 * np.cos(t), 0.61 - 0.27 * np.sin(t)], axis=1)
        pts = np.array([root[0], *tip, root[1]])
    elif shape == "forked":  # two long prongs and a deep notch
        pts = np.array([root[0], (0.04, 0.55), (0.17, 0.63), (0.05, 0.76), root[1]])
    elif shape == "pointed":  # long, narrow, one tip
        pts = np.array([root[0], (0.02, 0.69), root[1]])
    else:  # square: straight sides, flat end
        pts = np.array([root[0], (0.11, 0.58), (0.11, 0.72), root[1]])
    return _rotate(pts, (0.32, 0.61), tilt)


def _bill(shape: str) -> np.ndarray:
    if shape == "short":  # small cone
        return np.array([(0.79, 0.335), (0.875, 0.37), (0.79, 0.405)])
    if shape == "long":  # thin and as long as the head is wide
        return np.array([(0.79, 0.35), (0.99, 0.38), (0.79, 0.39)])
    if shape == "hooked":  # raptor bill: arched top, tip bent down below the gape
        return np.array([(0.79, 0.325), (0.86, 0.33), (0.905, 0.36), (0.91, 0.43), (0.885, 0.40),
                         (0.85, 0.395), (0.79, 0.405)])
    return np.array([(0.77, 0.29), (0.93, 0.37), (0.77, 0.45)])  # thick: deep, grosbeak-like


def _crest(shape: str, cx: float, cy: float, r: float) -> list[np.ndarray]:
    """Crest spikes (triangles) on the back of the crown; angles in degrees, -90 is straight up."""
    if shape == "none":
        return []
    if shape == "swept":  # one long plume combed back over the nape
        return [np.array([(cx + 0.01, cy - r + 0.01), (cx - 0.1, cy - r - 0.07), (cx - 0.3, cy - r - 0.07),
                          (cx - 0.13, cy - r - 0.01), (cx - 0.08, cy - r + 0.06)])]
    angles, length = ((-95, -118, -141), 0.075) if shape == "short" else ((-82, -102, -122), 0.19)
    spikes = []
    for deg in angles:
        a = np.deg2rad(deg)
        d, n = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
        base = np.array([cx, cy]) + d * (r - 0.02)
        spikes.append(np.array([base - n * 0.03, base + d * (length + 0.02), base + n * 0.03]))
    return spikes


FEET = np.array([(0.43, 0.85), (0.52, 0.85)])  # canonical toe joints; a perch passes through them
HEAD, HEAD_R = (0.70, 0.36), 0.13
EYE, PUPIL, EYE_RING = (0.74, 0.33), 0.022, 0.065  # radii; the ring band is ~1.5 px wide at 64 px


def draw_bird(image: Image.Image, combo: Combination, place: Placement,
              build: Build = Build()) -> tuple[float, float, float, float]:
    """Draw the bird onto the RGB `image`; returns its box (x0, y0, x1, y1) in pixels."""
    pen = _Pen(image, place)
    body_c, wing_c, head_c = (PALETTE[combo[k]] for k in ("body_color", "wing_color", "head_color"))
    body = _Frame(0.47, 0.56, 0.235 * build.body_w, 0.155 * build.body_h, -15)

    for hip, foot in zip(body(np.array([(-0.1, 0.8), (0.25, 0.8)])), FEET):  # legs behind the body
        pen.line(np.array([hip, foot]), PALETTE[combo["leg_color"]], 0.026)
        for toe in foot + np.array([(0.05, 0.01), (0.0, 0.02), (-0.04, 0.01)]):
            pen.line(np.array([foot, toe]), PALETTE[combo["leg_color"]], 0.018)
    pen.polygon(_tail(combo["tail_shape"], build.tail_angle), wing_c)
    pen.polygon(body.outline(), body_c)
    _breast(image, pen, body, combo["breast_pattern"], body_c)

    wing = _WingFrame(0.40, 0.53, 0.21, 0.1, -12 + build.wing_angle)
    pen.polygon(wing.outline(), wing_c)
    _wing_marks(pen, wing, combo["wing_pattern"], wing_c)

    head_r = HEAD_R * build.head_r
    for spike in _crest(combo["crest"], *HEAD, head_r):
        pen.polygon(spike, head_c)
    pen.polygon(_bill(combo["bill_shape"]) + [(head_r - HEAD_R) * 0.8, 0], BILL)  # the bill sits on the face
    pen.dot(np.array(HEAD), head_r, head_c, outline=True)
    eye = np.array(EYE)
    if combo["eye_ring"] != "none":  # a thick coloured ring with a dark rim, visible on any head colour
        pen.dot(eye, EYE_RING, PALETTE[combo["eye_ring"]], outline=True)
    pen.dot(eye, PUPIL, OUTLINE)
    return (*pen.lo.tolist(), *pen.hi.tolist())  # type: ignore[return-value]


def _mask(size: tuple[int, int], place: Placement) -> tuple[Image.Image, _Pen]:
    mask = Image.new("L", size, 0)
    return mask, _Pen(mask, place)


def _breast(image: Image.Image, pen: _Pen, body: _Frame, pattern: str, body_c: RGB) -> None:
    """A paler breast patch on the lower front of the body, with dark marks, clipped to the body outline."""
    body_mask, body_pen = _mask(image.size, pen.place)
    body_pen.polygon(body.outline(), 255, outline=False)
    patch_mask, patch_pen = _mask(image.size, pen.place)
    patch_pen.polygon(_Frame(*body(np.array([0.45, 0.55]))[0], 0.2, 0.15, -15).outline(), 255, outline=False)
    image.paste(_mix(body_c, (255, 255, 255), 0.5), mask=ImageChops.multiply(patch_mask, body_mask))

    marks, marks_pen = _mask(image.size, pen.place)
    grid = [(x, y) for x in np.arange(0.42, 0.78, 0.06) for y in np.arange(0.52, 0.80, 0.06)]
    if pattern == "spotted":
        for i, (x, y) in enumerate(grid):
            marks_pen.dot(np.array([x + 0.03 * (i % 2), y]), 0.02, 255)
    elif pattern == "streaked":
        for i, (x, y) in enumerate(grid):
            y0 = y + 0.03 * (i % 2)
            marks_pen.line(np.array([(x, y0), (x - 0.012, y0 + 0.045)]), 255, 0.02)
    elif pattern == "barred":
        for y in np.arange(0.53, 0.80, 0.05):
            marks_pen.line(np.array([(0.40, y), (0.80, y - 0.1)]), 255, 0.02)
    if pattern != "plain":
        image.paste(_mix(body_c, (0, 0, 0), 0.75), mask=ImageChops.multiply(marks, body_mask))
    pen.polygon(body.outline(), None)  # the patch covered part of the body's outline: draw it again on top


def _wing_marks(pen: _Pen, wing: _WingFrame, pattern: str, wing_c: RGB) -> None:
    """Marks in the wing's own frame, kept inside the outline analytically (no clipping needed)."""
    mark = OUTLINE if sum(wing_c) > 380 else (250, 250, 245)  # light marks on dark wings, dark on light
    if pattern == "bars":  # two bands across the wing
        for u in (-0.05, 0.4):
            h = 0.85 * float(wing.half_width(u))
            pen.line(wing(np.array([(u, -h), (u, h)])), mark, 0.032)
    elif pattern == "stripes":  # three thin lines along the wing, from the front to where the taper meets them
        u = np.linspace(-1, 1, 81)
        for v in (-0.45, 0.0, 0.45):
            inside = u[0.8 * wing.half_width(u) > abs(v)]
            pen.line(wing(np.array([(inside[0], v), (inside[-1], v)])), mark, 0.017)
    elif pattern == "spots":
        for u, v in [(-0.4, 0.0), (-0.05, -0.35), (-0.05, 0.35), (0.3, 0.0), (0.6, -0.4), (0.6, 0.4)]:
            pen.dot(wing(np.array([u, v]))[0], 0.021, mark)
