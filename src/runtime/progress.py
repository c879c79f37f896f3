"""Progress of a long draw, counted in sampler steps: a bar with an ETA on a terminal, a line now and then
otherwise (logs, pipes), nothing when switched off. tqdm draws the bar."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

MODES = ("auto", "bar", "lines", "off")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """``update(n)`` after each sampler step; ``close()`` at the end.

    ``mode``: ``bar`` (tqdm), ``lines`` (one line every ``every`` seconds and a last one), ``off``, or ``auto``
    (a bar when ``stream`` is a terminal, else lines).
    """

    def __init__(self, total: int, desc: str = "sampling", mode: str = "auto", every: float = 30.0, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.total, self.desc, self.every = mode, max(1, int(total)), desc, float(every)
        self.done, self.shown = 0, -1
        self.start = self.last = time.perf_counter()
        self.bar = tqdm(total=self.total, desc=desc, unit="step", file=self.stream, dynamic_ncols=True) \
            if mode == "bar" else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines" and time.perf_counter() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        self.last = now = time.perf_counter()
        self.shown = self.done
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _duration(left) if left == left else "?"
        print(f"{self.desc}: {self.done}/{self.total} steps ({100 * self.done / self.total:.0f}%), "
              f"{_duration(elapsed)} elapsed, ETA {eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines" and self.done and self.shown != self.done:
            self._line()

    def __call__(self, *_) -> None:  # the samplers' callback(i, x, denoised)
        self.update(1)
