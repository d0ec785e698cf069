"""Fingerprints: what a checkpoint, a model or a cached evaluator was made from (data, settings, code)."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import numpy as np

from gan_core.checkpoint import sha256_file
from gan_core.config import Params

PACKAGE = Path(__file__).resolve().parent
# Train settings that change how fast or where a run goes, not what it learns. `threads` and `device`
# change float summation order, so the last bits of the weights, but not what is trained: a checkpoint
# resumes on another machine. `select_every` stays: it decides which step is exported.
NOT_IN_FINGERPRINT = {"checkpoint_every", "device", "threads"}


class LineageError(ValueError):
    """A checkpoint or model used with data, settings or code other than those it was made from."""


def canonical_sha256(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def data_fingerprint(prepared_path: Path) -> dict:
    """sha256 of the prepared .npz, and per split the sha256 of its images and labels."""
    splits = {}
    with np.load(prepared_path, allow_pickle=False) as npz:
        # A table's splits are its rows (Parquet bytes); an image set's, its images and labels.
        fields = ("rows",) if "kind" in npz.files and str(npz["kind"]) == "table" else ("images", "labels")
        for name in ("train", "validation", "test"):
            digest = hashlib.sha256()
            for key in (f"{name}_{field}" for field in fields):
                array = np.ascontiguousarray(npz[key])
                digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
                digest.update(array.tobytes())
            splits[name] = digest.hexdigest()
    return {"sha256": sha256_file(prepared_path), "splits": splits}


def _module_path(name: str) -> Path | None:
    """gan_core's source file of dotted `name` ("tabular.train"); a sub-package's __init__.py; None if none."""
    base = PACKAGE.joinpath(*name.split("."))
    path = base.with_suffix(".py")
    return path if path.is_file() else None


def module_closure(module: str) -> list[Path]:
    """The source files of gan_core `module` (dotted for a sub-package's: "tabular.train") and of every
    gan_core module it imports, transitively."""
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        path = _module_path(name)
        if name in seen or path is None:
            continue
        seen[name] = path
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "gan_core":
                pending += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gan_core."):
                inner = node.module.removeprefix("gan_core.")
                pending.append(inner)
                if (PACKAGE / inner.replace(".", "/")).is_dir():  # `from gan_core.tables import train`
                    pending += [f"{inner}.{alias.name}" for alias in node.names]
    return sorted(seen.values())


def code_version(module: str) -> str:
    """sha256 over the source of `module` and what it imports from gan_core (names and bytes)."""
    return _sources_digest(module_closure(module))


def source_digest(parts: tuple[str, ...]) -> str:
    """sha256 over the source of exactly these gan_core modules, not what they import; "module:function" takes
    one top-level function's source only, so that the rest of its module can change without changing the digest."""
    digest = hashlib.sha256()
    for part in parts:
        name, _, function = part.partition(":")
        path = _module_path(name)
        text = path.read_text()
        source = _function_source(text, function) if function else text
        digest.update(f"{path.name}|{function}|".encode() + source.encode())
    return digest.hexdigest()


def _function_source(text: str, function: str) -> str:
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_source_segment(text, node)
    raise LookupError(f"no top-level function {function!r}")


def _sources_digest(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}|".encode() + path.read_bytes())
    return digest.hexdigest()


def training_fingerprint(params: Params, data_fp: dict) -> dict:
    """What a trained model depends on, plus `id`, the sha256 of all of it as canonical JSON."""
    fingerprint = {
        "data": data_fp,
        "split": params.prepare.model_dump(include={"source", "test_source", "resolution", "transform",
                                                    "validation_fraction", "test_fraction", "seed"}),
        "model": params.model.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json", exclude=NOT_IN_FINGERPRINT),
        "features": params.features.model_dump(mode="json"),  # the evaluator that selects the exported step
        "code": code_version("images.train"),
    }
    return fingerprint | {"id": canonical_sha256(fingerprint)}


def table_training_fingerprint(params: Params, data_fp: dict) -> dict:
    """training_fingerprint for a table: the split and column settings, the `table` section and train.seed."""
    fingerprint = {
        "data": data_fp,
        "split": params.prepare.model_dump(mode="json", include={"source", "test_source", "validation_fraction",
                                                                 "test_fraction", "seed", "columns", "target",
                                                                 "condition"}),
        # max_seconds stops a run by the clock: it stays, as it decides what is trained
        "table": params.table.model_dump(mode="json", exclude={"checkpoint_every"}),
        "train": {"seed": params.train.seed},
        "code": code_version("tables.train"),
    }
    return fingerprint | {"id": canonical_sha256(fingerprint)}


def differences(found: dict, wanted: dict) -> list[str]:
    """What differs between two training fingerprints, in words: 'with train.lr_g 0.0004 vs 0.0002'."""
    if found.get("data", {}).get("sha256") != wanted["data"]["sha256"]:
        out = [f"on other data (sha256 {_short(found.get('data', {}).get('sha256'))} vs "
               f"{_short(wanted['data']['sha256'])})"]
    else:
        out = []
    for section in ("split", "model", "table", "train", "features"):
        if section not in found and section not in wanted:
            continue
        theirs, ours = found.get(section) or {}, wanted.get(section) or {}
        out += [f"with {section}.{key} {theirs.get(key)} vs {ours.get(key)}"
                for key in sorted(set(theirs) | set(ours)) if theirs.get(key) != ours.get(key)]
    if found.get("code") != wanted["code"]:
        out.append(f"with other gan_core code (version {_short(found.get('code'))} vs {_short(wanted['code'])})")
    return out


def _short(digest: str | None) -> str:
    return f"{digest[:8]}.." if digest else "none"


def check_resumable(checkpoint: Path, meta: dict, wanted: dict) -> None:
    """Refuse a checkpoint made from other data, settings or code, saying what differs."""
    found = meta.get("fingerprint")
    if found is None:
        raise LineageError(f"{checkpoint} has no fingerprint (saved by an older ganforge): delete it or rerun "
                           "without --resume")
    if found.get("id") != wanted["id"]:
        raise LineageError(f"{checkpoint} was trained {'; '.join(differences(found, wanted))} "
                           "(checkpoint vs now): delete it or rerun without --resume")


def check_model_data(model: str, meta: dict, prepared: Path, data_fp: dict) -> None:
    """Refuse to evaluate a model (`model` names it) on a prepared file other than the one it was trained on."""
    trained_on = (meta.get("fingerprint") or {}).get("data")
    if trained_on is None:
        raise LineageError(f"{model} records no data fingerprint (trained by an older ganforge), so its "
                           "training images are unknown: train it again")
    if trained_on["splits"] != data_fp["splits"]:
        changed = [name for name in data_fp["splits"] if trained_on["splits"].get(name) != data_fp["splits"][name]]
        raise LineageError(f"{prepared} is not the data {model} was trained on (splits {', '.join(changed)} "
                           f"differ; sha256 {_short(data_fp['sha256'])} vs {_short(trained_on['sha256'])}): did "
                           "prepare.source, prepare.seed or a split fraction change since training? Prepare the "
                           "data it was trained on, or train again")


# --- provenance and manifests: what a published model or dataset came from ------------------


