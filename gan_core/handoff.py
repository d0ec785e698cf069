"""Model hand-off through S3: publish the local model, resolve and fetch a published one."""

from __future__ import annotations

import json

from gan_core import registry, storage
from gan_core.config import Params
from gan_core.layout import Layout, model_cache_dir
from gan_core.lineage import ModelSource, provenance, training_inputs


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
