import dataclasses
from collections.abc import Collection

import numpy as np
import pytest
import torch
from PIL import Image

from saga.cli import build_parser
from saga.judge.prompts import pair_prompt, parse_comparison, parse_verdict
from saga.synth import ATTRIBUTE_NAMES, CLEAN, NUISANCE, SCHEMA, Combination, design_world
from saga.synth.pairs import (EXCLUDED_WORLD, AttributeStream, PairInputs, PairStream, excluded_combinations,
                              judge_corpus, nuisance_level, sample_pair, target, vocabulary_subset)
from saga.synth.pretrain import JUDGE_PRESETS, build_judge


class RedBodies(Collection):
    """Every combination with a red body: a sixth of all, so a sampler that ignored `exclude` would hit it."""

    def __contains__(self, combo):
        return combo["body_color"] == "red"

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 442_368


def test_excluded_world_is_the_default_synth_world():
    args = build_parser().parse_args(["synth", "--out", "x"])
    assert EXCLUDED_WORLD == (args.classes, args.seed)
    excluded = excluded_combinations()
    assert excluded == {c.combination for c in design_world(args.classes, args.seed).classes}
    assert len(excluded) == args.classes


def test_training_data_never_contain_an_excluded_combination():
    rng = np.random.default_rng(0)
    pairs = [sample_pair(rng, RedBodies()) for _ in range(600)]
    assert all(a["body_color"] != "red" and b["body_color"] != "red" for a, b in pairs)
    # the same holds for the texts and photos the judge is trained on
    stream = PairStream(lambda images, answers, vocabularies: answers, batch_size=8, seed=0, exclude=RedBodies())
    for answer in stream.batch(0) + stream.batch(1):
        assert "red" not in parse_comparison(answer)["body_color"]
    body = [a.name for a in SCHEMA].index("body_color")
    photos = AttributeStream(lambda images: {}, batch_size=50, seed=0, exclude=RedBodies(), ramp=0).batch(0)
    assert SCHEMA[body].values.index("red") not in photos["labels"][:, body].tolist()


def test_pair_mix():
    rng = np.random.default_rng(1)
    distances = np.array([len(a.differing(b)) for a, b in (sample_pair(rng) for _ in range(4000))])
    assert abs((distances == 0).mean() - 0.5) < 0.03  # half the pairs are the same class
    different = distances[distances > 0]
    assert abs((different == 1).mean() - 0.5) < 0.04  # half the negatives differ in one attribute
    assert abs((different == 2).mean() - 0.15) < 0.03
    assert (different >= 4).mean() > 0.15  # independent random combinations: mostly 7+ apart


def test_stream_is_deterministic_and_targets_are_comparisons():
    stream = PairStream(lambda images, answers, vocabularies: (images, answers), batch_size=6, seed=3, exclude=())
    (images, answers), (images2, answers2) = stream.batch(5), stream.batch(5)
    assert answers == answers2 and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(images, images2))
    assert stream.batch(6)[1] != answers
    assert len(images) == 12 and all(im.size == (128, 128) and im.mode == "RGB" for im in images)
    for answer in answers:
        lines = answer.splitlines()
        assert [line.split(":")[0] for line in lines] == [*ATTRIBUTE_NAMES, "Answer"]
        values = parse_comparison(answer)
        for attr in SCHEMA:
            assert values[attr.name][0] in attr.values and values[attr.name][1] in attr.values
        a, b = (Combination(tuple(values[n][i] for n in ATTRIBUTE_NAMES)) for i in (0, 1))
        assert parse_verdict(answer) is (a == b)
        for line, name in zip(lines, ATTRIBUTE_NAMES):  # each line ends with whether its two values agree
            assert line.endswith(" match" if a[name] == b[name] else " mismatch")


def test_nuisance_level_interpolates():
    assert nuisance_level(0.0) == CLEAN and nuisance_level(1.0) == NUISANCE
    half = nuisance_level(0.5)
    assert half.max_rotation == (CLEAN.max_rotation + NUISANCE.max_rotation) / 2
    assert half.clutter == tuple(round((c + n) / 2) for c, n in zip(CLEAN.clutter, NUISANCE.clutter))


def test_pair_inputs_label_only_the_answer():
    _, processor = build_judge(dataclasses.replace(JUDGE_PRESETS["tiny"], image_size=64))
    inputs = PairInputs(processor, 64)
    tok = processor.tokenizer
    images = [Image.new("RGB", (128, 128), (i * 40, 0, 0)) for i in range(4)]
    answers = ["crest: tall / tall match\nAnswer: same", "body_color: red / blue mismatch\nAnswer: different"]
    batch = inputs(images, answers)
    n_prompt = len(inputs.prompt_ids)
    assert batch["input_ids"].shape[0] == 2 and torch.equal(batch["input_ids"][1, :n_prompt], inputs.prompt_ids)
    assert pair_prompt("synth") in tok.decode(inputs.prompt_ids)
    assert tok.decode(inputs.prompt_ids).endswith("<|im_start|>assistant\n")
    assert batch["mm_token_type_ids"].sum(1).tolist() == [2 * 4, 2 * 4]  # two 64 px images, 4 tokens each
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 4
    for row, answer in enumerate(answers):
        labels = batch["labels"][row]
        assert (labels[:n_prompt] == -100).all()
        assert tok.decode(labels[labels != -100]) == answer + "<|im_end|>"
        length = n_prompt + len(tok(answer, add_special_tokens=False)["input_ids"]) + 1
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (batch["input_ids"].shape[1] - length)
    assert "labels" not in inputs(images)


def test_vocabulary_subsets_name_all_of_the_schema_sometimes_and_random_subsets_otherwise():
    rng = np.random.default_rng(0)
    drawn = [vocabulary_subset(rng, 0.5) for _ in range(2000)]
    full = [v == ATTRIBUTE_NAMES for v in drawn]
    assert abs(np.mean(full) - 0.5) < 0.04
    subsets = [v for v in drawn if v != ATTRIBUTE_NAMES]
    assert {len(v) for v in subsets} == set(range(1, 10))  # every proper size
    assert all(list(v) == [n for n in ATTRIBUTE_NAMES if n in v] for v in subsets)  # schema order
    assert {n for v in subsets for n in v} == set(ATTRIBUTE_NAMES)
    assert all(vocabulary_subset(rng, 0.0) == ATTRIBUTE_NAMES for _ in range(50))


def test_the_target_compares_exactly_the_named_attributes():
    a = Combination(tuple(attr.values[0] for attr in SCHEMA))
    b = a.replace(crest=SCHEMA[3].values[1])  # differs in the crest only
    assert parse_verdict(target(a, b)) is False
    hidden = target(a, b, ("body_color", "bill_shape"))
    assert list(parse_comparison(hidden)) == ["body_color", "bill_shape"] and parse_verdict(hidden) is True
    assert parse_verdict(target(a, b, ("crest",))) is False


def test_stream_pairs_with_subsets_have_targets_of_their_vocabulary():
    stream = PairStream(lambda images, answers, vocabularies: (answers, vocabularies), batch_size=40, seed=1,
                        exclude=(), vocabulary_subsets=0.5)
    answers, vocabularies = stream.batch(0)
    assert any(v == ATTRIBUTE_NAMES for v in vocabularies) and any(v != ATTRIBUTE_NAMES for v in vocabularies)
    for answer, vocabulary in zip(answers, vocabularies):
        assert tuple(parse_comparison(answer)) == vocabulary


def test_pair_inputs_give_each_pair_its_vocabulary():
    _, processor = build_judge(dataclasses.replace(JUDGE_PRESETS["tiny"], image_size=64))
    inputs = PairInputs(processor, 64)
    tok = processor.tokenizer
    images = [Image.new("RGB", (128, 128))] * 4
    vocabularies = [("crest",), ATTRIBUTE_NAMES]
    answers = ["crest: tall / tall match\nAnswer: same", "body_color: red / blue mismatch\nAnswer: different"]
    batch = inputs(images, answers, vocabularies)
    for row, (vocabulary, answer) in enumerate(zip(vocabularies, answers)):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        prompt = tok.decode(ids[labels == -100][batch["attention_mask"][row][labels == -100].bool()])
        assert pair_prompt("synth", vocabulary) in prompt
        assert tok.decode(labels[labels != -100]) == answer + "<|im_end|>"
    assert batch["mm_token_type_ids"].sum(1).tolist() == [8, 8]
    with pytest.raises(ValueError, match="need answers"):
        inputs(images, None, vocabularies)


def test_the_judge_tokenizer_knows_the_schema_prompt():
    assert pair_prompt("synth", ATTRIBUTE_NAMES) in judge_corpus()
