"""The code's layout holds: no import circle, kinds apart, no private name across modules, one flow per name.

Read from the source (ast), so a change that breaks the layout fails here before anyone draws it again.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from gan_core.fingerprint import module_closure
from tests.helpers import ROOT

PACKAGE = ROOT / "gan_core"
# Rooms that sit above both kinds: they may choose between them.
ABOVE_KINDS = ("gan_core.provenance", "gan_core.registry", "gan_core.stages", "gan_core.cli", "gan_core.kinds",
               "gan_core.loader")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(*packages: str) -> dict[str, Path]:
    return {module_name(path): path for package in packages for path in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> dict[str, set[str]]:
    """Project modules `path` imports (any depth, lazy imports too) -> the names it takes from each."""
    found: dict[str, set[str]] = defaultdict(set)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    found[alias.name]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in known:  # `from gan_core import storage`
                    found[submodule]
                elif node.module in known:
                    found[node.module].add(alias.name)
    return found


def import_graph(*packages: str) -> dict[str, dict[str, set[str]]]:
    modules = project_modules(*packages)
    return {name: imports_of(path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    assert cycles(import_graph("gan_core", "flows")) == []


def test_no_circle_between_rooms():
    # Rooms as drawn: a package (images/, tables/, stages/) is one room, a top-level module another.
    rooms: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for module, targets in import_graph("gan_core").items():
        room = ".".join(module.split(".")[:2])
        for target in targets:
            target_room = ".".join(target.split(".")[:2])
            if target_room != room and not (module == "gan_core" or target == "gan_core"):
                rooms[room][target_room] = set()
    assert cycles(rooms) == []


def test_each_kind_is_apart():
    graph = import_graph("gan_core")
    for module, targets in graph.items():
        for kind, other in (("gan_core.images", "gan_core.tables"), ("gan_core.tables", "gan_core.images")):
            if module.startswith(kind):
                crossing = sorted(t for t in targets if t.startswith(other))
                assert not crossing, f"{module} (one kind) imports the other kind: {crossing}"
        if not module.startswith(("gan_core.images", "gan_core.tables", *ABOVE_KINDS)) and module != "gan_core":
            kinds = sorted(t for t in targets if t.startswith(("gan_core.images", "gan_core.tables")))
            assert not kinds, f"shared module {module} imports a kind: {kinds}"


def test_no_private_name_imported_across_modules():
    private = [f"{module} takes {name} from {target}"
               for module, targets in import_graph("gan_core", "flows", "benchmarks").items()
               for target, names in targets.items() for name in sorted(names) if name.startswith("_")]
    assert private == []


def test_one_flow_per_name():
    names = defaultdict(list)
    for path in sorted((ROOT / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            for decorator in getattr(node, "decorator_list", []):
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "flow":
                    for keyword in decorator.keywords:
                        if keyword.arg == "name":
                            names[keyword.value.value].append(f"{path.name}:{node.name}")
    assert {name: where for name, where in names.items() if len(where) > 1} == {}


def test_image_training_fingerprint_covers_only_what_training_runs():
    # The fingerprint hashes images.train's import closure: publishing, layout, provenance or table code
    # there would make a manifest change refuse --resume and retrain the model under `dvc repro`.
    closure = {path.relative_to(PACKAGE).as_posix() for path in module_closure("images.train")}
    assert "images/train.py" in closure and "images/models.py" in closure
    outside = sorted(p for p in closure if p.startswith("tables/") or p in {
        "provenance.py", "layout.py", "registry.py", "publish.py", "read.py", "retention.py", "card.py", "images/card.py",
        "images/generate.py", "images/evaluate.py"})
    assert outside == []


def test_train_stage_runs_no_publication_code():
    # dvc.yaml's train deps are this closure: a change to manifests, publication or cards must not retrain.
    from tests.test_stage_deps import import_closure

    closure = import_closure("flows.train")
    assert "gan_core/images/train.py" in closure
    publication = sorted(p for p in closure if Path(p).name in {"provenance.py", "publish.py", "read.py", "retention.py", "registry.py",
                                                                "card.py", "generate.py", "lineage.py"})
    assert publication == []
