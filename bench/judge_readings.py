"""What the frozen judge writes about image A through a SAGA run's encoder, early and late in the run.

GRPO rewards the verdict only. If the judge reads an attribute unreliably, the encoder can raise the reward by
making every image read as one value of it: same-class pairs then always agree on it, and few negatives differ
in it alone. This script shows whether that happened: for each attribute of the synthetic world, the share of
logged completions that state its most frequent value for image A, in the first and the last `--window` steps,
beside how often that value is true and how often the written value is right; and the mean reward of each window.

    python bench/judge_readings.py runs/diag/grpo2000 [RUN ...] [--window 500] [--out FILE.json]

Reads RUN/completions.jsonl (`grpo.log_completions_every`) and, for the truth, the world.json of the run's
data.root. Only the synthetic world's comparison format (`saga.judge.prompts.format_comparison`) is parsed.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from saga.config import load_config
from saga.judge.prompts import parse_comparison
from saga.synth import load_world


def readings(rows: list[dict], truth: dict[str, dict[str, str]]) -> dict[str, dict]:
    """rows: completions ({"image_a": path, "text": ..., "reward": ...}); truth: class folder -> attributes.
    Returns {attribute: {"value", "written_share", "true_share", "accuracy"}} plus "reward" and "completions"."""
    written: dict[str, Counter] = {}
    true: dict[str, Counter] = {}
    right: Counter = Counter()
    for row in rows:
        attrs = truth[Path(row["image_a"]).parent.name]
        for name, (value_a, _) in parse_comparison(row["text"]).items():
            written.setdefault(name, Counter())[value_a] += 1
            true.setdefault(name, Counter())[attrs[name]] += 1
            right[name] += value_a == attrs[name]
    out: dict[str, dict] = {}
    for name, counts in written.items():
        value, n = counts.most_common(1)[0]
        total = sum(counts.values())
        out[name] = {"value": value, "written_share": n / total, "true_share": true[name][value] / total,
                     "accuracy": right[name] / total}
    return {"attributes": out, "reward": sum(r["reward"] for r in rows) / max(1, len(rows)), "completions": len(rows)}


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['value']:>8} {r['written_share']:4.0%} / {r['true_share']:4.0%}, {r['accuracy']:4.0%}"


def world_truth(root: Path) -> dict[str, dict[str, str]]:
    """Class folder -> attributes, from the world's world.json."""
    return {c.folder: c.combination.as_dict() for c in load_world(root).classes}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--window", type=int, default=500, help="steps in the early and the late window")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    report = {}
    for run in args.runs:
        truth = world_truth(Path(load_config(run / "config.yaml").data.root))
        rows = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
        last = max(r["step"] for r in rows)
        windows = {"early": [r for r in rows if r["step"] <= args.window],
                   "late": [r for r in rows if r["step"] > last - args.window]}
        report[str(run)] = {k: readings(v, truth) for k, v in windows.items()}
        print(f"{run}: steps 1-{args.window} vs {last - args.window + 1}-{last}")
        early, late = report[str(run)]["early"], report[str(run)]["late"]
        print(f"  reward {early['reward']:.3f} -> {late['reward']:.3f} ({early['completions']} and "
              f"{late['completions']} completions)")
        print(f"  {'attribute':16} {'early: top value, written / true share, right':46} late")
        for name, e in early["attributes"].items():
            print(f"  {name:16} {_cell(e):46} {_cell(late['attributes'].get(name))}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
