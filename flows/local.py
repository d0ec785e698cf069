"""A stage run from the command line (`python -m flows.X`, so `dvc repro` by hand): one local Prefect
server for all stages, and a library error printed once, on one line, with exit code 1.

Without PREFECT_API_URL every stage process would start an ephemeral server of its own (10-27 s each
on 2 cores, with telemetry errors where there is no network); instead the first stage starts
`prefect server start` on 127.0.0.1, records it in .ganforge/prefect-server.pid and prefect.env (as
`make serve` does, so either reuses the other's), and later stages reuse it. `make stop` stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

from gan_core.errors import readable_errors, setup_hint
from gan_core.procs import alive, answers, cmdline, free_port, read_pid

STARTUP_TIMEOUT = 120  # s: 10-27 s on 2 busy cores


def state_dir() -> Path:
    """The project's .ganforge/; a queued `dvc exp run` works in .dvc/tmp/exps/..., whose project is above."""
    cwd = Path.cwd().resolve()
    project = str(cwd).split("/.dvc/tmp/exps/", 1)[0]
    return Path(project) / ".ganforge"


def _recorded_url(state: Path) -> str | None:
    """The API URL of the server recorded under STATE when it is alive and answers, else None."""
    pid = read_pid(state / "prefect-server.pid")
    if pid is None or not alive(pid) or not any("prefect" in a for a in cmdline(pid)):
        return None  # never started, stopped, or the pid now belongs to another program
    with contextlib.suppress(OSError):
        url = (state / "prefect.env").read_text().strip().removeprefix("export PREFECT_API_URL=")
        return url if answers(f"{url}/health") else None
    return None


def _start(state: Path) -> str:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    # Its database under .ganforge/ as for `make serve`; no telemetry (it only logs failures offline).
    env |= {"PREFECT_HOME": str(state / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(state / "prefect-server.log", "ab") as log:
        # A session of its own: it outlives this stage, and `make stop` ends its process group.
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  env=env, start_new_session=True)
    (state / "prefect-server.pid").write_text(f"{server.pid}\n")
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not answers(f"{url}/health"):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the local Prefect server did not start: see {state / 'prefect-server.log'}")
        time.sleep(0.3)
    (state / "prefect.env").write_text(f"export PREFECT_API_URL={url}\n")
    return url


def local_api_url() -> str:
    """The URL of this project's local Prefect server, started first when none runs."""
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "prefect-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # stages started together start one server
        return _recorded_url(state) or _start(state)


class _NoTracebackForReadableErrors(logging.Filter):
    """Prefect logs a failed run's exception with its traceback; a library error's message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], readable_errors()):
            record.exc_info = record.exc_text = None
        return True


def run_stage(flow) -> None:
    """Run FLOW with its defaults on the configured or the local Prefect server; exit 1 when it fails."""
    url = PREFECT_API_URL.value() or local_api_url()
    os.environ["PREFECT_API_URL"] = url  # for the processes it starts (Dask workers)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForReadableErrors())
    with temporary_settings(updates={PREFECT_API_URL: url}):
        state = flow(return_state=True)
    if not state.is_completed():  # failed, or crashed (killed, out of memory)
        error = state.result(raise_on_failure=False)
        if isinstance(error, readable_errors()):
            print(f"{flow.name}: error: {error}{setup_hint(error)}", file=sys.stderr)
        else:
            print(f"{flow.name}: failed: {state.message} (traceback above)", file=sys.stderr)
        sys.exit(1)
