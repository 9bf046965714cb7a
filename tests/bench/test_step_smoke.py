"""bench/step.py on the tiny judge on CPU: it runs end to end with its three paths in one process, writes every
field, and its shared path computes the same scoring as the per-completion path and the naive path (tower per
completion, eager attention, full-vocabulary log-softmax); greedy completions agree between the rollouts and the
caches."""

import json

import pytest


@pytest.fixture(scope="module")
def step(load_bench):
    return load_bench("step")


def test_tiny_step_on_cpu_reports_every_field_and_the_paths_agree(step, tmp_path):
    out = tmp_path / "step.json"
    result = step.main(["--model", "tiny", "--pairs", "2", "--generations", "2", "--image-size", "64",
                        "--max-new-tokens", "4", "--device", "cpu", "--warmup", "0", "--repeats", "1", "--fast",
                        "--naive", "--naive-repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert {"date", "command", "environment", "hardware", "settings", "model", "shared", "fast", "naive",
            "speedup_vs_fast", "speedup_vs_naive", "agreement", "estimate", "targets", "met", "completed", "wall_s",
            "peak_rss_gib"} <= result.keys()
    assert result["completed"] == "all"
    for path in ("shared", "fast"):
        figures = result[path]
        assert set(figures["phases_s"]) == {"encoder_forward", "rollout", "prefill", "scoring_no_attention",
                                            "scoring", "dml", "encoder_backward"}
        assert all(t > 0 for t in figures["phases_s"].values())
        step_s = sum(figures["phases_s"][k] for k in ("encoder_forward", "rollout", "scoring", "dml",
                                                      "encoder_backward"))
        assert figures["step_s"] == pytest.approx(step_s)
        assert figures["pairs_per_s"] == pytest.approx(2 / step_s)
        assert 1 <= figures["decode_steps"] <= 4 and 4 <= figures["completion_tokens"] <= 16
        assert figures["decode"]["bound_s"] is None  # no bandwidth known for a CPU
        assert figures["scoring"]["model_flops"] > 0 and figures["scoring"]["mfu"] is None
        assert figures["peak_memory_gib"] is None
    # The packed pass reads each prompt once: fewer model FLOPs than a copy per completion.
    assert result["shared"]["scoring"]["model_flops"] < result["fast"]["scoring"]["model_flops"]
    assert result["model"]["sequences"] == 4 and result["model"]["image_tokens"] == 4  # 64 px: (64 / 32)^2
    naive = result["naive"]
    assert set(naive["phases_s"]) == {"rollout", "scoring"} and naive["repeats"] == 1
    assert result["speedup_vs_naive"] == pytest.approx(naive["step_s"] / result["shared"]["step_s"])
    assert result["speedup_vs_fast"] == pytest.approx(result["fast"]["step_s"] / result["shared"]["step_s"])
    agreement = result["agreement"]
    for other in ("fast", "naive"):
        assert agreement[other]["logps_max_abs_diff"] < 1e-4
        assert agreement[other]["attention_max_abs_diff"] < 1e-5
        assert agreement[other]["encoder_grad_rel_diff"] < 1e-4
    assert agreement["greedy_shared_vs_fast_token_match"] == 1.0
    assert agreement["greedy_static_vs_dynamic_token_match"] == 1.0
    assert result["estimate"]["steps"] == 3000 and not result["estimate"]["settings_match_preset"]
    assert set(result["met"]) == set(result["targets"]) and all(v is None for v in result["met"].values())
