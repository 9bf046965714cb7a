"""A run directory's safety: one run at a time, and no earlier results deleted unless asked.

- `RunLock`: an exclusive `fcntl.flock` on <run>/.saga.lock for the life of the run. The operating system releases
  it when the process dies, however it dies, so the lock of a killed run is stale by construction and the next run
  takes it over (saying so); a second run while the first is alive fails at once, naming the holder.
- `clear_for_new_run`: a run without --resume into a folder that holds an earlier run's results is refused, unless
  --overwrite, which says what it deletes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from saga.errors import ConfigError

log = logging.getLogger(__name__)

LOCK = ".saga.lock"
# What a run writes besides config.yaml and environment.json (which every start rewrites).
OUTPUTS = ("checkpoints", "metrics.jsonl", "completions.jsonl", "tensorboard", "test_metrics.json", "export",
           "test_embeddings.npz", "class_neighbours.json")


class RunLock:
    """`with RunLock(run_dir):` holds the run directory for one run (see the module docstring)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "no details"
            os.close(fd)
            raise ConfigError(f"{self.path.parent}: another saga run is writing to this folder ({holder}); wait for "
                              "it to finish, or choose another out_dir") from None
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:  # its holder ended without removing it: killed, or out of memory
            log.warning("%s: taking over the lock of a run that did not end cleanly (%s)", self.path.parent, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # gone: released cleanly (a killed run leaves it, with its holder)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def earlier_outputs(run_dir: str | Path) -> list[str]:
    """The outputs of an earlier run present in `run_dir` (names of `OUTPUTS`)."""
    return [name for name in OUTPUTS if (Path(run_dir) / name).exists()]


def clear_for_new_run(run_dir: str | Path, overwrite: bool) -> None:
    """Make `run_dir` ready for a fresh run: refuse if it holds an earlier run's results, unless `overwrite`."""
    run_dir = Path(run_dir)
    found = earlier_outputs(run_dir)
    if not found:
        return
    if not overwrite:
        resume = "--resume to continue it from its last checkpoint, " if "checkpoints" in found else ""
        raise ConfigError(f"{run_dir}: holds the results of an earlier run ({', '.join(found)}); pass {resume}"
                          f"--overwrite to delete them, or choose another out_dir")
    print(f"--overwrite: deleting {', '.join(found)} in {run_dir}")
    for name in found:
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
