"""The run directory's logs: metrics.jsonl, completions.jsonl and TensorBoard events.

metrics.jsonl has one JSON object per logged step ({"step": s, "loss/grpo": ..., "reward_mean": ..., ...}), easy
to read with pandas (`pd.read_json(path, lines=True)`). completions.jsonl has one object per sampled completion
of a logged step, with its pair (image paths, same/different), text, verdict, reward and advantage: the sample
table TRL users expect from GRPO (docs/method.md, "L_GRPO"). The same numbers go to TensorBoard, the table as text.

On resume, lines logged after the checkpoint by the interrupted run are dropped (they will be logged again), and so
is the final evaluation of a finished run that is resumed (it is done again); TensorBoard is told to purge its
events past the checkpoint, so every file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

METRICS, COMPLETIONS = "metrics.jsonl", "completions.jsonl"


def _truncate_after(path: Path, step: int, final_step: int | None = None) -> None:
    """Keep the lines up to `step`, except a final evaluation (test/* at `final_step`)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line:
            continue
        row = json.loads(line)
        if row["step"] <= step and not (row["step"] == final_step and any(k.startswith("test/") for k in row)):
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


class RunLogger:
    """Append-only logs of one run; `resume_step` = the step a resumed run continues after (None: a new run);
    `final_step` = the step the final evaluation is logged at. A disabled logger (data-parallel ranks other than 0)
    writes nothing."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, final_step: int | None = None, *,
                 enabled: bool = True) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        if not enabled:
            return
        if resume_step is not None:
            for name in (METRICS, COMPLETIONS):
                _truncate_after(self.run_dir / name, resume_step, final_step)
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One metrics.jsonl line and one TensorBoard scalar per metric (non-finite values are kept as null)."""
        if not self.enabled:
            return
        clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
        with (self.run_dir / METRICS).open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def completions(self, step: int, rows: list[dict]) -> None:
        """Sample completions of one step: completions.jsonl rows and a markdown table in TensorBoard."""
        if not self.enabled:
            return
        with (self.run_dir / COMPLETIONS).open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")
        header = "| pair | same | verdict | reward | completion |\n|---|---|---|---|---|\n"
        body = "".join(f"| {r['pair']} | {r['same']} | {r['verdict']} | {r['reward']:g} | "
                       f"{r['text'].replace(chr(10), ' / ').replace('|', '/')} |\n" for r in rows)
        self.writer.add_text("completions", header + body, step)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
