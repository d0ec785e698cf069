"""Progress that stays readable: a bar on a terminal, a few plain lines in a log file or a worker's log."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

EVERY_SECONDS = 30.0  # between lines when not on a terminal: about 2 a minute, besides the first and last


class LineProgress:
    """tqdm's update / set_postfix / close, written as one line at the start, every EVERY_SECONDS and at the end."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, every: float = EVERY_SECONDS):
        self.total, self.desc, self.unit, self.n, self.every = total, desc, unit, initial, every
        self.postfix = ""
        self._started = self._last = time.monotonic()
        self._initial = initial
        self._write(f"{self.n}/{self.total} {self.unit}s to do" if self.n == 0 else
                    f"resuming at {self.n}/{self.total} {self.unit}s")

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close("stopped at" if exc_type else "done:")

    def close(self, done: str = "done:") -> None:
        self._write(f"{done} {self.n}/{self.total} {self.unit}s in {time.monotonic() - self._started:.0f} s"
                    f"{self.postfix}")

    def set_postfix(self, **values) -> None:
        self.postfix = ", " + ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every and self.n < self.total:
            self._last = now
            rate = (self.n - self._initial) / max(now - self._started, 1e-9)
            left = (self.total - self.n) / rate if rate else float("inf")
            self._write(f"{self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f} %), "
                        f"{rate:.3g} {self.unit}s/s, about {left:.0f} s left{self.postfix}")

    def _write(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=sys.stderr, flush=True)


def progress_bar(total: int, desc: str, unit: str = "step", initial: int = 0, enabled: bool = True):
    """A tqdm bar when stderr is a terminal, else LineProgress; nothing at all when not enabled."""
    if enabled and not sys.stderr.isatty():
        return LineProgress(total, desc, unit, initial)
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit=unit)
