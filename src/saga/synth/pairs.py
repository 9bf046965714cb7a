"""The synthetic judge's training data: photos of random attribute combinations, paired, with their target
comparisons, as model inputs (docs/design.md, "The synthetic world").

What the judge learns from. RANDOM attribute combinations (its "world knowledge"), never a class of the default
benchmark world: `EXCLUDED_WORLD` = `design_world(200, seed=0)`, the classes that `saga synth --out DIR` writes
with its defaults, are rejected for either image of a pair and for every single photo. Other worlds (other seeds
or sizes) are not excluded; their overlap with the training data is negligible: there are 2,654,208
combinations, so a given class of another world appears with probability (combinations drawn) / 2.65 M (the tiny
preset draws about 60 k: 2 %, and then once among 60 k), far too rarely to memorise a species; what the judge
learns are the attributes, which every world shares by design.

The pair mix (`sample_pair`): half the pairs are the same combination (two renders, i.e. two independent draws
of pose, background, light and occlusion, as two photos of one species differ); of the different pairs half
differ in exactly one attribute (the benchmark's hard negatives are siblings one or two attributes apart), 15 %
in two, 15 % in three and 20 % are two independent random combinations.

Vocabularies (`vocabulary_subset`): a share of the pairs' prompts name a random proper subset of the schema (the
rest name all of it), and the target compares exactly the attributes named, in schema order; its verdict is
"same" when those agree. So the judge learns to compare what its prompt names, and a vocabulary that leaves an
attribute out hides that attribute from its answer and from the reward.

Photos are rendered on the fly in DataLoader workers (a few ms each at 128 px, cheaper than storing a pool) and JPEG
round-tripped with the settings of `saga synth`, so the judge sees the artefacts of the benchmark's files. Batch
i is drawn from its own generator (seed, stream, i): the data do not depend on the number of workers.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections.abc import Callable, Collection, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset

from saga.judge.prompts import SUBJECTS, format_comparison, pair_messages, pair_prompt
from saga.judge.rollout import answer_rows
from saga.models import ImagePreprocessor
from saga.synth import (ATTRIBUTE_NAMES, CLEAN, NUISANCE, SCHEMA, Combination, Nuisance, combination_pair,
                        design_world, random_combination, render)
from saga.synth.generate import JPEG

# The default `saga synth` world (num_classes, seed): its classes never appear in the judge's training data.
EXCLUDED_WORLD = (200, 0)
SAME_SHARE = 0.5
# Different pairs: (number of differing attributes, share); None = two independent random combinations.
NEGATIVE_MIX: tuple[tuple[int | None, float], ...] = ((1, 0.5), (2, 0.15), (3, 0.15), (None, 0.2))
RENDER_SIZE = 128  # the benchmark's image size (`saga synth --size` default)


def excluded_combinations() -> frozenset[Combination]:
    """The classes of the default benchmark world (`EXCLUDED_WORLD`), computed without rendering it."""
    return frozenset(c.combination for c in design_world(*EXCLUDED_WORLD).classes)


def sample_pair(rng: np.random.Generator, exclude: Collection[Combination] = ()
                ) -> tuple[Combination, Combination]:
    """One training pair by the mix of the module docstring; neither combination is in `exclude`."""
    if rng.random() < SAME_SHARE:
        return combination_pair(rng, 0, exclude)
    ks, shares = zip(*NEGATIVE_MIX)
    k = ks[rng.choice(len(ks), p=shares)]
    if k is not None:
        return combination_pair(rng, k, exclude)
    a = b = random_combination(rng, exclude)
    while b == a:
        b = random_combination(rng, exclude)
    return a, b


def vocabulary_subset(rng: np.random.Generator, share: float) -> tuple[str, ...]:
    """The attributes a training prompt names: with probability `share` a random proper subset of the schema (its
    size uniform in 1..9, in schema order), otherwise all of it."""
    if share <= 0 or rng.random() >= share:
        return ATTRIBUTE_NAMES
    size = int(rng.integers(1, len(SCHEMA)))
    return tuple(ATTRIBUTE_NAMES[i] for i in sorted(rng.choice(len(SCHEMA), size=size, replace=False)))


def target(a: Combination, b: Combination, vocabulary: Sequence[str] = ATTRIBUTE_NAMES) -> str:
    """The answer the judge is trained to give for a photo of `a` and one of `b` when its prompt names
    `vocabulary`: those attributes compared, then "same" if they all agree."""
    attrs_a, attrs_b = ({n: c[n] for n in vocabulary} for c in (a, b))
    return format_comparison(attrs_a, attrs_b, same=attrs_a == attrs_b)


def judge_corpus() -> list[str]:
    """What the judge reads and writes, for its tokenizer: every dataset's prompt (with and without the schema as
    its vocabulary), every comparison line, both verdicts. Each text appears twice, as BPE only merges pairs seen
    at least twice."""
    texts = [pair_prompt(d) for d in SUBJECTS] + [pair_prompt("synth", ATTRIBUTE_NAMES)]
    texts += ["A:", "B:", "Answer: same", "Answer: different"]
    texts += [format_comparison({a.name: u}, {a.name: v}, u == v) for a in SCHEMA for u in a.values for v in a.values]
    return texts * 2


def nuisance_level(t: float) -> Nuisance:
    """The nuisance a fraction `t` of the way from `CLEAN` (t = 0: a plain, centred bird) to the benchmark's
    `NUISANCE` (t = 1); every range is interpolated, counts rounded, per-individual proportions on from t = 0.5."""
    values = {}
    for f in dataclasses.fields(Nuisance):
        lo, hi = getattr(CLEAN, f.name), getattr(NUISANCE, f.name)
        if isinstance(lo, bool):
            values[f.name] = hi if t >= 0.5 else lo
        elif isinstance(lo, tuple):
            values[f.name] = tuple(type(a)(a + (b - a) * t) if isinstance(a, float) else round(a + (b - a) * t)
                                   for a, b in zip(lo, hi))
        else:
            values[f.name] = lo + (hi - lo) * t
    return Nuisance(**values)


def photo(combo: Combination, rng: np.random.Generator, nuisance: Nuisance = NUISANCE) -> Image.Image:
    """A benchmark-like photo of `combo`: rendered at the benchmark's size, JPEG-encoded and decoded as in
    `saga synth`."""
    buffer = io.BytesIO()
    render(combo, rng, RENDER_SIZE, nuisance).save(buffer, format="JPEG", **JPEG)
    return Image.open(buffer).convert("RGB")


class PairInputs:
    """Pair prompts (and answers) as model inputs, for a judge's processor at a fixed image size.

    Every image is resized to the same square (`ImagePreprocessor`), so every pair prompt of one vocabulary has
    the same number of image tokens and the same token ids: the prompt is tokenized once, and a batch of prompts
    needs no padding (generation starts at the same position in every row). Answers are appended and
    right-padded; their labels are the answer tokens plus the closing <|im_end|>, -100 elsewhere. Training
    batches may give each pair its own vocabulary (prompts of different lengths, each followed by its answer).
    """

    def __init__(self, processor, image_size: int, dataset: str = "synth",
                 vocabulary: Sequence[str] | None = None) -> None:
        self.processor, self.dataset = processor, dataset
        self.tokenizer = processor.tokenizer
        self.preprocessor = ImagePreprocessor(processor, image_size)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)
        self._prompts: dict[tuple[str, ...] | None, torch.Tensor] = {}
        self.prompt_ids = self.prompt(vocabulary)

    def prompt(self, vocabulary: Sequence[str] | None) -> torch.Tensor:
        """The token ids of the pair prompt naming `vocabulary` (cached: training draws a few hundred)."""
        key = None if vocabulary is None else tuple(vocabulary)
        if key not in self._prompts:
            image_token = self.processor.image_token
            text = self.processor.apply_chat_template(pair_messages(self.dataset, vocabulary),
                                                      add_generation_prompt=True)
            text = text.replace(image_token, image_token * self.preprocessor.tokens_per_image)
            self._prompts[key] = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._prompts[key]

    def __call__(self, images: Sequence[Image.Image], answers: Sequence[str] | None = None,
                 vocabularies: Sequence[Sequence[str]] | None = None) -> dict[str, torch.Tensor]:
        """images: 2P images ordered a0, b0, a1, b1, ...; answers: P texts, or None for generation prompts;
        vocabularies: one per pair (with answers only), else every prompt names this object's vocabulary."""
        inputs = dict(self.preprocessor(images))
        pairs = len(images) // 2
        if answers is None:
            if vocabularies is not None:  # generation needs prompts of one length
                raise ValueError("per-pair vocabularies need answers (training batches)")
            ids = self.prompt_ids.expand(pairs, -1)
        else:
            prompts = [self.prompt(v) for v in vocabularies] if vocabularies is not None else [self.prompt_ids] * pairs
            ids, inputs["labels"] = prompt_answer_rows(self.tokenizer, prompts, answers)
        inputs["input_ids"] = ids.contiguous()
        inputs["attention_mask"] = (ids != self.tokenizer.pad_token_id).long()
        inputs["mm_token_type_ids"] = (ids == self.image_token_id).long()  # required with images (docs/method.md)
        return inputs


def prompt_answer_rows(tokenizer, prompts: Sequence[torch.Tensor], answers: Sequence[str]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt (token ids, lengths may differ) followed by its answer and <|im_end|>, right-padded ->
    (input ids, labels), labels -100 on the prompts and the padding."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers")
    rows, labels = [], []
    for prompt, answer in zip(prompts, answer_rows(tokenizer, answers)):  # tokenized as generation and L_ATTR do
        rows.append(torch.cat([prompt, answer]))
        labels.append(torch.cat([torch.full_like(prompt, -100), answer]))
    pad = torch.nn.utils.rnn.pad_sequence
    return (pad(rows, batch_first=True, padding_value=tokenizer.pad_token_id),
            pad(labels, batch_first=True, padding_value=-100))


def _indexes() -> Iterator[int]:
    """The batch indexes of this DataLoader worker: w, w + W, w + 2W, ... DataLoader takes batches from its
    workers in turn, so the stream's order is 0, 1, 2, ... whatever the number of workers."""
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    return itertools.count(worker, workers)


class PairStream(IterableDataset):
    """Pair-stage batches at the benchmark's nuisance: batch i from the generator (seed, 0, i); a share
    `vocabulary_subsets` of the pairs name a subset of the schema (`vocabulary_subset`)."""

    def __init__(self, inputs: Callable, batch_size: int, seed: int, exclude: Collection[Combination],
                 vocabulary_subsets: float = 0.0) -> None:
        self.inputs, self.batch_size, self.seed, self.exclude = inputs, batch_size, seed, exclude
        self.vocabulary_subsets = vocabulary_subsets

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 0, index])
        images, answers, vocabularies = [], [], []
        for _ in range(self.batch_size):
            a, b = sample_pair(rng, self.exclude)
            images += [photo(a, rng), photo(b, rng)]
            vocabularies.append(vocabulary_subset(rng, self.vocabulary_subsets))
            answers.append(target(a, b, vocabularies[-1]))
        return self.inputs(images, answers, vocabularies)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return map(self.batch, _indexes())


class AttributeStream(IterableDataset):
    """Vision-stage batches: single photos of random combinations and their attribute value indexes (B, 10);
    batch i from the generator (seed, 1, i), nuisance at level min(1, i / ramp) (`nuisance_level`)."""

    def __init__(self, preprocessor: ImagePreprocessor, batch_size: int, seed: int,
                 exclude: Collection[Combination], ramp: int) -> None:
        self.preprocessor, self.batch_size, self.seed, self.exclude, self.ramp = (
            preprocessor, batch_size, seed, exclude, ramp)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 1, index])
        nuisance = nuisance_level(min(1.0, index / self.ramp)) if self.ramp else NUISANCE
        combos = [random_combination(rng, self.exclude) for _ in range(self.batch_size)]
        inputs = dict(self.preprocessor([photo(c, rng, nuisance) for c in combos]))
        inputs["labels"] = torch.tensor([[a.values.index(c[a.name]) for a in SCHEMA] for c in combos])
        return inputs

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return map(self.batch, _indexes())
