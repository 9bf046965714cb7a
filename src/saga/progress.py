"""Progress that people can see anywhere: a bar on a terminal, periodic lines in a log file. No torch (the
synthetic world's render workers import it)."""

from __future__ import annotations

import os
import sys
import time


class progress:
    """A progress bar on a terminal (tqdm); elsewhere (a log file, a batch job) a line every `every` seconds and one
    at the end of work that lasted that long, with the rate and the time left, so long work is never silent.

        with progress(total=500, desc="train saga", unit="step") as bar:
            bar.update(1); bar.set_postfix({"loss": "0.52"})

    `every` defaults to $SAGA_PROGRESS_SECONDS, else 30 s.
    """

    def __init__(self, total: int | None = None, *, desc: str = "", unit: str = "it", initial: int = 0,
                 every: float | None = None, stream=None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every = float(os.environ.get("SAGA_PROGRESS_SECONDS", 30)) if every is None else every
        if not enabled:  # e.g. data-parallel ranks other than 0: one report per run is enough
            self.every = float("inf")
        self.postfix: dict = {}
        self._bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream)
        self._start = self._last = time.monotonic()
        self._start_n = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last >= self.every:
            self._line()

    def set_postfix(self, values: dict) -> None:
        self.postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(values)

    def _line(self) -> None:
        self._last = now = time.monotonic()
        rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f} %)"
        eta = f", {_duration((self.total - self.n) / rate)} left" if self.total and rate > 0 else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done}, {rate:.3g} {self.unit}/s{eta}{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._last != self._start or time.monotonic() - self._start >= self.every:
            self._line()  # the closing line of work long enough to have been reported (or that took `every`)

    def __enter__(self) -> progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        raise TypeError("progress is not iterable; call update()")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
