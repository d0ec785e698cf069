"""The pipeline's stages as plain functions: flows, the CLI and tests all call these."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gan_core import storage
from gan_core.checkpoint import write_json_atomic
from gan_core.config import Params
from gan_core.data import prepare_dataset
from gan_core.evaluate import evaluate, read_metrics
from gan_core.generate import generate_dataset
from gan_core.sampling import load_model
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
    def metrics(self) -> Path:
        return self.root / "metrics" / "eval.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


def bucket_from_env() -> str:
    return os.environ.get("GANFORGE_BUCKET", DEFAULT_BUCKET)


def run_prepare(params: Params, layout: Layout = Layout()) -> dict:
    cfg = params.prepare
    return prepare_dataset(cfg.source, layout.prepared(params), cfg.holdout_fraction, cfg.seed)


def run_train(params: Params, layout: Layout = Layout(), resume: bool = False, progress: bool = True) -> dict:
    return train(params, layout.prepared(params), layout.model(params), checkpoint_dir=layout.checkpoints(params),
                 loss_log=layout.plots / "losses.csv", resume=resume, progress=progress)


def run_evaluate(params: Params, layout: Layout = Layout()) -> dict:
    model = load_model(layout.model(params), pick_device(params.train.device))
    return evaluate(model, layout.prepared(params), params.evaluate, layout.metrics, layout.plots)


def run_generate(params: Params, out_dir: Path, layout: Layout = Layout()) -> dict:
    """Shards into `out_dir` (emptied first) plus what the manifest records about them."""
    shutil.rmtree(out_dir, ignore_errors=True)
    model = load_model(layout.model(params), pick_device(params.train.device))
    return generate_dataset(model, params.generate, out_dir)


def git_revision(root: Path = Path(".")) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return {"revision": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"revision": None, "dirty": None}


def default_version(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def build_manifest(params: Params, summary: dict, version: str, layout: Layout = Layout()) -> dict:
    model_meta = read_metrics(layout.model(params) / "meta.json")
    return {"name": params.generate.name, "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "generator_sha256": model_meta.get("files", {}).get("ema.safetensors"),
            "git": git_revision(layout.root), "params": params.model_dump(mode="json"),
            "sample_count": summary["sample_count"], "acceptance_rate": summary["acceptance_rate"],
            "rejection": summary["rejection"], "metrics": read_metrics(layout.metrics)}


def run_publish(params: Params, summary: dict, version: str, bucket: str, layout: Layout = Layout()) -> str:
    manifest = build_manifest(params, summary, version, layout)
    shards = [Path(p) for p in summary["shard_files"]]
    uri = storage.publish_dataset(shards, bucket=bucket, name=params.generate.name, version=version,
                                  manifest=manifest)
    write_json_atomic(layout.generated(params) / "_published.json", {"uri": uri, "version": version})
    return uri
