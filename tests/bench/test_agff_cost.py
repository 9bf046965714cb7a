"""bench/agff_cost.py on the tiny random MLLM on the CPU: both models run in their own process and every field is
written, with the packed prompt tokens AGFF-Embed reads per image."""

import json

import pytest


@pytest.fixture(scope="module")
def agff_cost(load_bench):
    return load_bench("agff_cost")


def test_tiny_cost_reports_both_models(agff_cost, tiny_vlm_dir, tmp_path):
    out = tmp_path / "cost.json"
    doc = agff_cost.main(["--judge", str(tiny_vlm_dir), "--prompts", "3", "--image-size", "64", "--batch", "2",
                          "--repeats", "1", "--warmup", "0", "--threads", "1", "--in-process", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    saga, agff = doc["rows"]["SAGA: tower + attention pooler"], doc["rows"]["AGFF-Embed, 3 prompts"]
    for row in (saga, agff):
        assert row["images"] == 2 and row["images_per_s"] > 0 and row["peak_rss_gib"] > 0
        assert row["peak_gpu_gib"] is None and row["embedding_dim"] == 128
    assert saga["llm_tokens"] is None and saga["images_per_s_vs_saga"] == 1.0
    # 4 image tokens at 64 px; the shared start is read once, so packed < the three prompts read separately
    tokens = agff["llm_tokens"]
    assert tokens["prompts"] == 3 and 4 < tokens["per_image"] < tokens["unpacked_per_image"]
    assert agff["lora"] and agff["parameters"] > saga["parameters"]
    assert agff_cost.prompts_for("8b", 3) == ["Summarize the bird in the image in one word.",
                                              "Describe the bill shape of the bird in the image in one word.",
                                              "Describe the wing color of the bird in the image in one word."]


def test_the_geometry_path_runs_on_a_small_config(agff_cost, tmp_path):
    # --model 8b builds a random model of a geometry (bench/geometry.py); here the shipped judge's, on the CPU (its
    # 515 ids hold the local tokenizer, which the fixture's 322 do not)
    config = agff_cost.ROOT / "assets" / "judge-tiny-long" / "config.json"
    doc = agff_cost.main(["--model", "8b", "--geometry", str(config), "--dtype", "float32",
                          "--prompts", "29", "--image-size", "64", "--batch", "2", "--repeats", "1", "--warmup", "0",
                          "--in-process", "--out", str(tmp_path / "cost.json")])
    tokens = doc["rows"]["AGFF-Embed, 29 prompts"]["llm_tokens"]
    # CUB's 28 groups + the global prompt; the tokenizer learnt the prompts' words, so ~one token per word
    assert tokens["prompts"] == 29 and tokens["per_image"] < 30 * 30 < tokens["unpacked_per_image"]
