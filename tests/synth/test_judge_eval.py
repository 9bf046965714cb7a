import dataclasses
import json

import numpy as np
import pytest
import torch

import saga.synth.judge_eval as ev
from saga.data import load_dataset
from saga.errors import CheckpointError
from saga.judge.prompts import format_comparison
from saga.models import ImagePreprocessor, RetrievalModel, VisionEncoder, build_pooler, load_model, load_vlm
from saga.synth import generate_world
from saga.synth.pretrain import JUDGE_PRESETS, build_judge

# The tiny judge's geometry at 64 px (4 tokens per image), random weights: evaluation only needs its answers.
MINI = dataclasses.replace(JUDGE_PRESETS["tiny"], image_size=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """8 classes (2 families per half), 3 images each, 64 px."""
    return generate_world(tmp_path_factory.mktemp("world"), num_classes=8, images_per_class=3, size=64, workers=1)


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """A random minuscule judge saved with its pretrain.json (64 px images)."""
    out = tmp_path_factory.mktemp("judge")
    model, processor = build_judge(MINI)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps({"image_size": 64}))
    return out


def test_tally_counts_unparseable_as_wrong():
    texts = ["Answer: same", "Answer: different", "<|image_pad|> crest crest", "x: a / b\nAnswer: same", ""]
    counts = ev.tally(texts, [True, True, False, False, True])
    assert counts == {"pairs": 5, "correct": 1, "wrong": 2, "unparseable": 2}


def test_attribute_tally():
    a = {"crest": "tall", "bill_shape": "long"}
    b = {"crest": "none", "bill_shape": "long"}
    texts = ["crest: tall / none\nbill_shape: long / short\nAnswer: different",  # 3 of 4 values right
             "crest: none / none\nAnswer: same"]  # crest A wrong, B right; no bill line: 1 of 4
    assert ev.attribute_tally(texts, [a, a], [b, b]) == {"crest": (3, 4), "bill_shape": (1, 4)}


def test_judge_image_size(tmp_path):
    assert ev.judge_image_size(tmp_path) == ev.DEFAULT_IMAGE_SIZE  # no pretrain.json: a foreign judge
    (tmp_path / "pretrain.json").write_text('{"image_size": 96}')
    assert ev.judge_image_size(tmp_path) == 96
    (tmp_path / "pretrain.json").write_text("{")
    with pytest.raises(CheckpointError, match="pretrain.json"):
        ev.judge_image_size(tmp_path)


def test_balanced_pairs():
    labels = np.array([0, 0, 1, 1, 1, 2])
    pairs, same = ev.balanced_pairs(labels, 9, np.random.default_rng(0))
    assert pairs.shape == (9, 2) and same.tolist() == [True] * 5 + [False] * 4
    assert (labels[pairs[:5, 0]] == labels[pairs[:5, 1]]).all() and (pairs[:5, 0] != pairs[:5, 1]).all()
    assert (labels[pairs[5:, 0]] != labels[pairs[5:, 1]]).all()
    again, _ = ev.balanced_pairs(labels, 9, np.random.default_rng(0))
    assert np.array_equal(pairs, again)


def test_one_attribute_pairs():
    attrs = {0: {"x": "a", "y": "a"}, 1: {"x": "b", "y": "a"}, 2: {"x": "c", "y": "c"}}
    labels = np.array([0, 0, 1, 2, 2])
    pairs = ev.one_attribute_pairs(labels, attrs, 20, np.random.default_rng(0))
    assert pairs.shape == (20, 2)
    assert all(sorted(labels[p].tolist()) == [0, 1] for p in pairs)  # only classes 0 and 1 are one apart
    assert ev.one_attribute_pairs(labels, {**attrs, 1: {"x": "b", "y": "b"}}, 5, np.random.default_rng(0)).shape \
        == (0, 2)


def test_evaluate_a_random_judge(world, judge):
    res = ev.evaluate_judge(judge, "synth", world, "test", pairs=6, seed=0, device="cpu", max_new_tokens=6)
    rates = ["accuracy_balanced", "accuracy_same", "accuracy_different", "accuracy_one_attribute", "unparseable",
             "attribute_accuracy", *[k for k in res if k.startswith("attribute_accuracy.")]]
    assert all(0.0 <= res[k] <= 1.0 for k in rates)
    for name in ("balanced", "one_attribute"):
        assert res[f"pairs_{name}"] == 6
        assert res[f"correct_{name}"] + res[f"wrong_{name}"] + res[f"unparseable_{name}"] == 6
        assert res[f"accuracy_{name}"] == res[f"correct_{name}"] / 6


def _fake_answers(answer):
    def generate(model, inputs, split, pairs, **kwargs):
        return [answer(split, a, b) for a, b in pairs]
    return generate


def test_garbage_answers_are_unparseable_and_wrong(world, judge, monkeypatch):
    monkeypatch.setattr(ev, "generate_answers", _fake_answers(lambda split, a, b: "<|image_pad|>???"))
    res = ev.evaluate_judge(judge, "synth", world, "test", pairs=8, device="cpu")
    assert res["unparseable"] == 1.0 and res["accuracy_balanced"] == 0.0 and res["accuracy_one_attribute"] == 0.0
    assert res["attribute_accuracy"] == 0.0


def test_an_oracle_scores_one(world, judge, monkeypatch):
    attrs = load_dataset("synth", world).class_attributes

    def oracle(split, a, b):
        la, lb = split.labels[a], split.labels[b]
        return format_comparison(attrs[la], attrs[lb], same=la == lb)

    monkeypatch.setattr(ev, "generate_answers", _fake_answers(oracle))
    res = ev.evaluate_judge(judge, "synth", world, "test", pairs=8, device="cpu")
    assert res["accuracy_balanced"] == res["accuracy_one_attribute"] == res["attribute_accuracy"] == 1.0
    per_attribute = [v for k, v in res.items() if k.startswith("accuracy_one_attribute.")]
    assert per_attribute and all(v == 1.0 for v in per_attribute)
    assert res["unparseable"] == 0.0 and res["accuracy_same"] == res["accuracy_different"] == 1.0


def test_cli_writes_the_results(world, judge, tmp_path, capsys):
    from saga.cli import main

    out = tmp_path / "eval.json"
    encoder = _export(tmp_path / "export", *load_vlm(judge, device="cpu"))
    assert main(["judge", "eval", "--judge", str(judge), "--root", str(world), "--pairs", "2", "--device", "cpu",
                 "--encoder", str(encoder), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["pairs_balanced"] == 2 and saved["encoder"] == str(encoder)
    assert saved["root"] == str(world) and saved["seed"] == 0  # what the pairs were drawn from: reproducible
    assert "accuracy_balanced" in capsys.readouterr().out


def _export(out, model, processor, image_size=64, noise=0.0):
    """A `saga train`-style export of (a copy of) the judge's tower, its weights moved by `noise`."""
    encoder = VisionEncoder.from_vlm(model)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(noise * torch.randn_like(p))
    model = RetrievalModel(encoder, build_pooler("mean", encoder.out_dim), ImagePreprocessor(processor, image_size))
    return model.save_pretrained(out, run={"method": "test"})


def test_the_judge_reads_through_an_exported_encoder(world, judge, tmp_path):
    model, processor = load_vlm(judge, device="cpu")
    own = ev.evaluate_judge(judge, "synth", world, "test", pairs=6, device="cpu", max_new_tokens=6)
    same_tower = ev.evaluate_judge(judge, "synth", world, "test", pairs=6, device="cpu", max_new_tokens=6,
                                   encoder=_export(tmp_path / "same", model, processor))
    assert same_tower["encoder"] == str(tmp_path / "same")
    assert {k: v for k, v in same_tower.items() if k not in ("encoder", "seconds", "pairs_per_second")} \
        == {k: v for k, v in own.items() if k not in ("encoder", "seconds", "pairs_per_second")}

    torch.manual_seed(0)
    moved = _export(tmp_path / "moved", model, processor, noise=0.5)
    assert ev.use_encoder(model, moved) == 64
    exported = load_model(moved).encoder.tower.state_dict()
    assert all(torch.equal(v, exported[k]) for k, v in model.model.visual.state_dict().items())


def test_an_encoder_of_another_geometry_is_refused(judge, tmp_path):
    model, processor = load_vlm(judge, device="cpu")
    other, _ = build_judge(dataclasses.replace(MINI, vision_config={**MINI.vision_config, "hidden_size": 64}))
    folder = _export(tmp_path / "other", other, processor)
    with pytest.raises(CheckpointError, match="does not fit the judge's vision tower"):
        ev.use_encoder(model, folder)


def test_a_vocabulary_is_named_in_the_prompt_and_limits_the_attribute_scores(world, judge, monkeypatch, capsys):
    attrs = load_dataset("synth", world).class_attributes
    prompts = []

    def crest_only(model, inputs, split, pairs, **kwargs):  # reads the crest right and says nothing else
        prompts.append(inputs.tokenizer.decode(inputs.prompt_ids))
        return [f"crest: {attrs[split.labels[a]]['crest']} / {attrs[split.labels[b]]['crest']}\nAnswer: same"
                for a, b in pairs]

    monkeypatch.setattr(ev, "generate_answers", crest_only)
    res = ev.evaluate_judge(judge, "synth", world, "test", pairs=8, device="cpu", vocabulary=["crest"])
    assert "Compare these attributes one by one: crest." in prompts[0]
    # every one-attribute pair gets "same": right for none, whichever attribute tells it apart
    differing = [k for k in res if k.startswith("accuracy_one_attribute.")]
    assert differing and all(res[k] == 0.0 for k in differing)
    assert res["vocabulary"] == ["crest"] and res["attribute_accuracy"] == res["attribute_accuracy.crest"] == 1.0
    assert not any(k.startswith("attribute_accuracy.") and k != "attribute_accuracy.crest" for k in res)
    full = ev.evaluate_judge(judge, "synth", world, "test", pairs=8, device="cpu")  # pretrained without vocabularies
    assert full["vocabulary"] is None and full["attribute_accuracy"] < 1.0 and "attribute_accuracy.leg_color" in full

    from saga.cli import main, vocabulary_arg

    assert vocabulary_arg(["auto"]) == "auto" and vocabulary_arg(["crest", "tail_shape"]) == ["crest", "tail_shape"]
    assert main(["judge", "eval", "--judge", str(judge), "--root", str(world), "--pairs", "2", "--device", "cpu",
                 "--vocabulary", "crest"]) == 0
    assert "Compare these attributes one by one: crest." in prompts[-1]
