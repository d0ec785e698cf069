"""S3 tasks the flows share: retries on network side effects, versions published once."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from flows.report import flatten
from gan_core import registry
from gan_core.config import ConfigError, GateConfig
from gan_core.provenance import ModelSource
from gan_core.publication.read import read_manifest
from gan_core.publication.retention import apply_retention
from gan_core.publication.s3 import (
    MODELS_PREFIX,
    StorageError,
    VersionBusyError,
    VersionExistsError,
    VersionNotFoundError,
    version_uri,
)
from gan_core.registry import fetch_published_model


def _transient(task, task_run, state) -> bool:
    # Refusals (a bad name, a missing version, a corrupt file, a bad parameter) do not heal by
    # waiting; network errors and a version that another run is still publishing may.
    error = state.data
    return isinstance(error, VersionBusyError) or not isinstance(
        error, (StorageError, ConfigError, registry.GateError))


# For tasks whose side effect is an S3 call, never for training: 2, 4, 8 s apart, each +-50 %
# so that runs failing together (an endpoint restart) do not retry together.
S3_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
              "retry_jitter_factor": 0.5, "retry_condition_fn": _transient}


@task(**S3_RETRIES)
def published(bucket: str, prefix: str, name: str, version: str, inputs: dict) -> str | None:
    """The URI of VERSION when it is already complete from these inputs, else None; other inputs fail."""
    try:
        manifest = read_manifest(bucket, name, version, prefix)
    except VersionNotFoundError:
        return None
    return _same_inputs(manifest, inputs, version_uri(bucket, prefix, name, version))


def publish_once(publish, bucket: str, prefix: str, name: str, version: str, inputs: dict) -> str:
    """publish(); a version that another run of the same inputs completed first stands."""
    try:
        return publish()
    except VersionExistsError:
        uri = _same_inputs(read_manifest(bucket, name, version, prefix), inputs,
                           version_uri(bucket, prefix, name, version))
        get_run_logger().warning("%s was published by another run of the same inputs first: keeping it", uri)
        return uri


def _same_inputs(manifest: dict, inputs: dict, uri: str) -> str:
    """uri, when the manifest records these inputs (manifest["inputs"]); else what differs, as an error."""
    theirs, ours = flatten(manifest.get("inputs") or {}), flatten(json.loads(json.dumps(inputs)))
    differ = [f"{key} {theirs.get(key, 'unset')} vs {ours.get(key, 'unset')}"
              for key in sorted(set(theirs) | set(ours)) if theirs.get(key) != ours.get(key)]
    if differ:
        shown = "; ".join(differ[:5]) + (f"; and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise VersionExistsError(f"version {manifest.get('version')} exists with other inputs ({shown}) "
                                 f"at {uri}: choose another version")
    return uri


@task(**S3_RETRIES)
def fetch_model(checkpoint: str, bucket: str, name: str) -> ModelSource:
    return fetch_published_model(checkpoint, bucket, name)


@task(**S3_RETRIES)
def prune(bucket: str, prefix: str, name: str, keep_last: int) -> list[str]:
    if prefix == MODELS_PREFIX:  # production and the models of kept datasets stay
        deleted = registry.apply_model_retention(bucket, name, keep_last)
    else:
        deleted = apply_retention(bucket, name, keep_last, prefix)
    get_run_logger().info("retention (keep %d): deleted %s", keep_last, deleted or "nothing")
    return deleted


@task(**S3_RETRIES)
def gate_published(bucket: str, name: str, version: str, gate: GateConfig) -> registry.GateResult:
    return registry.gate_published(bucket, name, version, gate)


@task(**S3_RETRIES)
def was_production(bucket: str, name: str, version: str) -> bool:
    return registry.was_production(bucket, name, version)


@task(**S3_RETRIES)
def check_dataset_model(model: ModelSource, gate: GateConfig, prefix: str) -> None:
    """Before any generation: a dataset is published only from a model that passed the gate (registry)."""
    registry.check_dataset_model(model, gate, prefix)
