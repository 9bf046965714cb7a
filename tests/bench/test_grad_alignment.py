"""bench/grad_alignment.py: steadiness and cosines against hand-computed vectors, and a run on the tiny judge."""

import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("grad_alignment")


def test_summarise_hand_computed(bench):
    t = torch.tensor
    grads = {
        "dml": [t([2.0, 0.0]), t([2.0, 0.0]), t([0.0, 2.0])],
        # Batch 1 opposes L_DML, batch 2 is orthogonal to it, batch 3 is exactly zero (all rewards equal).
        "grpo": [t([-1.0, 0.0]), t([0.0, 1.0]), None],
        "kl": [t([1.0, 0.0]), t([0.0, 1.0]), t([-1.0, -1.0])],
    }
    s = bench.summarise(grads)
    assert s["dml"]["norm"] == pytest.approx(2.0) and s["dml"]["cos_to_dml"] == pytest.approx(1.0)
    # |mean of (2,0), (2,0), (0,2)| = |(4/3, 2/3)| = sqrt(20)/3, over a mean norm of 2.
    assert s["dml"]["steadiness"] == pytest.approx(math.sqrt(20) / 6)
    # c = (2, 2, 0) (each gradient against the others' mean): 4/3 estimates the steady part's squared norm; its
    # standard error is 2 * std(c) / sqrt(3) = 4/3, so the bound is sqrt(4/3 + 8/3) = 2.
    assert s["dml"]["steady_norm"] == pytest.approx(math.sqrt(4 / 3))
    assert s["dml"]["steady_norm_upper"] == pytest.approx(2.0)
    g = s["grpo"]
    assert (g["batches"], g["zero_batches"], g["norm"]) == (3, 1, pytest.approx(1.0))
    assert g["steadiness"] == pytest.approx(math.sqrt(0.5))  # |(-1/2, 1/2)| / 1
    assert g["steadiness_if_random"] == pytest.approx(1 / math.sqrt(2))
    assert g["cos_to_dml"] == pytest.approx(-0.5) and g["cos_to_dml_negative_share"] == 0.5
    assert "steady_norm" not in g  # two batches: too few for its standard error
    # Pushes that cancel: c = (-1/2, -1/2, -1), a negative estimate, reported as no steady part.
    assert s["kl"]["steady_norm"] == 0.0 and s["kl"]["steadiness"] == 0.0


def test_runs_on_the_tiny_judge(bench, synth_world, tiny_vlm_dir, tmp_path):
    out = tmp_path / "grad.json"
    doc = bench.main(["--config", str(ROOT / "configs" / "synth" / "saga.yaml"), "--batches", "2", "--out", str(out),
                      f"data.root={synth_world}", f"model.judge={tiny_vlm_dir}", "device=cpu",
                      "data.image_size=64", "dml.batch_size=6", "dml.m_per_class=2", "grpo.num_generations=2",
                      "grpo.pairs_per_step=2", "grpo.max_completion_length=6"])
    assert json.loads(out.read_text()) == doc
    terms = doc["terms"]
    assert set(terms) == {"grpo", "dml", "kl"} and terms["dml"]["norm"] > 0 and terms["dml"]["zero_batches"] == 0
    # The random judge states no verdict in 6 tokens: every reward is 0, so L_GRPO's gradient is exactly zero.
    assert terms["grpo"]["zero_batches"] == 2 and "steadiness" not in terms["grpo"]
