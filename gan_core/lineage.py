"""Fingerprints: what a checkpoint, a model or a cached evaluator was made from (data, settings, code)."""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from gan_core.checkpoint import read_metrics, sha256_file
from gan_core.config import Params
from gan_core.data import BUNDLED_DIGITS, model_class_names
from gan_core.layout import Layout
from gan_core.table_data import is_table_source

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
                if (PACKAGE / inner.replace(".", "/")).is_dir():  # `from gan_core.tabular import train`
                    pending += [f"{inner}.{alias.name}" for alias in node.names]
    return sorted(seen.values())


def code_version(module: str) -> str:
    """sha256 over the source of `module` and what it imports from gan_core (names and bytes)."""
    return _sources_digest(module_closure(module))


def source_digest(modules: tuple[str, ...]) -> str:
    """sha256 over the source of exactly these gan_core modules, not what they import."""
    return _sources_digest(_module_path(name) for name in modules)


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
        "code": code_version("train"),
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
        "code": code_version("tabular.train"),
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

GENERATOR = "ema.safetensors"  # the weights generation samples from
TABLE_GENERATOR = "generator.safetensors"  # a table model's (its EMA weights)


def generator_file(model_dir: Path) -> str:
    """The file of a model folder that generation samples from: the EMA generator of either kind."""
    return TABLE_GENERATOR if model_kind(model_dir) == "table" else GENERATOR


def model_kind(model_dir: Path) -> str:
    """"table" or "image", as the model's meta.json says (models exported before tables are images)."""
    meta = read_metrics(Path(model_dir) / "meta.json")
    return "table" if meta.get("kind") == "table" or str(meta.get("format", "")).startswith("ganforge-table") \
        else "image"


@dataclass(frozen=True)
class ModelSource:
    """The model a stage uses: the local DVC output, or a published version fetched from S3."""

    directory: Path
    uri: str | None = None  # s3://BUCKET/models/NAME/VERSION/ when fetched
    metrics: dict = field(default_factory=dict)  # its evaluation metrics
    version: str | None = None  # when fetched
    provenance: dict | None = None  # when fetched: its own manifest's (git, dvc, params)

    def record(self) -> dict:
        """What a dataset manifest says about the model that made it (`model`)."""
        generator = self.directory / generator_file(self.directory)
        sha256 = sha256_file(generator) if generator.is_file() else None
        return {"uri": self.uri, "version": self.version, "sha256": sha256, "provenance": self.provenance,
                "metrics": self.metrics}


def local_model(params: Params, layout: Layout = Layout()) -> ModelSource:
    return ModelSource(layout.model(params), metrics=read_metrics(layout.metrics))


def git_revision(root: Path = Path("."), exclude: tuple[Path, ...] | list[Path] = ()) -> dict:
    """HEAD, and whether anything but the `exclude`d paths differs from it (untracked files included)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout
    pathspec = ["--", "."] + [f":(exclude){Path(p).relative_to(root).as_posix()}" for p in exclude]
    try:
        revision = git("rev-parse", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", *pathspec).splitlines()]
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"revision": None, "dirty": None, "changed": []}
    return {"revision": revision, "dirty": bool(changed), "changed": changed[:20]}


def dvc_hash(path: Path, locked: dict[str, str], root: Path = Path(".")) -> dict:
    """DVC's md5 of a file or folder as it is now, and whether dvc.lock records that same hash."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    relpath = Path(path).relative_to(root).as_posix()
    md5 = None
    if Path(path).exists():
        _, _, obj = build(HashFileDB(MemoryFileSystem(), "/"), str(path), LocalFileSystem(), "md5", dry_run=True)
        md5 = obj.hash_info.value
    return {"path": relpath, "md5": md5, "in_dvc_lock": md5 is not None and locked.get(relpath) == md5}


def locked_outputs(lock: Path) -> dict[str, str]:
    """dvc.lock's md5 of every stage output, by path."""
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except FileNotFoundError:
        return {}
    return {out["path"]: out.get("md5") for stage in stages.values() for out in stage.get("outs", [])}


def source_hash(source: str) -> dict:
    """The md5 that `dvc add` recorded for the raw source in its .dvc file, when it has one."""
    dvc_file = Path(source + ".dvc")
    if source == BUNDLED_DIGITS or not dvc_file.is_file():
        return {"path": source, "md5": None}
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return {"path": source, "md5": outs[0].get("md5")}


def provenance(params: Params, layout: Layout = Layout(), fetched_model: bool = False) -> dict:
    """What a published manifest came from: code revision, DVC hashes of its data and model, params.

    With a fetched model, the local data, model and training params made none of it: only the code
    and the generate params are this checkout's; the model's own provenance is in `model`.
    """
    checkout = Layout(layout.project)
    revision = git_revision(checkout.root, exclude=checkout.outputs(params))
    if fetched_model:
        return {"git": revision, "dvc": {}, "params": {"generate": params.generate.model_dump(mode="json")}}
    locked = locked_outputs(layout.lock)
    return {"git": revision,
            "dvc": {"source": source_hash(params.prepare.source),
                    "data": dvc_hash(layout.prepared(params), locked, layout.root),
                    "model": dvc_hash(layout.model(params), locked, layout.root)},
            "params": params.model_dump(mode="json")}


def generator_sha256(model_dir: Path) -> str | None:
    return read_metrics(model_dir / "meta.json").get("files", {}).get(generator_file(model_dir))


def generation_inputs(params: Params, model: ModelSource) -> dict:
    """What makes a dataset publication this run's own: a version with other inputs is another run's."""
    # A table model's shape is in its meta.json (and so in its sha256), not in params' `model`.
    shape = ({"table": params.table.model_dump(mode="json")} if model_kind(model.directory) == "table"
             else {"model": params.model.model_dump(mode="json")})
    return {"model_sha256": generator_sha256(model.directory), **shape,
            "generate": params.generate.model_dump(mode="json"), "sample_count": params.generate.num_samples}


def training_inputs(params: Params) -> dict:
    """What makes a model publication this run's own: the data and every setting that trains it."""
    sections = ("prepare", "table", "train") if is_table_params(params) else ("prepare", "model", "train", "features")
    return {section: getattr(params, section).model_dump(mode="json") for section in sections}


def is_table_params(params: Params) -> bool:
    return is_table_source(params.prepare.source)


def build_manifest(params: Params, summary: dict, version: str, layout: Layout = Layout(),
                   model: ModelSource | None = None) -> dict:
    model = model or local_model(params, layout)
    record = model.record()
    meta = read_metrics(model.directory / "meta.json")
    # A table's classes are its condition column's values; its manifest says which columns ganforge added.
    kind = {"kind": "table", "added_columns": summary["added_columns"], "columns": summary["columns"],
            "condition": meta.get("schema", {}).get("condition")} if summary.get("kind") == "table" else {}
    return {**kind, "inputs": generation_inputs(params, model), "name": params.generate.name, "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "generator_sha256": record["sha256"], **provenance(params, layout, fetched_model=model.uri is not None),
            "sample_count": summary["sample_count"], "acceptance_rate": summary["acceptance_rate"],
            "rejection": summary["rejection"], "model_uri": model.uri, "metrics": model.metrics, "model": record,
            "class_names": meta.get("class_names", []) if kind else model_class_names(meta),
            "schema_version": summary["schema_version"], "class_counts": summary["class_counts"],
            "truncation": summary["truncation"]}
