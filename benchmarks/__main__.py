"""`python -m benchmarks [--quick] [--rounds N] [training] [generation] [pipeline] [tables] [quality]`: every figure,
one `bench:` line each.

--quick runs every suite at tiny sizes (seconds each): a check that the suites still run, which
tests/test_benchmarks.py makes on every `make test`; its figures are not to be quoted. A suite that raises
or prints no `bench:` line is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

SUITES = ("training", "generation", "pipeline", "tables", "quality")
SUITE_HEADER = "== suite "  # `== suite NAME`: the lines after it, up to the next, are that suite's


def machine_state() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{len(os.sched_getaffinity(0))} cores, load average {load}"


def run_suite(name: str, options: dict) -> bool:
    """Run one suite; False when it raised or reported no figure."""
    print(f"{SUITE_HEADER}{name}", flush=True)
    started = time.perf_counter()
    try:
        lines = importlib.import_module(f"benchmarks.{name}").run(**options)
    except Exception:  # one broken suite must not hide the others' figures
        traceback.print_exc()
        print(f"suite {name}: FAILED after {time.perf_counter() - started:.0f} s", flush=True)
        return False
    if not lines:
        print(f"suite {name}: FAILED: no bench line", flush=True)
        return False
    print(f"suite {name}: {len(lines)} bench lines in {time.perf_counter() - started:.0f} s", flush=True)
    return True


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds per suite: a check, not figures")
    parser.add_argument("--rounds", type=int, help="rounds per figure (fewer: a check of the scripts)")
    parser.add_argument("suites", nargs="*", metavar="suite", help=f"of {', '.join(SUITES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s) {sorted(unknown)}: choose from {', '.join(SUITES)}")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    options = {"quick": args.quick} | ({"rounds": args.rounds} if args.rounds is not None else {})
    started = time.perf_counter()
    print(f"machine: {machine_state()}{'; quick mode: not figures to quote' if args.quick else ''}", flush=True)
    failed = [name for name in args.suites or SUITES if not run_suite(name, options)]
    print(f"machine: {machine_state()}; benchmarks took {time.perf_counter() - started:.0f} s", flush=True)
    if failed:
        print(f"benchmarks: suite(s) {', '.join(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
