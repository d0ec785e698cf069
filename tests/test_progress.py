"""Progress in a log is a few plain lines, not a bar's redraws; a terminal still gets the bar."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import yaml

from gan_core.progress import LineProgress
from tests.helpers import TINY


def test_training_without_a_terminal_writes_a_few_lines(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    ganforge = [sys.executable, "-m", "gan_core.cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*ganforge, "prepare"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    done = subprocess.run([*ganforge, "train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\r" not in done.stdout + done.stderr
    lines = done.stderr.splitlines()
    # The evaluator network (trained for checkpoint selection) and the GAN: a first and a last line each.
    assert [line.split(":")[0] for line in lines] == ["evaluator network"] * 2 + ["train"] * 2, lines
    assert lines[2] == "train: 0/78 steps to do" and lines[3].startswith("train: done: 78/78 steps in "), lines
    assert "d=" in lines[3] and "g=" in lines[3]


def test_lines_come_at_most_once_per_interval(capsys):
    with LineProgress(total=1000, desc="work", unit="step", every=0.2) as bar:
        for _ in range(1000):
            bar.update(1)
            time.sleep(0.001)  # about 1.2 s in all (sleep overshoots): 4 to 6 lines between start and end
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "work: 0/1000 steps to do" and lines[-1].startswith("work: done: 1000/1000 steps in ")
    middle = lines[1:-1]
    assert 2 <= len(middle) <= 8, lines
    assert all(" steps/s, about " in line and " s left" in line for line in middle)
    steps = [int(line.split()[1].split("/")[0]) for line in middle]
    assert steps == sorted(steps) and 0 < steps[0] < 1000
