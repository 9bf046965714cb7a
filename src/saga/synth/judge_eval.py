"""How good is a judge? Greedy verdicts on image pairs of a dataset split, scored against the class labels.

Two pair sets, both drawn deterministically from `seed`:
- balanced: half the pairs are two different images of one class, half are images of two different classes
  (uniform over classes) -> "accuracy_balanced" (and its two halves "accuracy_same" / "accuracy_different");
- one attribute (datasets with class attributes, i.e. the synthetic world): pairs of classes that differ in
  exactly one attribute, the benchmark's hardest negatives -> "accuracy_one_attribute", and per attribute that
  differs, "accuracy_one_attribute.<name>" (a vocabulary that leaves the attribute out makes those pairs "same").
With class attributes the comparison lines are scored too: "attribute_accuracy" is the share of attribute values
(each attribute, each image of a pair) that the answer states correctly, a missing line counting as wrong.

With `vocabulary` (a `model.vocabulary` setting, saga.data.vocabulary) the prompt names those attributes; the
attribute accuracies then cover only them, and the verdicts are still scored against the classes. Asked about the
attributes that separate the test classes, this measures how well the judge reads exactly those.

With `encoder` (a `saga train` export folder), the judge reads the images through that trained tower instead of its
own: how well the frozen judge sees the unseen classes through the encoder that SAGA's L_GRPO trained (the RL
objective, measured greedily on test pairs), beside the same number for the judge's own tower.

An answer without a verdict (`prompts.parse_verdict` -> None) counts as unparseable and as wrong, as it earns no
reward in SAGA (docs/method.md). For every set, correct + wrong + unparseable = pairs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from saga.data import Split, load_dataset, load_image
from saga.errors import CheckpointError, DataError
from saga.judge import judge_vocabulary
from saga.judge.prompts import format_comparison, parse_verdict, restrict, values_stated_correctly
from saga.models import load_model, load_vlm
from saga.progress import progress
from saga.synth import SCHEMA
from saga.synth.pairs import PairInputs

DEFAULT_IMAGE_SIZE = 224  # for judges without a pretrain.json (e.g. a real Qwen3-VL): 49 tokens per image
FREE_TEXT_TOKENS = 256  # answer budget where the judge's comparison format is not known


def judge_image_size(judge_dir: str | Path) -> int:
    """The image side a judge was pretrained at (its pretrain.json), else `DEFAULT_IMAGE_SIZE`."""
    meta = Path(judge_dir) / "pretrain.json"
    if not meta.is_file():
        return DEFAULT_IMAGE_SIZE
    try:
        return int(json.loads(meta.read_text())["image_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta}: no readable image_size ({type(e).__name__}: {e})") from None


def balanced_pairs(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of image indexes, (n + 1) // 2 of them of one class (two distinct images), the rest of two distinct
    classes. Returns (pairs (n, 2), same (n,) bool)."""
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    multi = [c for c, idx in by_class.items() if len(idx) >= 2]
    classes = list(by_class)
    if not multi or len(classes) < 2:
        raise DataError(f"balanced pairs need a class with two images and two classes; found {len(classes)} "
                        f"classes, {len(multi)} with two images or more")
    n_same = (n + 1) // 2
    pairs = []
    for _ in range(n_same):
        pairs.append(rng.choice(by_class[multi[rng.integers(len(multi))]], size=2, replace=False))
    for _ in range(n - n_same):
        ca, cb = rng.choice(classes, size=2, replace=False)
        pairs.append([rng.choice(by_class[ca]), rng.choice(by_class[cb])])
    return np.array(pairs, dtype=np.int64).reshape(n, 2), np.arange(n) < n_same


def one_attribute_pairs(labels: np.ndarray, attributes: dict[int, dict[str, str]], n: int,
                        rng: np.random.Generator) -> np.ndarray:
    """n pairs of image indexes whose classes differ in exactly one attribute (class pairs uniform, order random);
    an empty (0, 2) array when the split has no such classes."""
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    classes = sorted(by_class)
    close = [(a, b) for i, a in enumerate(classes) for b in classes[i + 1:]
             if sum(attributes[a][k] != attributes[b][k] for k in attributes[a]) == 1]
    if not close:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = []
    for _ in range(n):
        ca, cb = close[rng.integers(len(close))]
        if rng.random() < 0.5:
            ca, cb = cb, ca
        pairs.append([rng.choice(by_class[ca]), rng.choice(by_class[cb])])
    return np.array(pairs, dtype=np.int64)


def tally(texts: Sequence[str], same: Sequence[bool]) -> dict[str, int]:
    """Verdict counts of answers against the truth: correct + wrong + unparseable = pairs."""
    verdicts = [parse_verdict(t) for t in texts]
    unparseable = sum(v is None for v in verdicts)
    correct = sum(v is not None and v == s for v, s in zip(verdicts, same, strict=True))
    return {"pairs": len(texts), "correct": correct, "wrong": len(texts) - correct - unparseable,
            "unparseable": unparseable}


def attribute_tally(texts: Sequence[str], attrs_a: Sequence[dict[str, str]],
                    attrs_b: Sequence[dict[str, str]]) -> dict[str, tuple[int, int]]:
    """Per attribute: (values stated correctly, values asked), two values (images A and B) per pair."""
    counts = {name: [0, 0] for name in attrs_a[0]} if attrs_a else {}
    for text, a, b in zip(texts, attrs_a, attrs_b, strict=True):
        for name, right in values_stated_correctly(text, a, b).items():
            counts[name][0] += right
            counts[name][1] += 2
    return {name: (c, t) for name, (c, t) in counts.items()}


@torch.inference_mode()
def generate_answers(model, inputs: PairInputs, split: Split, pairs: np.ndarray, *, batch_size: int,
                     max_new_tokens: int, desc: str) -> list[str]:
    """Greedy answers of the judge for image pairs (indexes into split.paths), in batches. All prompts have the
    same length (`PairInputs`), so a batch needs no padding and generation starts at the same position."""
    texts: list[str] = []
    device = next(model.parameters()).device
    with progress(total=len(pairs), desc=desc, unit="pair") as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            images = [load_image(split.paths[i]) for pair in chunk for i in pair]
            batch = {k: v.to(device) for k, v in inputs(images).items()}
            batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            texts += inputs.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            bar.update(len(chunk))
    return texts


def longest_comparison(tokenizer) -> int:
    """Tokens of the longest synthetic-world comparison (the stop token not counted)."""
    longest = {a.name: max(a.values, key=lambda v: len(tokenizer.tokenize(" " + v))) for a in SCHEMA}
    # All lines say "match" here: counts right where "mismatch" is no longer (one token each in the shipped tokenizers)
    return len(tokenizer.tokenize(format_comparison(longest, longest, same=False)))


def comparison_budget(tokenizer) -> int:
    """Generation limit for a synthetic-world comparison: the longest one plus a margin."""
    return longest_comparison(tokenizer) + 8


def use_encoder(model, export_dir: str | Path) -> int:
    """Put the tower weights of a `saga train` export into the judge's own tower, in place; returns the export's
    image size. The export must be a tower of the judge's geometry (SAGA's encoder is a copy of it)."""
    trained = load_model(export_dir, device="cpu")
    tower = model.model.visual
    try:
        tower.load_state_dict(trained.encoder.tower.state_dict(), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{export_dir}: its encoder does not fit the judge's vision tower ({e})") from None
    return trained.image_size


def evaluate_judge(judge_dir: str | Path, dataset: str = "synth", root: str | Path = "", split: str = "test",
                   pairs: int = 200, seed: int = 0, device: str = "auto", *, encoder: str | Path | None = None,
                   batch_size: int = 32, image_size: int | None = None, max_new_tokens: int | None = None,
                   vocabulary: str | Sequence[str] | None = "auto") -> dict:
    """Verdict (and, with class attributes, attribute) accuracy of the judge at `judge_dir` on `pairs` balanced
    pairs and `pairs` one-attribute pairs of a dataset split, read through its own tower or `encoder` (an export
    folder), prompted with `vocabulary`. Returns a flat dict (see the module docstring)."""
    if pairs < 2:
        raise DataError(f"--pairs must be at least 2 (one same and one different pair), got {pairs}")
    splits = load_dataset(dataset, root)
    data, attributes = getattr(splits, split), splits.class_attributes
    model, processor = load_vlm(judge_dir, device=device)
    if encoder is not None:
        image_size = image_size or use_encoder(model, encoder)
    names = judge_vocabulary(vocabulary, judge_dir, dataset, root)
    inputs = PairInputs(processor, image_size or judge_image_size(judge_dir), dataset, names)
    if max_new_tokens is None:
        max_new_tokens = comparison_budget(inputs.tokenizer) if attributes else FREE_TEXT_TOKENS
    rng = np.random.default_rng(seed)
    start = time.perf_counter()

    sets = {"balanced": balanced_pairs(data.labels, pairs, rng)}
    if attributes:
        close = one_attribute_pairs(data.labels, attributes, pairs, rng)
        if len(close):
            sets["one_attribute"] = (close, np.zeros(len(close), dtype=bool))
    result: dict = {"judge": str(judge_dir), "encoder": None if encoder is None else str(encoder),
                    "dataset": dataset, "root": str(root), "split": split, "seed": seed, "vocabulary": names}
    attribute_counts: dict[str, list[int]] = {}
    total_unparseable = total_pairs = 0
    for name, (idx, same) in sets.items():
        texts = generate_answers(model, inputs, data, idx, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 desc=f"judge eval ({name})")
        counts = tally(texts, same.tolist())
        result.update({f"{k}_{name}": v for k, v in counts.items()})
        result[f"accuracy_{name}"] = counts["correct"] / counts["pairs"]
        if name == "balanced":
            same_half = tally([t for t, s in zip(texts, same) if s], [True] * int(same.sum()))
            diff_half = tally([t for t, s in zip(texts, same) if not s], [False] * int((~same).sum()))
            result["accuracy_same"] = same_half["correct"] / max(1, same_half["pairs"])
            result["accuracy_different"] = diff_half["correct"] / max(1, diff_half["pairs"])
        if name == "one_attribute":  # which attribute tells each pair apart
            labels = data.labels[idx]
            differing = [next(k for k, v in attributes[a].items() if attributes[b][k] != v) for a, b in labels]
            for attr in (n for n in attributes[labels[0, 0]] if n in differing):  # schema order
                kept = [t for t, d in zip(texts, differing) if d == attr]
                result[f"accuracy_one_attribute.{attr}"] = tally(kept, [False] * len(kept))["correct"] / len(kept)
        total_unparseable += counts["unparseable"]
        total_pairs += counts["pairs"]
        if attributes:
            labels = data.labels[idx]
            per_attr = attribute_tally(texts, [restrict(attributes[c], names) for c in labels[:, 0]],
                                       [restrict(attributes[c], names) for c in labels[:, 1]])
            for attr, (c, t) in per_attr.items():
                attribute_counts.setdefault(attr, [0, 0])
                attribute_counts[attr][0] += c
                attribute_counts[attr][1] += t
    result["unparseable"] = total_unparseable / total_pairs
    if attribute_counts:
        result["attribute_accuracy"] = (sum(c for c, _ in attribute_counts.values())
                                        / sum(t for _, t in attribute_counts.values()))
        result.update({f"attribute_accuracy.{k}": c / t for k, (c, t) in attribute_counts.items()})
    seconds = time.perf_counter() - start
    result.update(seconds=round(seconds, 1), pairs_per_second=round(total_pairs / seconds, 2))
    return result
