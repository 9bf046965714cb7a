"""Renderer: size and mode, determinism, exact attribute colours on a clean render, and locality: changing one
attribute under the same nuisance changes only that part's pixels."""

import numpy as np
from PIL import Image

from saga.synth.bird import PALETTE, Placement
from saga.synth.render import CLEAN, NUISANCE, render, render_scene
from saga.synth.schema import Combination

BIRD = Combination.from_dict({"body_color": "green", "wing_color": "black", "wing_pattern": "bars",
                              "crest": "short", "bill_shape": "long", "tail_shape": "forked", "eye_ring": "red",
                              "breast_pattern": "spotted", "head_color": "yellow", "leg_color": "pink"})


def pixels(combo, seed, size=64, nuisance=NUISANCE):
    return np.asarray(render(combo, np.random.default_rng(seed), size, nuisance))


def test_size_mode_and_box():
    for size in (64, 128):
        shot = render_scene(BIRD, np.random.default_rng(0), size)
        assert isinstance(shot.image, Image.Image)
        assert shot.image.mode == "RGB" and shot.image.size == (size, size)
        x, y, w, h = shot.box
        assert 0 <= x and 0 <= y and x + w <= size and y + h <= size
        assert w > size / 3 and h > size / 3  # the bird fills a good part of the frame


def test_same_generator_same_pixels_other_seed_other_pixels():
    assert np.array_equal(pixels(BIRD, 7), pixels(BIRD, 7))
    assert not np.array_equal(pixels(BIRD, 7), pixels(BIRD, 8))


def test_clean_render_has_exact_attribute_colours():
    # CLEAN: facing right, scale 0.9, centred, no light jitter or noise. Canonical point (0.66, 0.40) is on the
    # head away from the eye; (0.775, 0.33) is on the eye ring (eye at (0.74, 0.33), pupil radius 0.022, ring 0.065).
    # At 128 px the scene is drawn at 256 px: pixel = (0.9 * 256 * (q - 0.5) + 128) / 2.
    image = pixels(BIRD, 0, size=128, nuisance=CLEAN)
    assert tuple(image[52, 82]) == PALETTE["yellow"]  # (0.66, 0.40) -> (82.4, 52.5)
    assert tuple(image[44, 95]) == PALETTE["red"]  # (0.775, 0.33) -> (95.7, 44.4)
    place = Placement.make(256, scale=0.9)
    assert np.allclose(place(np.array([0.66, 0.40]))[0] / 2, [82.43, 52.48], atol=0.01)
    blue = pixels(BIRD.replace(head_color="blue", eye_ring="white"), 0, size=128, nuisance=CLEAN)
    assert tuple(blue[52, 82]) == PALETTE["blue"] and tuple(blue[44, 95]) == PALETTE["white"]


def test_one_attribute_changes_only_its_part():
    # Same seed -> same pose, background, occluder and light: the images differ only where the part is drawn.
    for seed in range(3):
        a = pixels(BIRD, seed, size=64).astype(int)
        b = pixels(BIRD.replace(eye_ring="yellow"), seed, size=64).astype(int)
        ys, xs = np.nonzero(np.abs(a - b).sum(axis=2) > 0)
        assert len(ys) > 4  # the ring is visible at 64 px
        assert xs.max() - xs.min() <= 12 and ys.max() - ys.min() <= 12  # ring diameter ~ 0.13 * 0.92 * 64 = 8 px
        c = pixels(BIRD.replace(tail_shape="fan"), seed, size=64).astype(int)
        assert np.abs(a - c).sum(axis=2).astype(bool).sum() > 30  # a bigger part, more pixels
