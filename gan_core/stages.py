"""The pipeline's stages as plain functions: flows, the CLI and tests all call these."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from gan_core import storage
from gan_core.checkpoint import write_json_atomic
from gan_core.config import Params, parse_params
from gan_core.data import BUNDLED_DIGITS, DataError, prepare_dataset
from gan_core.evaluate import build_context, evaluate, read_metrics, rejection_table
from gan_core.generate import ShardResult, generate_dataset, generate_shard, rejection_rule, shard_sizes, summarize
from gan_core.sampling import RejectionRule, load_model
from gan_core.train import pick_device, train

DEFAULT_BUCKET = "ganforge"


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root (the DVC outs of dvc.yaml)."""

    root: Path = Path(".")

    def prepared(self, params: Params) -> Path:
        return self.root / "data" / "prepared" / f"{params.prepare.dataset}.npz"

    def model(self, params: Params) -> Path:
        return self.root / "models" / params.prepare.dataset

    def checkpoints(self, params: Params) -> Path:
        return self.root / "checkpoints" / params.prepare.dataset

    def generated(self, params: Params) -> Path:
        return self.root / "data" / "generated" / params.generate.name

    @property
    def feature_cache(self) -> Path:
        """The evaluator networks, one per training split (git-ignored, rebuilt offline when missing)."""
        return self.root / ".ganforge" / "cache" / "features"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / "eval.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def raw(self) -> Path:
        """The user's datasets (`dvc add data/raw/NAME`); dvc.yaml's prepare stage depends on all of it."""
        return self.root / "data" / "raw"

    @property
    def lock(self) -> Path:
        return self.root / "dvc.lock"

    def outputs(self, params: Params) -> list[Path]:
        """What the pipeline itself writes: none of it makes the work tree dirty."""
        return [self.lock, self.prepared(params).parent, self.model(params).parent,
                self.checkpoints(params).parent, self.generated(params).parent, self.metrics.parent, self.plots]


@dataclass(frozen=True)
class ModelSource:
    """The model a stage uses: the local DVC output, or a published version fetched from S3."""

    directory: Path
    uri: str | None = None  # s3://BUCKET/models/NAME/VERSION/ when fetched
    metrics: dict = field(default_factory=dict)  # its evaluation metrics


def bucket_from_env() -> str:
    return os.environ.get("GANFORGE_BUCKET", DEFAULT_BUCKET)


def model_cache_dir() -> Path:
    return Path(os.environ.get("GANFORGE_CACHE") or Path.home() / ".cache" / "ganforge") / "models"


def override_params(params: Params, overrides: dict[str, object]) -> Params:
    """Params with dotted keys replaced ({"generate.num_samples": 10}), validated again; None keeps a value."""
    raw = params.model_dump(mode="json")
    for dotted, value in overrides.items():
        if value is not None:
            *sections, key = dotted.split(".")
            node = raw
            for section in sections:
                node = node[section]
            node[key] = value
    return parse_params(raw, "flow parameters")


def local_model(params: Params, layout: Layout = Layout()) -> ModelSource:
    return ModelSource(layout.model(params), metrics=read_metrics(layout.metrics))


def run_prepare(params: Params, layout: Layout = Layout()) -> dict:
    cfg = params.prepare
    for key, source in (("prepare.source", cfg.source), ("prepare.test_source", cfg.test_source)):
        if source is not None:
            check_source_is_tracked(source, layout, key)
    return prepare_dataset(cfg.source, layout.prepared(params), cfg.validation_fraction, cfg.test_fraction,
                           cfg.seed, resolution=cfg.resolution, transform=cfg.transform, test_source=cfg.test_source)


def check_source_is_tracked(source: str, layout: Layout = Layout(), key: str = "prepare.source") -> None:
    # dvc.yaml's prepare stage depends on data/raw: a source elsewhere would change unnoticed.
    if source != BUNDLED_DIGITS and not Path(source).resolve().is_relative_to(layout.raw.resolve()):
        raise DataError(f"{key}: {source} is outside {layout.raw}/, the folder dvc.yaml tracks: "
                        f"move it to {layout.raw}/NAME and `dvc add` it there")


def run_train(params: Params, layout: Layout = Layout(), resume: bool = False, progress: bool = True) -> dict:
    return train(params, layout.prepared(params), layout.model(params), checkpoint_dir=layout.checkpoints(params),
                 loss_log=layout.plots / "losses.csv", selection_log=layout.plots / "selection.csv",
                 feature_cache=layout.feature_cache, resume=resume, progress=progress)


def run_evaluate(params: Params, layout: Layout = Layout(), model_dir: Path | None = None) -> dict:
    model = load_model(model_dir or layout.model(params), pick_device(params.train.device))
    return evaluate(model, layout.prepared(params), params, layout.metrics, layout.plots, layout.feature_cache)


def run_rejection_table(params: Params, targets: list[float], layout: Layout = Layout()) -> list[dict]:
    """Plain sampling against rejection sampling at each target acceptance, on the trained model."""
    model = load_model(layout.model(params), pick_device(params.train.device))
    ctx = build_context(model, layout.prepared(params), params, layout.plots, layout.feature_cache)
    return rejection_table(ctx, targets)


def run_generate(params: Params, out_dir: Path, layout: Layout = Layout()) -> dict:
    """Shards into `out_dir` (emptied first) plus what the manifest records about them."""
    shutil.rmtree(out_dir, ignore_errors=True)
    model = load_model(layout.model(params), pick_device(params.train.device))
    return generate_dataset(model, params.generate, out_dir)


# --- generation fanned out: a plan, one call per shard (any order, any host), a summary ----------

def plan_generation(params: Params, model_dir: Path, out_dir: Path) -> dict:
    """Empty `out_dir`; fit the rejection rule once; list each shard's (index, rows)."""
    cfg = params.generate
    shutil.rmtree(out_dir, ignore_errors=True)
    Path(out_dir).mkdir(parents=True)
    rule = rejection_rule(load_model(model_dir, pick_device(params.train.device)), cfg)
    return {"rule": asdict(rule) if rule else None,
            "shards": list(enumerate(shard_sizes(cfg.num_samples, cfg.shard_size)))}


def run_shard(params: Params, model_dir: Path, index: int, rows: int, rule: dict | None, out_dir: Path) -> dict:
    model = load_model(model_dir, pick_device(params.train.device))
    result = generate_shard(model, index, rows, params.generate, RejectionRule(**rule) if rule else None, out_dir)
    return {**asdict(result), "path": str(result.path)}


def summarize_shards(params: Params, results: list[dict], rule: dict | None) -> dict:
    shards = [ShardResult(**{**r, "path": Path(r["path"])}) for r in results]
    return summarize(shards, RejectionRule(**rule) if rule else None, params.generate)


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


def provenance(params: Params, layout: Layout = Layout()) -> dict:
    """What a published manifest came from: code revision, DVC hashes of its data and model, params."""
    locked = locked_outputs(layout.lock)
    return {"git": git_revision(layout.root, exclude=layout.outputs(params)),
            "dvc": {"source": source_hash(params.prepare.source),
                    "data": dvc_hash(layout.prepared(params), locked, layout.root),
                    "model": dvc_hash(layout.model(params), locked, layout.root)},
            "params": params.model_dump(mode="json")}


def default_version(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def publication_version(version: str | None) -> str:
    """VERSION checked before any work (a hostile one would otherwise fail only at upload), or the UTC time."""
    return storage.validate_name("version", default_version() if version is None else version)


def build_manifest(params: Params, summary: dict, version: str, layout: Layout = Layout(),
                   model: ModelSource | None = None) -> dict:
    model = model or local_model(params, layout)
    model_meta = read_metrics(model.directory / "meta.json")
    return {"name": params.generate.name, "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "generator_sha256": model_meta.get("files", {}).get("ema.safetensors"),
            **provenance(params, layout),
            "sample_count": summary["sample_count"], "acceptance_rate": summary["acceptance_rate"],
            "rejection": summary["rejection"], "model_uri": model.uri, "metrics": model.metrics}


def run_publish(params: Params, summary: dict, version: str, bucket: str, layout: Layout = Layout(),
                model: ModelSource | None = None, prefix: str = "datasets") -> str:
    manifest = build_manifest(params, summary, version, layout, model)
    shards = [Path(p) for p in summary["shard_files"]]
    uri = storage.publish_dataset(shards, bucket=bucket, name=params.generate.name, version=version,
                                  manifest=manifest, prefix=prefix)
    write_json_atomic(layout.generated(params) / "_published.json", {"uri": uri, "version": version})
    return uri


# --- model hand-off through S3 ----------------------------------------------------------------

def run_publish_model(params: Params, version: str, bucket: str, metrics: dict, layout: Layout = Layout(),
                      prefix: str = storage.MODELS_PREFIX) -> str:
    """Publish models/<dataset>/ as s3://BUCKET/models/<dataset>/VERSION/ with its evaluation metrics."""
    manifest = {**provenance(params, layout), "metrics": metrics}
    return storage.publish_model(layout.model(params), bucket=bucket, name=params.prepare.dataset,
                                 version=version, manifest=manifest, prefix=prefix)


def parse_checkpoint(checkpoint: str, bucket: str, name: str) -> tuple[str, str, str, str]:
    """(bucket, prefix, name, version) of "latest", a version, or s3://BUCKET/PREFIX/NAME/VERSION/."""
    if not checkpoint.startswith("s3://"):
        return bucket, storage.MODELS_PREFIX, name, checkpoint
    parts = checkpoint.removeprefix("s3://").strip("/").split("/")
    if len(parts) < 4:
        raise ValueError(f"checkpoint {checkpoint!r}: expected s3://BUCKET/PREFIX/NAME/VERSION")
    return parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1]


def fetch_published_model(checkpoint: str, bucket: str, name: str) -> ModelSource:
    """Resolve and download (or reuse from the cache) a published model; every file verified."""
    bucket, prefix, name, version = parse_checkpoint(checkpoint, bucket, name)
    directory = storage.fetch_model(bucket, name, version, model_cache_dir(), prefix=prefix)
    manifest = json.loads((directory / storage.MANIFEST).read_text())
    return ModelSource(directory, storage.version_uri(bucket, prefix, name, directory.name),
                       manifest.get("metrics") or {})
