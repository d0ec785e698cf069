"""Side-by-side timing: interleaved rounds of each contender, medians, and the one-line report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def rates(contenders: dict[str, Callable[[], float]], *, rounds: int, seconds: float,
          sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median rate (units of work per second) of each contender over `rounds` interleaved rounds.

    Each call of a contender does some work and returns how many units it did (steps, samples,
    FLOPs, bytes). A round repeats one contender for at least `seconds`; rounds alternate A, B, ...
    then ..., B, A so that a machine that speeds up or slows down during the run favours neither.
    """
    for work in contenders.values():  # warm-up: allocator, kernels, lazy imports
        work()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(_one_round(contenders[name], seconds, sync))
    return {name: statistics.median(values) for name, values in samples.items()}


def _one_round(work: Callable[[], float], seconds: float, sync: Callable[[], None]) -> float:
    units, start = 0.0, time.perf_counter()
    while True:
        units += work()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return units / elapsed


def report(name: str, value: float, goal: float, higher_is_better: bool = True) -> str:
    line = f"bench: {name} value={value:.3g} goal{'>=' if higher_is_better else '<='}{goal:g}"
    print(line, flush=True)
    return line


def info(text: str) -> None:
    """Context for a figure (absolute rates, what was measured); not a figure itself."""
    print(f"  {text}", flush=True)
