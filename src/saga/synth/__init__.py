"""The synthetic attribute world (docs/design.md): procedural little birds whose species are attribute combinations.

Generate a benchmark and load it like CUB-200-2011::

    saga synth --out data/synth --classes 200 --images-per-class 60 --size 128 --preview
    ds = saga.data.load_dataset("synth", "data/synth")   # classes 1-100 train, 101-200 test
    ds.class_attributes[label]                             # {"body_color": "red", "crest": "tall", ...}

Modules: schema (attributes, combinations) -> bird (one bird, canonical pose) -> render (scene and nuisance) ->
world (families, split, world.json) -> layout (CUB files) -> generate (`saga synth`) / preview / dataset.

API for the judge, which is pretrained on random combinations that are NOT the benchmark's classes:

- `SCHEMA`: tuple of `Attribute(name, values, label)`, ten attributes in a fixed order: body_color, wing_color,
  wing_pattern, crest, bill_shape, tail_shape, eye_ring, breast_pattern, head_color, leg_color (3-6 values each).
- `Combination(values)`: one value per attribute in schema order; hashable. `Combination.from_dict(d)`,
  `c[name]`, `c.as_dict()`, `c.replace(name=value)`, `c.differing(other) -> [names]`, `c.name` (class name).
- `random_combination(rng, exclude=())`: uniform over the 2.65 M combinations, rejecting those in `exclude`.
- `combination_pair(rng, k, exclude=())`: two combinations that differ in exactly k attributes (k=0: same class);
  `vary(combo, k, rng)`: a combination k attributes away from `combo`.
- `design_world(num_classes, seed, shift=None).classes`: the classes of a world, in class-id order, without a world
  on disk (`saga synth` renders them); `WorldShift(train_varied, test_varied, train_fixed)` chooses which attributes
  separate siblings on each side of the split and which are fixed across the training classes.
- `render(combination, rng, size, nuisance=NUISANCE) -> PIL.Image` (RGB, size x size): a photo with the
  benchmark's nuisance; `CLEAN` draws the bird plain and centred. `render_scene` also returns the bird's box.
- `generate_world(out, num_classes, images_per_class, size, seed, preview, workers, shift) -> Path`; `load_world`;
  `write_preview(world_dir)`; `load_synth(root)`, registered as the dataset "synth".
"""

from saga.synth.dataset import load_synth
from saga.synth.generate import generate_world, image_rng
from saga.synth.preview import write_preview
from saga.synth.render import CLEAN, NUISANCE, Nuisance, render, render_scene
from saga.synth.schema import (ATTRIBUTE_NAMES, SCHEMA, Attribute, Combination, combination_pair, random_combination,
                               vary)
from saga.synth.world import World, WorldShift, design_world, load_world

__all__ = ["ATTRIBUTE_NAMES", "CLEAN", "NUISANCE", "SCHEMA", "Attribute", "Combination", "Nuisance", "World",
           "combination_pair", "design_world", "generate_world", "image_rng", "load_synth",
           "load_world", "random_combination", "render", "render_scene", "vary", "WorldShift", "write_preview"]
