"""bench/judge_readings.py: the written-value shares, the truth and the reward per window, on hand-made logs."""

import json

import pytest
import yaml


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("judge_readings")


def _row(step, folder, crest, reward):
    return {"step": step, "image_a": f"images/{folder}/x.jpg", "reward": reward,
            "text": f"crest: {crest} / tall mismatch\nbill_shape: long / long match\nAnswer: different"}


def _world(root, crests):
    """A world.json of one class per crest value, alike in every other attribute (bill_shape "long")."""
    from saga.synth import Combination, World, design_world
    from saga.synth.world import SynthClass

    base = design_world(2, seed=0).classes[0].combination.as_dict() | {"bill_shape": "long"}
    classes = [SynthClass(i + 1, 0, Combination.from_dict(base | {"crest": c})) for i, c in enumerate(crests)]
    root.mkdir()
    (root / "world.json").write_text(json.dumps(World(0, classes, 1, 64).to_json()))
    return [c.folder for c in classes]


def test_a_collapsed_attribute_shows_as_one_value_written_for_every_image(bench, tmp_path):
    a, b = _world(tmp_path / "world", ["none", "tall"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "world")}}))
    rows = [_row(1, a, "none", 0.0), _row(2, b, "tall", 1.0),  # early: read right
            _row(9, a, "tall", 1.0), _row(10, b, "tall", 1.0)]  # late: everything "tall"
    (run / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    report = bench.main([str(run), "--window", "2", "--out", str(tmp_path / "out.json")])[str(run)]
    early, late = report["early"], report["late"]
    assert early["reward"] == 0.5 and late["reward"] == 1.0 and early["completions"] == 2
    assert early["attributes"]["crest"]["written_share"] == 0.5 and early["attributes"]["crest"]["accuracy"] == 1.0
    assert late["attributes"]["crest"] == {"value": "tall", "written_share": 1.0, "true_share": 0.5, "accuracy": 0.5}
    assert late["attributes"]["bill_shape"]["accuracy"] == 1.0
    assert json.loads((tmp_path / "out.json").read_text())[str(run)] == report
