"""What `make install` and `make test` install and say: the runtime has what the README shows, the steps say what
they do, and `make test` brings (and then requires) the browser its report test opens."""

from __future__ import annotations

import re
import subprocess
import tomllib

from tests.helpers import ROOT


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower()


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def make_dry_run(tmp_path, target: str) -> list[str]:
    """The commands `make TARGET` would run for a fresh virtual environment (make -n: nothing is run)."""
    done = subprocess.run(["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=60)
    return done.stdout.replace("\\\n", " ").splitlines()


def test_datasets_is_in_the_runtime_install_as_the_readme_and_cards_load_with_it():
    runtime = {requirement_name(r): r for r in project()["dependencies"]}
    assert "datasets" in runtime, "make install must install `datasets` (the README and cards use load_dataset)"
    assert runtime["datasets"] == f"datasets=={pins()['datasets']}"
    assert "datasets" not in {requirement_name(r) for r in project()["optional-dependencies"]["test"]}


def test_every_runtime_dependency_is_pinned_in_constraints():
    pinned = {name.lower() for name in pins()}
    assert not [r for r in project()["dependencies"] if requirement_name(r) not in pinned]


def test_make_install_says_what_each_step_does(tmp_path):
    commands = make_dry_run(tmp_path, "install-test")
    steps = [c for c in commands if re.search(r"-m venv|pip install|uv pip install", c)]
    assert len(steps) == 4  # the venv, torch and uv, ganforge, the test extras
    for command in steps:  # each announces itself and its time, then reports how long it took
        assert re.match(r'echo "make install: .+\(.*(seconds|minute|s)\)"', command), command
        assert "done in" in command, command


def test_make_test_installs_the_browser_when_missing_and_requires_it(tmp_path):
    commands = "\n".join(make_dry_run(tmp_path, "test"))
    assert re.search(r"if \[ ! -x /usr/bin/chromium \].*apt-get install -y -qq chromium", commands)
    assert re.search(r"GANFORGE_REQUIRE_BROWSER=1 \S+python -m pytest", commands)
