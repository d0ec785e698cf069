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

from gan_core import registry, storage
from gan_core.card import CardSources, write_card
from gan_core.checkpoint import write_json_atomic
from gan_core.config import Params, parse_params
from gan_core.data import BUNDLED_DIGITS, DataError, prepare_dataset
from gan_core.evaluate import build_context, evaluate, read_metrics, rejection_table
from gan_core.generate import (SCHEMA_VERSION, ShardResult, generate_dataset, generate_shard, model_class_names,
                               plan_shards, rejection_rule, summarize)
from gan_core.sampling import RejectionRule, load_model
from gan_core.train import pick_device, train

DEFAULT_BUCKET = "ganforge"
GENERATOR = "ema.safetensors"  # the weights generation samples from


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root (the DVC outs of dvc.yaml).

    A run of its own (a deployment run) writes under another root; it still reads the checkout's
    (`project`) raw data, evaluator cache, dvc.lock and git state.
    """

    root: Path = Path(".")
    project: Path = Path(".")

    def prepared(self, params: Params) -> Path:
        return self.root / "data" / "prepared" / f"{params.prepare.dataset}.npz"

    def model(self, params: Params) -> Path:
        return self.root / "models" / params.prepare.dataset

    def checkpoints(self, params: Params) -> Path:
        return self.root / "checkpoints" / params.prepare.dataset

    def generated(self, params: Params) -> Path:
        # By dataset, as models/: dvc.yaml cannot name the out by generate.name when params.yaml leaves it unset.
        return self.root / "data" / "generated" / params.prepare.dataset

    @property
    def feature_cache(self) -> Path:
        """The evaluator networks, one per training split (git-ignored, rebuilt offline when missing)."""
        return self.project / ".ganforge" / "cache" / "features"

    def evaluation(self, model_name: str, version: str) -> Path:
        """Metrics and plots of a published model's evaluation: never the checkout's metrics/ and plots/."""
        return self.root / ".ganforge" / "evaluations" / model_name / version

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / "eval.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def raw(self) -> Path:
        """The user's datasets (`dvc add data/raw/NAME`); dvc.yaml's prepare stage depends on all of it."""
        return self.project / "data" / "raw"

    @property
    def lock(self) -> Path:
        return self.project / "dvc.lock"

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
    version: str | None = None  # when fetched
    provenance: dict | None = None  # when fetched: its own manifest's (git, dvc, params)

    def record(self) -> dict:
        """What a dataset manifest says about the model that made it (`model`)."""
        sha256 = storage.file_digest(self.directory / GENERATOR)[0] if (self.directory / GENERATOR).is_file() else None
        return {"uri": self.uri, "version": self.version, "sha256": sha256, "provenance": self.provenance,
                "metrics": self.metrics}


def bucket_from_env() -> str:
    return os.environ.get("GANFORGE_BUCKET", DEFAULT_BUCKET)


def model_cache_dir() -> Path:
    return Path(os.environ.get("GANFORGE_CACHE") or Path.home() / ".cache" / "ganforge") / "models"


def card_cache_dir() -> Path:
    return model_cache_dir().parent / "cards"


def override_params(params: Params, overrides: dict[str, object], source: str = "flow parameters") -> Params:
    """Params with dotted keys replaced ({"generate.num_samples": 10}), validated again; None keeps a value."""
    raw = params.model_dump(mode="json")
    for dotted, value in overrides.items():
        if value is not None:
            *sections, key = dotted.split(".")
            node = raw
            for section in sections:
                node = node[section]
            node[key] = value
    return parse_params(raw, source)


def sample_overrides(num_samples: int | None, class_counts: dict | None) -> dict[str, object]:
    """Overrides of the output's size: class counts alone also set num_samples (their sum) in place of the file's."""
    if class_counts and num_samples is None:
        num_samples = sum(class_counts.values())
    return {"generate.num_samples": num_samples, "generate.class_counts": class_counts}


def local_model(params: Params, layout: Layout = Layout()) -> ModelSource:
    return ModelSource(layout.model(params), metrics=read_metrics(layout.metrics))


def run_prepare(params: Params, layout: Layout = Layout()) -> dict:
    cfg = params.prepare
    check_source_is_tracked(cfg.source, layout)
    return prepare_dataset(cfg.source, layout.prepared(params), cfg.validation_fraction, cfg.test_fraction,
                           cfg.seed, cfg.class_names)


def check_source_is_tracked(source: str, layout: Layout = Layout()) -> None:
    # dvc.yaml's prepare stage depends on data/raw: a source elsewhere would change unnoticed.
    if source != BUNDLED_DIGITS and not Path(source).resolve().is_relative_to(layout.raw.resolve()):
        raise DataError(f"prepare.source: {source} is outside {layout.raw}/, the folder dvc.yaml tracks: "
                        f"move it to {layout.raw}/NAME and `dvc add` it there")


def run_train(params: Params, layout: Layout = Layout(), resume: bool = False, progress: bool = True) -> dict:
    return train(params, layout.prepared(params), layout.model(params), checkpoint_dir=layout.checkpoints(params),
                 loss_log=layout.plots / "losses.csv", selection_log=layout.plots / "selection.csv",
                 feature_cache=layout.feature_cache, resume=resume, progress=progress)


def run_evaluate(params: Params, layout: Layout = Layout(), model_dir: Path | None = None,
                 out_dir: Path | None = None) -> dict:
    """Metrics of the local model into metrics/ and plots/; of another model (model_dir) into out_dir only."""
    model = load_model(model_dir or layout.model(params), pick_device(params.train.device))
    metrics_path, plots = (out_dir / "eval.json", out_dir / "plots") if out_dir else (layout.metrics, layout.plots)
    return evaluate(model, layout.prepared(params), params, metrics_path, plots, layout.feature_cache)


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
    """Empty `out_dir`; fit the rejection rule once; list each shard's (index, quota: [(class, rows)])."""
    cfg = params.generate
    shutil.rmtree(out_dir, ignore_errors=True)
    Path(out_dir).mkdir(parents=True)
    model = load_model(model_dir, pick_device(params.train.device))
    rule = rejection_rule(model, cfg)
    return {"rule": asdict(rule) if rule else None,
            "shards": [(i, [list(part) for part in quota]) for i, quota in enumerate(plan_shards(model, cfg))]}


def run_shard(params: Params, model_dir: Path, index: int, quota: list, rule: dict | None, out_dir: Path) -> dict:
    model = load_model(model_dir, pick_device(params.train.device))
    result = generate_shard(model, index, quota, params.generate, RejectionRule(**rule) if rule else None, out_dir)
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


def default_version(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def publication_version(version: str | None) -> str:
    """VERSION checked before any work (a hostile one would otherwise fail only at upload), or the UTC time."""
    return storage.validate_name("version", default_version() if version is None else version)


def generator_sha256(model_dir: Path) -> str | None:
    return read_metrics(model_dir / "meta.json").get("files", {}).get("ema.safetensors")


def generation_inputs(params: Params, model: ModelSource) -> dict:
    """What makes a dataset publication this run's own: a version with other inputs is another run's."""
    return {"model_sha256": generator_sha256(model.directory), "model": params.model.model_dump(mode="json"),
            "generate": params.generate.model_dump(mode="json"), "sample_count": params.generate.num_samples}


def training_inputs(params: Params) -> dict:
    """What makes a model publication this run's own: the data and every setting that trains it."""
    return {section: getattr(params, section).model_dump(mode="json")
            for section in ("prepare", "model", "train", "features")}


def build_manifest(params: Params, summary: dict, version: str, layout: Layout = Layout(),
                   model: ModelSource | None = None) -> dict:
    model = model or local_model(params, layout)
    record = model.record()
    return {"inputs": generation_inputs(params, model), "name": params.generate.name, "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "generator_sha256": record["sha256"], **provenance(params, layout, fetched_model=model.uri is not None),
            "sample_count": summary["sample_count"], "acceptance_rate": summary["acceptance_rate"],
            "rejection": summary["rejection"], "model_uri": model.uri, "metrics": model.metrics, "model": record,
            "class_names": model_class_names(read_metrics(model.directory / "meta.json")),
            "schema_version": SCHEMA_VERSION, "class_counts": summary["class_counts"],
            "truncation": summary["truncation"]}


def run_publish(params: Params, summary: dict, version: str, bucket: str, layout: Layout = Layout(),
                model: ModelSource | None = None, prefix: str = "datasets") -> str:
    model = model or local_model(params, layout)
    manifest = build_manifest(params, summary, version, layout, model)
    shards = [Path(p) for p in summary["shard_files"]]
    card = write_card(shards[0].parent / storage.EXTRA_FOLDER, CardSources(
        manifest, storage.version_uri(bucket, prefix, params.generate.name, version), shards,
        layout.prepared(params), model.directory, layout.plots, params.generate.license))
    uri = storage.publish_dataset(shards, bucket=bucket, name=params.generate.name, version=version,
                                  manifest=manifest, prefix=prefix, extra_files=card)
    # Beside the shards, wherever this run wrote them (the DVC out, or a run folder of its own).
    write_json_atomic(shards[0].parent / "_published.json", {"uri": uri, "version": version})
    return uri


def card_uri(dataset_uri: str) -> str:
    """The report page of a published version's card (`ganforge show NAME --version V` fetches it)."""
    return f"{dataset_uri.rstrip('/')}/{storage.EXTRA_FOLDER}/report.html"


# --- model hand-off through S3 ----------------------------------------------------------------

def run_publish_model(params: Params, version: str, bucket: str, metrics: dict, layout: Layout = Layout(),
                      prefix: str = storage.MODELS_PREFIX) -> str:
    """Publish models/<dataset>/ as s3://BUCKET/models/<dataset>/VERSION/ with its evaluation metrics."""
    manifest = {**provenance(params, layout), "metrics": metrics, "inputs": training_inputs(params)}
    return storage.publish_model(layout.model(params), bucket=bucket, name=params.prepare.dataset,
                                 version=version, manifest=manifest, prefix=prefix)


def parse_checkpoint(checkpoint: str, bucket: str, name: str) -> tuple[str, str, str, str]:
    """(bucket, prefix, name, version) of "production", "latest", a version, or s3://BUCKET/PREFIX/NAME/VERSION/."""
    if not checkpoint.startswith("s3://"):
        return bucket, storage.MODELS_PREFIX, name, checkpoint
    parts = checkpoint.removeprefix("s3://").strip("/").split("/")
    if len(parts) < 4:
        raise ValueError(f"checkpoint {checkpoint!r}: expected s3://BUCKET/PREFIX/NAME/VERSION")
    return parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1]


def fetch_published_model(checkpoint: str, bucket: str, name: str) -> ModelSource:
    """Resolve and download (or reuse from the cache) a published model; every file verified."""
    bucket, prefix, name, version = parse_checkpoint(checkpoint, bucket, name)
    if version == registry.PRODUCTION:
        version = registry.production_version(bucket, name, prefix)
    directory = storage.fetch_model(bucket, name, version, model_cache_dir(), prefix=prefix)
    manifest = json.loads((directory / storage.MANIFEST).read_text())
    return ModelSource(directory, storage.version_uri(bucket, prefix, name, directory.name),
                       manifest.get("metrics") or {}, directory.name,
                       {key: manifest.get(key) for key in ("git", "dvc", "params")})
