"""dvc.yaml's code dependencies are the import closure of each stage's entry module, no more, no less.

A module missing from a stage's deps means a change to it reruns nothing; a module listed but not
imported means a change to it reruns a stage that never runs it (generation code retraining the model).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

PACKAGES = ("gan_core", "flows")


def module_file(name: str) -> Path | None:
    """The source file of a module of this project (a package's __init__.py), or None for a third-party one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names, at any depth (lazy imports in functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return names


def import_closure(entry: str) -> set[str]:
    """Project files (relative to the root) that running `python -m entry` imports."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_modules(path))
    return {path.relative_to(ROOT).as_posix() for path in seen}


def stage_entries() -> dict[str, tuple[str, set[str]]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    entries = {}
    for name, stage in stages.items():
        cmd = stage["cmd"].split()
        assert cmd[:2] == ["python", "-m"], f"stage {name}: expected `python -m MODULE`, got {stage['cmd']!r}"
        code_deps = {dep for dep in stage.get("deps", []) if dep.endswith(".py")}
        entries[name] = (cmd[2], code_deps)
    return entries


@pytest.mark.parametrize("stage", sorted(stage_entries()))
def test_stage_deps_are_its_import_closure(stage):
    entry, deps = stage_entries()[stage]
    closure = import_closure(entry)
    assert not closure - deps, f"dvc.yaml stage {stage}: imported but not a dep: {sorted(closure - deps)}"
    assert not deps - closure, f"dvc.yaml stage {stage}: a dep that {entry} never imports: {sorted(deps - closure)}"


def test_generation_code_does_not_retrain():
    # The point of the closures: a change to generation or publishing reruns generate only.
    entries = stage_entries()
    train_closure = import_closure(entries["train"][0])
    for module in ("gan_core/images/generate.py", "gan_core/images/png.py", "gan_core/images/evaluate.py"):
        assert module not in train_closure, f"the train stage imports {module}"
    assert "gan_core/images/train.py" not in import_closure(entries["generate"][0])
