"""`python -m benchmarks [--rounds N] [training] [generation] [pipeline] [tables]`: every figure, one `bench:` line each."""

from __future__ import annotations

import importlib
import os
import sys
import time

SUITES = ("training", "generation", "pipeline", "tables")


def machine_state() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{len(os.sched_getaffinity(0))} cores, load average {load}"


def main(argv: list[str]) -> int:
    rounds = {}
    if argv[:1] == ["--rounds"]:  # fewer rounds: a quick check of the scripts, not figures to quote
        rounds, argv = {"rounds": int(argv[1])}, argv[2:]
    suites = argv or list(SUITES)
    unknown = set(suites) - set(SUITES)
    if unknown:
        print(f"unknown suite(s) {sorted(unknown)}: choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    print(f"machine: {machine_state()}", flush=True)
    for name in suites:
        importlib.import_module(f"benchmarks.{name}").run(**rounds)
    print(f"machine: {machine_state()}; benchmarks took {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
