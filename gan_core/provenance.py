"""Provenance: what a published model or dataset came from (git, DVC hashes, params), and its manifest."""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gan_core.checkpoint import read_metrics, sha256_file
from gan_core.config import Params
from gan_core.images.data import BUNDLED_DIGITS, model_class_names
from gan_core.kinds import GENERATOR_FILE, MODEL_SECTIONS, TRAINING_SECTIONS, kind_of, model_kind
from gan_core.layout import Layout


def generator_file(model_dir: Path) -> str:
    """The file of a model folder that generation samples from: the EMA generator of either kind."""
    return GENERATOR_FILE[model_kind(model_dir)]


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
    # The sections that shape the model: `model` for images, `table` for tables.
    shape = {section: getattr(params, section).model_dump(mode="json")
             for section in MODEL_SECTIONS[model_kind(model.directory)]}
    return {"model_sha256": generator_sha256(model.directory), **shape,
            # whether to publish is no input of what is published
            "generate": params.generate.model_dump(mode="json", exclude={"publish"}),
            "sample_count": params.generate.num_samples}


def training_inputs(params: Params) -> dict:
    """What makes a model publication this run's own: the data and every setting that trains it."""
    return {section: getattr(params, section).model_dump(mode="json") for section in TRAINING_SECTIONS[kind_of(params)]}


def build_manifest(params: Params, summary: dict, version: str, layout: Layout = Layout(),
                   model: ModelSource | None = None) -> dict:
    model = model or local_model(params, layout)
    record = model.record()
    meta = read_metrics(model.directory / "meta.json")
    # A table's classes are its condition column's values; its manifest says which columns ganforge added.
    kind = {"kind": "table", "added_columns": summary["added_columns"], "columns": summary["columns"],
            "personal_columns": summary.get("personal_columns") or {},
            "condition": meta.get("schema", {}).get("condition")} if summary.get("kind") == "table" else {}
    return {**kind, "inputs": generation_inputs(params, model), "name": params.generate.name, "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "generator_sha256": record["sha256"], **provenance(params, layout, fetched_model=model.uri is not None),
            "sample_count": summary["sample_count"], "acceptance_rate": summary["acceptance_rate"],
            "rejection": summary["rejection"], "model_uri": model.uri, "metrics": model.metrics, "model": record,
            "class_names": meta.get("class_names", []) if kind else model_class_names(meta),
            "schema_version": summary["schema_version"], "class_counts": summary["class_counts"],
            "truncation": summary["truncation"]}
