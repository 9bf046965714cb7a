"""A results table from one YAML file: methods and ablations as rows, each trained and evaluated over seeds.

    saga benchmark --config configs/synth/table.yaml --seeds 0 1 2

The table file names the synthetic world to build (if any), overrides applied to every row, and the rows:

    world: {out: data/synth, classes: 200, images_per_class: 60, size: 128, seed: 0}   # optional
    # a shifted world also names train_varied, test_varied and train_fixed (lists of attributes, saga synth)
    overrides: [data.root=data/synth]
    rows:
      - {name: pre-trained backbone, config: proxy_anchor.yaml, overrides: [eval_only=true]}
      - {name: SAGA, config: saga.yaml}
      - {name: SAGA w/o L_KL, config: saga.yaml, overrides: [weights.kl=0]}

Row configs are relative to the table file. Each (row, seed) is one `saga train` run in
``<out>/<row>/seed<S>``; a run whose test_metrics.json exists under the same resolved config is reused, and one
that was interrupted resumes from its last checkpoint, so an interrupted benchmark continues where it stopped. The
"pre-trained backbone" row is a run with `eval_only=true`: the judge's tower with mean pooling, evaluated by the
same code as every other row. Besides results.json and results.md, `<out>/report.html` shows the table (mean ± std),
the training curves of the first seed and what the judge wrote early and late in the first row that reads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from saga.config import TrainConfig, load_config, to_dict
from saga.errors import ConfigError
from saga.eval.report import format_markdown_table, format_table

REPORT_KEYS = ("R@1", "R@4", "NMI", "MAP@R")


@dataclass
class Row:
    name: str
    config: Path
    overrides: list[str] = field(default_factory=list)


@dataclass
class Table:
    rows: list[Row]
    overrides: list[str] = field(default_factory=list)
    world: dict | None = None
    path: Path | None = None


def load_table(path: str | Path) -> Table:
    """Parse a table file; unknown keys are errors naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: table file not found") from None
    unknown = set(data) - {"world", "overrides", "rows"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; known: ['overrides', 'rows', 'world']")
    rows = []
    for i, r in enumerate(data.get("rows") or []):
        if not isinstance(r, dict) or set(r) - {"name", "config", "overrides"} or not {"name", "config"} <= set(r):
            raise ConfigError(f"{path}: row {i + 1} must have 'name', 'config' and optionally 'overrides': {r!r}")
        rows.append(Row(r["name"], path.parent / r["config"], list(r.get("overrides") or [])))
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return Table(rows, list(data.get("overrides") or []), data.get("world"), path)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def row_config(table: Table, row: Row, seed: int, out_dir: Path, extra: list[str] = ()) -> TrainConfig:
    """The resolved config of one (row, seed) run: row file < table overrides < row overrides < extra."""
    overrides = [*table.overrides, *row.overrides, *extra, f"seed={seed}",
                 f"out_dir={out_dir / _slug(row.name) / f'seed{seed}'}"]
    return load_config(row.config, overrides)


def _same_config(cfg: TrainConfig) -> bool:
    """Whether cfg.out_dir holds a run of exactly this config (keys added to the config since then count as their
    defaults)."""
    try:
        return to_dict(load_config(Path(cfg.out_dir) / "config.yaml")) == to_dict(cfg)
    except ConfigError:
        return False


def _test_metrics(cfg: TrainConfig) -> dict | None:
    """The test metrics in cfg.out_dir, if a run there finished."""
    try:
        return json.loads((Path(cfg.out_dir) / "test_metrics.json").read_text())
    except (OSError, ValueError):
        return None


WORLD_KEYS = ("out", "classes", "images_per_class", "size", "seed", "train_varied", "test_varied", "train_fixed")


def ensure_world(table: Table) -> None:
    """Render the table's synthetic world unless a complete one of the same parameters is already there."""
    if not table.world:
        return
    from saga.synth import WorldShift
    from saga.synth.generate import ensure_world as ensure

    w = dict(table.world)
    unknown = sorted(set(w) - set(WORLD_KEYS))
    if unknown or "out" not in w:
        raise ConfigError(f"{table.path}: world: unknown key(s) {unknown} or no 'out'; known: {list(WORLD_KEYS)}")
    try:
        shift = WorldShift(**{k: tuple(w[k]) for k in ("train_varied", "test_varied", "train_fixed") if k in w})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{table.path}: world: {e}") from None
    ensure(w["out"], num_classes=w.get("classes", 200), images_per_class=w.get("images_per_class", 60),
           size=w.get("size", 128), seed=w.get("seed", 0), shift=shift, asked_by="table")


def run_table(table: Table, seeds: list[int], out_dir: str | Path, extra: list[str] = (),
              on_result: Callable[[dict], None] | None = None) -> dict:
    """Train and evaluate every row for every seed; returns {row name: {seed: metrics}}. `on_result` gets the
    results so far after every run (e.g. to write a partial table that survives an interruption)."""
    from saga.app.run import train
    from saga.app.rundir import earlier_outputs
    from saga.train.checkpoint import latest_checkpoint

    ensure_world(table)
    out_dir = Path(out_dir)
    results: dict[str, dict[int, dict]] = {}
    for row in table.rows:
        for seed in seeds:
            cfg = row_config(table, row, seed, out_dir, extra)
            same = _same_config(cfg)
            metrics = _test_metrics(cfg) if same else None
            if metrics is None:
                # A run cut short (e.g. by a time limit) continues; `train` refuses a checkpoint of another config.
                # One of this config cut before its first checkpoint starts again; another config's results stay.
                resume = latest_checkpoint(Path(cfg.out_dir) / "checkpoints") is not None
                if not resume and not same and earlier_outputs(cfg.out_dir):
                    raise ConfigError(f"{cfg.out_dir}: holds a run of another config than row {row.name!r}, seed "
                                      f"{seed} (the table, its row files or the overrides changed since); remove that "
                                      "folder to run the row again, or give the benchmark another --out")
                steps = "evaluation only" if cfg.eval_only else f"{cfg.optim.steps} steps"
                print(f"== {row.name}, seed {seed}: {cfg.method}, {steps} -> {cfg.out_dir}"
                      + (" (resuming from its last checkpoint)" if resume else ""))
                metrics = train(cfg, resume=resume, overwrite=not resume and same)["test_metrics"]
            else:
                print(f"== {row.name}, seed {seed}: reusing {cfg.out_dir}")
            results.setdefault(row.name, {})[seed] = metrics
            if on_result is not None:
                on_result(results)
    return results


def summarise(results: dict) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Mean and (population) standard deviation over seeds of every metric, per row."""
    means, stds = {}, {}
    for name, per_seed in results.items():
        keys = list(next(iter(per_seed.values())))
        values = {k: np.array([m[k] for m in per_seed.values()]) for k in keys}
        means[name] = {k: float(v.mean()) for k, v in values.items()}
        stds[name] = {k: float(v.std()) for k, v in values.items()}
    return means, stds


def format_results(results: dict, keys=REPORT_KEYS, markdown: bool = False) -> str:
    """The table of means, with a second of standard deviations when there is more than one seed."""
    means, stds = summarise(results)
    fmt = format_markdown_table if markdown else format_table
    text = fmt(means, keys)
    if any(len(s) > 1 for s in results.values()):
        text += f"\n\nstandard deviation over seeds:\n{fmt(stds, keys)}"
    return text


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def judge_samples(run_dir: str | Path, pairs_per_step: int = 3):
    """What the judge wrote in a run (its completions.jsonl): the first completion of `pairs_per_step` pairs of
    the first and of the last logged step, same-class and different-class pairs alternating where both were
    logged. Pairs whose images are no longer on disk are left out."""
    from saga.app.report import JudgeSample
    from saga.data import load_image
    from saga.train.logger import COMPLETIONS

    rows = read_jsonl(Path(run_dir) / COMPLETIONS)
    steps = sorted({r["step"] for r in rows})
    samples = []
    for step in dict.fromkeys(steps[:1] + steps[-1:]):  # early and late (once, if only one step was logged)
        first: dict[int, dict] = {}
        for r in rows:
            if r["step"] == step:
                first.setdefault(r["pair"], r)
        same, other = ([r for r in first.values() if r["same"] is kind] for kind in (True, False))
        mixed = [r for pair in zip(same, other) for r in pair] + same[len(other):] + other[len(same):]
        shown = [r for r in mixed if Path(r["image_a"]).is_file() and Path(r["image_b"]).is_file()]
        for r in shown[:pairs_per_step]:
            a, b = Path(r["image_a"]).parent.name, Path(r["image_b"]).parent.name
            samples.append(JudgeSample(step, load_image(r["image_a"]), load_image(r["image_b"]), bool(r["same"]),
                                       r["text"], r["verdict"], float(r["reward"]), f"{a} / {b}"))
    return samples


def write_report(table: Table, results: dict, out_dir: str | Path, seed: int, *, title: str, notes: str = "",
                 extra: list[str] = (), attention=(), retrieval=()) -> Path:
    """`<out_dir>/report.html`: the table (mean ± std over the seeds run), the training curves of `seed` and what
    the judge wrote in the first row that reads it (`judge_samples`)."""
    from saga.app.report import write_report as render
    from saga.train.methods import METHODS

    out_dir = Path(out_dir)
    means, stds = summarise(results)
    curves, samples, source = {}, [], ""
    for row in table.rows:
        if row.name not in results:
            continue
        cfg = row_config(table, row, seed, out_dir, extra)
        curves[row.name] = [r for r in read_jsonl(Path(cfg.out_dir) / "metrics.jsonl")
                            if not any(k.startswith("test/") for k in r)]
        if not source and METHODS.get(cfg.method).needs_judge:
            samples = judge_samples(cfg.out_dir)
            source = f"{row.name}, seed {seed} ({cfg.out_dir})" if samples else ""
    several = any(len(r) > 1 for r in results.values())
    return render(out_dir / "report.html", title=title, table=means, stds=stds if several else None, curves=curves,
                  attention=attention, retrieval=retrieval, judge_samples=samples, judge_source=source, notes=notes)


def write_results(results: dict, out_dir: str | Path, command: str, table: Table, runs: int | None = None) -> Path:
    """results.json (every seed's metrics, means, stds, the command, environment) and results.md. `runs`: how
    many (row, seed) runs the table has, when `results` may hold fewer (a partial table says so)."""
    from saga.utils import environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    means, stds = summarise(results)
    done = sum(len(r) for r in results.values())
    doc = {"command": command, "table": str(table.path), "complete": runs is None or done >= runs,
           "results": {n: {str(s): m for s, m in r.items()} for n, r in results.items()},
           "mean": means, "std": stds, "environment": environment()}
    note = "" if doc["complete"] else f"**Incomplete: {done} of {runs} runs so far.**\n\n"
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "results.md").write_text(f"`{command}`\n\n{note}{format_results(results, markdown=True)}\n")
    return out / "results.json"
