"""bench/step.py on the tiny judge on CPU: it runs end to end, writes every field, and its fast path computes the
same scoring as the naive path (tower per completion, eager attention, full-vocabulary log-softmax); its static KV
cache samples the same completions as the default dynamic one."""

import json

import pytest


@pytest.fixture(scope="module")
def step(load_bench):
    return load_bench("step")


def test_tiny_step_on_cpu_reports_every_field_and_fast_equals_naive(step, tmp_path):
    out = tmp_path / "step.json"
    result = step.main(["--model", "tiny", "--pairs", "2", "--generations", "2", "--image-size", "64",
                        "--max-new-tokens", "4", "--device", "cpu", "--warmup", "0", "--repeats", "1", "--naive",
                        "--cache", "static",
                        "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert {"date", "command", "environment", "hardware", "settings", "model", "fast", "naive", "speedup_vs_naive",
            "agreement", "targets", "met", "peak_rss_gib"} <= result.keys()
    fast = result["fast"]
    assert set(fast["phases_s"]) == {"encoder_forward", "rollout", "prefill", "scoring_no_attention", "scoring",
                                     "dml", "encoder_backward"}
    assert all(t > 0 for t in fast["phases_s"].values())
    step_s = sum(fast["phases_s"][k] for k in ("encoder_forward", "rollout", "scoring", "dml", "encoder_backward"))
    assert fast["step_s"] == pytest.approx(step_s)
    assert fast["pairs_per_s"] == pytest.approx(2 / step_s)
    # 2 pairs x 2 completions of at most 4 tokens; the rollout's own counts
    assert result["model"]["sequences"] == 4 and 1 <= fast["decode_steps"] <= 4
    assert 4 <= fast["completion_tokens"] <= 16
    assert fast["completion_tokens_per_s"] == pytest.approx(fast["completion_tokens"] / step_s)
    assert result["model"]["image_tokens"] == 4  # 64 px: (64 / 32)^2
    assert {"step_s", "bytes_per_step", "bound_s", "ratio_to_bound"} <= fast["decode"].keys()
    assert fast["decode"]["bound_s"] is None  # no bandwidth known for a CPU
    assert fast["scoring"]["model_flops"] > 0 and fast["scoring"]["mfu"] is None
    assert result["peak_rss_gib"] > 0 and fast["peak_memory_gib"] is None
    naive = result["naive"]
    assert set(naive["phases_s"]) == {"rollout", "scoring"}
    assert result["speedup_vs_naive"] == pytest.approx(naive["step_s"] / step_s)
    # The fast path is correct: same log-probs, attention targets and encoder gradients as the simple path.
    agreement = result["agreement"]
    assert agreement["logps_max_abs_diff"] < 1e-4
    assert agreement["attention_max_abs_diff"] < 1e-5
    assert agreement["encoder_grad_rel_diff"] < 1e-4
    # The static KV cache (compiled on CUDA) samples exactly what the default dynamic cache samples.
    assert agreement["static_vs_dynamic_token_match"] == 1.0
