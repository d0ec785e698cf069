"""Side-by-side timing: interleaved rounds of each contender, medians, and the one-line report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    wall: float  # units of work per second of wall time: the figure
    cpu: float  # per second of this process's CPU time: what other load on a shared machine blurs less


def rates(contenders: dict[str, Callable[[], float]], *, rounds: int, seconds: float,
          sync: Callable[[], None] = lambda: None) -> dict[str, Rate]:
    """Median rates of each contender over `rounds` interleaved rounds.

    Each call of a contender does some work and returns how many units it did (steps, samples,
    FLOPs, bytes). A round repeats one contender for at least `seconds`; rounds alternate A, B, ...
    then ..., B, A so that a machine that speeds up or slows down during the run favours neither.
    """
    for work in contenders.values():  # warm-up: allocator, kernels, lazy imports
        work()
    sync()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(_one_round(contenders[name], seconds, sync))
    return {name: Rate(statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
            for name, values in samples.items()}


def _one_round(work: Callable[[], float], seconds: float, sync: Callable[[], None]) -> tuple[float, float]:
    units, start, cpu_start = 0.0, time.perf_counter(), time.process_time()
    while True:
        units += work()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return units / elapsed, units / max(time.process_time() - cpu_start, 1e-9)


def report(name: str, value: float, goal: float, higher_is_better: bool = True, note: str = "") -> str:
    """One figure: `bench: NAME value=V goal>=G` (or <=), and a note in brackets when the value needs one."""
    line = f"bench: {name} value={value:.3g} goal{'>=' if higher_is_better else '<='}{goal:g}"
    line += f" ({note})" if note else ""
    print(line, flush=True)
    return line


def info(text: str) -> None:
    """Context for a figure (absolute rates, what was measured); not a figure itself."""
    print(f"  {text}", flush=True)
