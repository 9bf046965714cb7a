import json
from collections.abc import Collection

import numpy as np
import pytest
import torch
from PIL import Image

from saga.cli import build_parser
from saga.data.synth import ATTRIBUTE_NAMES, SCHEMA, Combination, design_world
from saga.errors import ConfigError
from saga.judge.pretrain import (EXCLUDED_WORLD, JudgePreset, PairInputs, PairStream, build_judge,
                                 excluded_combinations, pretrain_judge, sample_pair)
from saga.judge.prompts import parse_comparison, parse_verdict, pair_prompt
from saga.models import load_vlm

# A minuscule judge: 64 px images (4 tokens each), one vision block, one text layer.
MINI = JudgePreset(
    base="tiny",
    vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                   "num_position_embeddings": 16, "deepstack_visual_indexes": [0]},
    text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "num_key_value_heads": 1, "head_dim": 32, "mrope_section": [6, 5, 5]},
    vocab_size=600, image_size=64, steps=25, batch_size=4, lr=5e-3, warmup=3, curriculum_steps=0,
    verdict_weight=1.0, vision_steps=4, vision_ramp=2, vision_batch_size=4)


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


def test_pairs_never_contain_an_excluded_combination():
    rng = np.random.default_rng(0)
    pairs = [sample_pair(rng, RedBodies()) for _ in range(600)]
    assert all(a["body_color"] != "red" and b["body_color"] != "red" for a, b in pairs)
    # the same holds for the texts the judge is trained on
    stream = PairStream(lambda images, answers: answers, batch_size=8, seed=0, exclude=RedBodies())
    for answer in stream.batch(0) + stream.batch(1):
        assert "red" not in parse_comparison(answer)["body_color"]


def test_pair_mix():
    rng = np.random.default_rng(1)
    distances = np.array([len(a.differing(b)) for a, b in (sample_pair(rng) for _ in range(4000))])
    assert abs((distances == 0).mean() - 0.5) < 0.03  # half the pairs are the same class
    different = distances[distances > 0]
    assert abs((different == 1).mean() - 0.5) < 0.04  # half the negatives differ in one attribute
    assert abs((different == 2).mean() - 0.15) < 0.03
    assert (different >= 4).mean() > 0.15  # independent random combinations: mostly 7+ apart


def test_stream_is_deterministic_and_targets_are_comparisons():
    stream = PairStream(lambda images, answers: (images, answers), batch_size=6, seed=3, exclude=())
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


def test_pair_inputs_label_only_the_answer():
    _, processor = build_judge(MINI)
    inputs = PairInputs(processor, MINI.image_size)
    tok = processor.tokenizer
    images = [Image.new("RGB", (128, 128), (i * 40, 0, 0)) for i in range(4)]
    answers = ["crest: tall / tall\nAnswer: same", "body_color: red / blue\ncrest: tall / none\nAnswer: different"]
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


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown judge preset"):
        pretrain_judge("unused", preset="huge")


def test_pretrain_writes_a_loadable_judge_whose_loss_decreased(tmp_path):
    summary = pretrain_judge(tmp_path / "judge", preset=MINI, seed=0, device="cpu", workers=0)
    assert summary["steps"] == 25 and summary["final_loss"] < 0.7 * summary["initial_loss"]
    saved = json.loads((tmp_path / "judge" / "pretrain.json").read_text())
    assert saved["final_loss"] == summary["final_loss"] and saved["image_size"] == 64
    assert saved["command"].startswith("saga judge pretrain --out ") and "versions" in saved["environment"]
    assert (tmp_path / "judge" / "generation_config.json").is_file()
    model, processor = load_vlm(tmp_path / "judge", device="cpu")
    assert sum(p.numel() for p in model.parameters()) == summary["parameters"]
    batch = PairInputs(processor, 64)([Image.new("RGB", (64, 64))] * 2)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 4


def test_stage_one_trains_the_tower_and_only_the_tower():
    from saga.judge.pretrain import build_judge, warm_up_vision

    model, processor = build_judge(MINI)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = warm_up_vision(model, processor, MINI, seed=0, device=torch.device("cpu"), workers=0)
    assert stats["vision_steps"] == 4 and 0.0 <= stats["vision_final_attribute_accuracy"] <= 1.0
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("model.visual.") for k in changed)
