"""The results-table runner (`saga benchmark`) and the demo, end to end on a tiny world and a tiny random judge."""

import io
import json

import numpy as np
import pytest
import yaml

from saga.app.benchmark import Row, Table, ensure_world, format_results, load_table, run_table, summarise, write_results
from saga.cli import main
from saga.errors import ConfigError

TINY = {
    "device": "cpu", "log_every": 1, "checkpoint_every": 0, "eval_every": 0,
    "data": {"dataset": "synth", "image_size": 64, "eval_batch_size": 12},
    "dml": {"batch_size": 6, "m_per_class": 2},
    "grpo": {"num_generations": 2, "pairs_per_step": 2, "max_completion_length": 6, "log_completions_every": 1},
    "optim": {"steps": 2, "lr_encoder": 1e-3, "lr_pooler": 1e-2},
}


@pytest.fixture
def table(tmp_path, synth_world, tiny_vlm_dir):
    for method in ("proxy_anchor", "saga"):
        cfg = {**TINY, "method": method}
        (tmp_path / f"{method}.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"name": "pre-trained backbone", "config": "proxy_anchor.yaml", "overrides": ["eval_only=true"]},
            {"name": "Proxy Anchor", "config": "proxy_anchor.yaml"},
            {"name": "SAGA w/o L_KL", "config": "saga.yaml", "overrides": ["weights.kl=0"]}]
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({"overrides": [f"data.root={synth_world}", f"model.judge={tiny_vlm_dir}"],
                                    "rows": rows}))
    return path


def test_benchmark_runs_every_row_and_seed_then_reuses_finished_runs(table, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--config", str(table), "--seeds", "0", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {"pre-trained backbone", "Proxy Anchor", "SAGA w/o L_KL"}
    assert all(set(r) == {"0", "1"} for r in doc["results"].values())
    run = out / "saga_w_o_l_kl" / "seed1"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["weights"]["kl"] == 0.0 and cfg["seed"] == 1 and cfg["method"] == "saga"
    assert yaml.safe_load((out / "pre_trained_backbone" / "seed0" / "config.yaml").read_text())["eval_only"] is True
    # mean and std over seeds are the numpy ones of the per-seed metrics
    r1 = [doc["results"]["Proxy Anchor"][s]["R@1"] for s in ("0", "1")]
    assert doc["mean"]["Proxy Anchor"]["R@1"] == pytest.approx(sum(r1) / 2)
    assert doc["std"]["Proxy Anchor"]["R@1"] == pytest.approx(abs(r1[0] - r1[1]) / 2)
    assert "standard deviation" in (out / "results.md").read_text()
    # the report: mean ± std, and what the judge wrote at the first and the last logged step of the SAGA row
    report = (out / "report.html").read_text()
    assert "&plusmn;" in report and "SAGA w/o L_KL, seed 0" in report
    assert "<h3>step 1</h3>" in report and "<h3>step 2</h3>" in report and "truth: same class" in report

    # A run saved before a config key existed is the same run: the missing key counts as its default.
    older = out / "proxy_anchor" / "seed0" / "config.yaml"
    saved = yaml.safe_load(older.read_text())
    del saved["dml"]["neighbour_classes"]
    older.write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    main(["benchmark", "--config", str(table), "--seeds", "0", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 3 and "steps ->" not in printed

    # A row whose config changed since its run finished: the old results stay, and the error says what to do.
    assert main(["benchmark", "--config", str(table), "--seeds", "0", "--out", str(out), "optim.steps=3"]) == 2
    assert "holds a run of another config than row 'pre-trained backbone', seed 0" in capsys.readouterr().err
    assert (out / "pre_trained_backbone" / "seed0" / "test_metrics.json").is_file()


def test_an_interrupted_run_resumes_from_its_last_checkpoint(table, tmp_path, capsys):
    from saga.app.benchmark import row_config
    from saga.app.run import train

    t, out = load_table(table), tmp_path / "bench"
    extra = ["checkpoint_every=1"]
    saga_row = t.rows[2]

    def crash(step):
        raise KeyboardInterrupt  # as a time limit's SIGINT would, after the checkpoint of step 1

    with pytest.raises(KeyboardInterrupt):
        train(row_config(t, saga_row, 0, out, extra), on_step=crash)
    results = run_table(t, [0], out, extra=extra)
    printed = capsys.readouterr().out
    assert "SAGA w/o L_KL, seed 0: saga, 2 steps" in printed and "(resuming from its last checkpoint)" in printed
    assert (out / "saga_w_o_l_kl" / "seed0" / "checkpoints" / "ckpt-000002").is_dir()
    fresh = train(row_config(t, saga_row, 0, tmp_path / "fresh", extra))["test_metrics"]
    assert results["SAGA w/o L_KL"][0] == fresh  # the same as a run never interrupted


def test_partial_results_are_written_after_every_run_and_say_so(table, tmp_path):
    t, out, snapshots = load_table(table), tmp_path / "bench", []

    def write(partial):
        snapshots.append(sum(len(r) for r in partial.values()))
        write_results(partial, out, "saga benchmark", t, runs=6)

    results = run_table(t, [0, 1], out, on_result=write)
    assert snapshots == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "results.json").read_text())["complete"]
    del results["SAGA w/o L_KL"]
    write_results(results, out, "saga benchmark", t, runs=6)
    assert not json.loads((out / "results.json").read_text())["complete"]
    assert "Incomplete: 4 of 6 runs" in (out / "results.md").read_text()


def test_summarise_and_format():
    results = {"A": {0: {"R@1": 0.5, "NMI": 0.2}, 1: {"R@1": 0.7, "NMI": 0.4}}}
    means, stds = summarise(results)
    assert means["A"]["R@1"] == pytest.approx(0.6) and stds["A"]["R@1"] == pytest.approx(0.1)
    text = format_results(results, keys=("R@1", "NMI"))
    assert "60.0" in text and "10.0" in text


def test_a_finished_world_is_reused_only_if_its_parameters_are_the_tables(synth_world, tmp_path):
    rows = [Row("r", tmp_path / "r.yaml")]
    world = {"out": str(synth_world), "classes": 6, "images_per_class": 4, "size": 64, "seed": 0}
    stamp = (synth_world / "world.json").stat().st_mtime_ns
    ensure_world(Table(rows, world=world))  # the same world: kept as it is
    assert (synth_world / "world.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match=r"world\.json: .*images_per_class 4 \(table: 5\), seed 0 \(table: 1\)"):
        ensure_world(Table(rows, world={**world, "images_per_class": 5, "seed": 1}))
    assert (synth_world / "world.json").stat().st_mtime_ns == stamp  # and nothing was removed


def test_a_table_renders_a_shifted_world_and_refuses_one_of_another_shift(tmp_path):
    rows = [Row("r", tmp_path / "r.yaml")]
    world = {"out": str(tmp_path / "w"), "classes": 12, "images_per_class": 1, "size": 32, "seed": 0,
             "train_varied": ["body_color", "wing_color"], "test_varied": ["crest", "tail_shape"],
             "train_fixed": ["crest", "tail_shape"]}
    ensure_world(Table(rows, world=world, path=tmp_path / "t.yaml"))
    shift = json.loads((tmp_path / "w" / "world.json").read_text())["shift"]
    assert shift["test_varied"] == ["crest", "tail_shape"] and set(shift["train_fixed"]) == {"crest", "tail_shape"}
    ensure_world(Table(rows, world=world, path=tmp_path / "t.yaml"))  # the same world: reused
    with pytest.raises(ConfigError, match=r"world\.json: .*shift WorldShift\(.*\(table: WorldShift"):
        ensure_world(Table(rows, world={**world, "train_fixed": ["crest"]}, path=tmp_path / "t.yaml"))
    with pytest.raises(ConfigError, match=r"t\.yaml: world: unknown key\(s\) \['train_fix'\]"):
        ensure_world(Table(rows, world={**world, "train_fix": []}, path=tmp_path / "t.yaml"))
    with pytest.raises(ConfigError, match="t.yaml: world: test_varied: unknown attribute"):
        ensure_world(Table(rows, world={**world, "test_varied": ["beak"]}, path=tmp_path / "t.yaml"))


def test_table_errors_name_the_file(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("rows: []\nwrold: {}\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: unknown key\(s\) \['wrold'\]"):
        load_table(bad)
    bad.write_text("rows:\n  - {name: x}\n")
    with pytest.raises(ConfigError, match="row 1 must have"):
        load_table(bad)


def test_demo_writes_the_table_and_a_report_with_every_section(table, tmp_path, capsys):
    doc = yaml.safe_load(table.read_text())
    doc["rows"].append({"name": "SAGA", "config": "saga.yaml"})
    table.write_text(yaml.safe_dump(doc))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--table", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "pre-trained backbone" in printed and "SAGA" in printed and "report:" in printed
    html = (out / "report.html").read_text()
    assert html.count("<figcaption>judge</figcaption>") == 3  # one per test class of the tiny world
    assert html.count("<figcaption>pooler</figcaption>") == 3
    assert html.count("&#10003;") + html.count("&#10007;") == 6 * 5  # 6 queries x top-5
    assert "What the judge wrote" in html and html.count("<h3>step ") == 2 and html.count("<pre>") == 2 * 2
    assert json.loads((out / "results.json").read_text())["command"].startswith("saga demo")

    # The retrieval grid reads the first SAGA row's test embeddings; a run from before they were written gets them.
    gallery = out / "saga_w_o_l_kl" / "seed0" / "test_embeddings.npz"
    written = gallery.read_bytes()
    gallery.unlink()
    assert main(["demo", "--out", str(out), "--table", str(table)]) == 0
    assert (out / "report.html").read_text() == html
    with np.load(gallery) as new, np.load(io.BytesIO(written)) as old:
        assert all(np.allclose(new[k], old[k], atol=1e-6) if k == "embeddings" else np.array_equal(new[k], old[k])
                   for k in old.files)
