"""Stages run by hand (`python -m flows.X`, as `dvc repro` runs them) share one local Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, TINY

pytestmark = pytest.mark.slow  # a real Prefect server starts: 10-30 s on 2 busy cores


def run_stage(project: Path, stage: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"flows.{stage}"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


def server_pid(project: Path) -> int:
    return int((project / ".ganforge" / "prefect-server.pid").read_text())


def test_stages_reuse_one_local_server_and_print_an_error_once(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(TINY))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect-home"),  # no user profile
            "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    try:
        first = run_stage(project, "prepare", env)
        assert first.returncode == 0, first.stderr[-3000:]
        pid = server_pid(project)
        assert (project / "data" / "prepared" / "digits.npz").exists()

        (project / "params.yaml").write_text(yaml.safe_dump({**TINY, "prepare": {"source": "data/raw/nothing"}}))
        second = run_stage(project, "prepare", env)
        assert server_pid(project) == pid and "Starting temporary server" not in first.stderr + second.stderr
        output = first.stdout + first.stderr + second.stdout + second.stderr
        assert "telemetry" not in output.lower()
        # The library's one-line error: no traceback, neither Prefect's nor Python's, and exit code 1.
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
        assert [line for line in second.stderr.splitlines() if line.startswith("prepare:")] == [
            "prepare: error: prepare.source: data/raw/nothing not found (did you `dvc pull` or `dvc add` it?)"]
    finally:
        stopped = subprocess.run(["bash", str(ROOT / "scripts" / "stop.sh")], cwd=project, env=env,
                                 capture_output=True, text=True, timeout=120)
    assert f"stopped prefect-server (pid {pid})" in stopped.stdout, stopped
    assert not Path(f"/proc/{pid}").exists() and not (project / ".ganforge" / "prefect.env").exists()
