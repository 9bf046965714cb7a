"""Every preset under configs/ loads (keys, types, names and its `base:` chain are valid) and says what it should."""

from pathlib import Path

import pytest

from saga.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = [(d, m) for d in ("cub", "cars", "aircraft", "inat_aves")
         for m in ("saga", "proxy_anchor", "potential_field", "agff")]


@pytest.mark.parametrize(("dataset", "method"), PAPER)
def test_paper_presets(dataset, method):
    cfg = load_config(CONFIGS / dataset / f"{method}.yaml")
    assert (cfg.method, cfg.data.dataset) == (method, dataset)
    assert cfg.model.judge == "Qwen/Qwen3-VL-8B-Instruct" and cfg.model.backbone is None
    assert cfg.out_dir == f"runs/{dataset}/{method}"
    # Shared through ../paper.yaml: the same budget and resolution for every method.
    assert (cfg.optim.steps, cfg.data.image_size, cfg.dml.batch_size) == (3000, 448, 64)
    assert cfg.grpo.num_generations == 8 and cfg.attention.layers == [-8, -4, -1]
    assert cfg.model.vocabulary == "auto"  # the dataset's own (saga.data.vocabulary)


@pytest.mark.parametrize("method", ["saga", "proxy_anchor", "potential_field", "agff"])
def test_synthetic_presets(method):
    cfg = load_config(CONFIGS / "synth" / f"{method}.yaml")
    assert (cfg.method, cfg.data.dataset, cfg.model.judge) == (method, "synth", "assets/judge-tiny-long")
    assert cfg.data.image_size == 128 and cfg.optim.steps == 500


def test_synthetic_saga_completions_fit_the_longest_comparison_of_the_shipped_judge():
    # A limit below it cuts every completion before its verdict line: no reward anywhere, L_GRPO silently zero.
    from transformers import AutoTokenizer

    from saga.synth.judge_eval import longest_comparison

    cfg = load_config(CONFIGS / "synth" / "saga.yaml")
    tokenizer = AutoTokenizer.from_pretrained(CONFIGS.parent / cfg.model.judge)
    assert cfg.grpo.max_completion_length >= longest_comparison(tokenizer) + 1  # + the stop token


@pytest.mark.parametrize(("dataset", "prompts"), [("cars", 9), ("aircraft", 9), ("inat_aves", 13), ("synth", 11)])
def test_agff_presets_prompt_each_aspect_once(dataset, prompts, synth_world):
    from saga.train.agff import agff_prompts
    from saga.train.setup import dml_name

    cfg = load_config(CONFIGS / dataset / "agff.yaml", [f"data.root={synth_world}"] if dataset == "synth" else [])
    assert (cfg.agff.trainable, dml_name(cfg), cfg.dml.ega, cfg.dml.temperature) == ("lora", "infonce", 1.0, 0.02)
    texts = agff_prompts(cfg)  # the synthetic world's aspects: its vocabulary, the schema's attributes
    assert len(texts) == len(set(texts)) == prompts
    if dataset == "synth":
        assert texts[:2] == ["bird:", "body_color:"]
    else:
        assert cfg.model.dtype == "bfloat16" and cfg.model.gradient_checkpointing and cfg.optim.lr_encoder == 1e-4
        assert texts[1] == f"Describe the {cfg.agff.aspects[0]} of the {texts[0].split()[2]} in the image in one word."
    assert load_config(CONFIGS / "cub" / "agff.yaml").agff.aspects is None  # CUB: its attributes.txt groups


# Results tables (saga.app.benchmark), not run configs, and the methods their rows train.
ALL_METHODS = {"proxy_anchor", "potential_field", "saga"}
TABLES = {"demo.yaml": ALL_METHODS | {"agff"}, "table.yaml": ALL_METHODS, "table-cpu.yaml": ALL_METHODS,
          "sweep-cpu.yaml": {"saga"}, "neighbours-cpu.yaml": {"proxy_anchor", "saga"},
          "table-cpu-agff.yaml": {"agff", "saga"}, "table-cpu-shifted.yaml": ALL_METHODS}


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml")
                                         if p.name not in TABLES and p.parent.name != "vocabularies"),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_under_configs_loads(path):
    load_config(path)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_row_of_the_synth_tables_resolves(name, tmp_path):
    from saga.app.benchmark import load_table, row_config

    table = load_table(CONFIGS / "synth" / name)
    assert {row_config(table, row, 0, tmp_path).method for row in table.rows} == TABLES[name]
