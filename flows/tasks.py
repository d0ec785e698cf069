"""What the flows share: S3 tasks with retries, versions named by the schedule, one report per run."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run
from prefect.tasks import exponential_backoff

from gan_core import registry, storage
from gan_core.config import ConfigError, Params
from gan_core.stages import Layout, ModelSource, default_version, fetch_published_model

RUNS = Path(".ganforge") / "runs"  # one folder per deployment run, git-ignored


def _transient(task, task_run, state) -> bool:
    # Refusals (a bad name, a missing version, a corrupt file, a bad parameter) do not heal by
    # waiting; network errors and a version that another run is still publishing may.
    error = state.data
    return isinstance(error, storage.VersionBusyError) or not isinstance(error, (storage.StorageError, ConfigError))


# For tasks whose side effect is an S3 call, never for training: 2, 4, 8 s apart, each +-50 %
# so that runs failing together (an endpoint restart) do not retry together.
S3_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
              "retry_jitter_factor": 0.5, "retry_condition_fn": _transient}


def scheduled_version() -> str:
    """A version named by this run's scheduled time: rerunning the same scheduled run gives the same name."""
    return default_version(flow_run.scheduled_start_time.astimezone(dt.timezone.utc))


def run_layout(workdir: str | None = None) -> Layout:
    """Where this flow run writes: the checkout's DVC outputs under `dvc repro` or a direct call.

    A deployment run (a worker started it) gets a folder of its own: runs in one checkout never
    share or delete each other's files, and the checkout's outputs stay what dvc.lock records.
    workdir: a parent flow's run folder, for its subflows.
    """
    if workdir:
        return Layout(root=Path(workdir))
    if deployment.id is None:
        return Layout()
    return Layout(root=RUNS / flow_run.get_id())


def in_run_folder(layout: Layout) -> bool:
    return layout.root != layout.project


def use_checkout_data(params: Params, layout: Layout) -> None:
    """A run folder that prepares no data of its own trains and evaluates on the checkout's."""
    target = layout.prepared(params)
    if in_run_folder(layout) and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Layout(layout.project).prepared(params), target)


def remove_run_folder(layout: Layout) -> None:
    # Only after a successful publication: what it holds is in S3 now.
    if in_run_folder(layout):
        shutil.rmtree(layout.root, ignore_errors=True)


@task(**S3_RETRIES)
def published(bucket: str, prefix: str, name: str, version: str, inputs: dict) -> str | None:
    """The URI of VERSION when it is already complete from these inputs, else None; other inputs fail."""
    try:
        manifest = storage.read_manifest(bucket, name, version, prefix)
    except storage.VersionNotFoundError:
        return None
    return _same_inputs(manifest, inputs, storage.version_uri(bucket, prefix, name, version))


def publish_once(publish, bucket: str, prefix: str, name: str, version: str, inputs: dict) -> str:
    """publish(); a version that another run of the same inputs completed first stands."""
    try:
        return publish()
    except storage.VersionExistsError:
        uri = _same_inputs(storage.read_manifest(bucket, name, version, prefix), inputs,
                           storage.version_uri(bucket, prefix, name, version))
        get_run_logger().warning("%s was published by another run of the same inputs first: keeping it", uri)
        return uri


def _same_inputs(manifest: dict, inputs: dict, uri: str) -> str:
    """uri, when the manifest records these inputs (manifest["inputs"]); else what differs, as an error."""
    theirs, ours = _flatten(manifest.get("inputs") or {}), _flatten(json.loads(json.dumps(inputs)))
    differ = [f"{key} {theirs.get(key, 'unset')} vs {ours.get(key, 'unset')}"
              for key in sorted(set(theirs) | set(ours)) if theirs.get(key) != ours.get(key)]
    if differ:
        shown = "; ".join(differ[:5]) + (f"; and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise storage.VersionExistsError(f"version {manifest.get('version')} exists with other inputs ({shown}) "
                                         f"at {uri}: choose another version")
    return uri


@task(**S3_RETRIES)
def fetch_model(checkpoint: str, bucket: str, name: str) -> ModelSource:
    return fetch_published_model(checkpoint, bucket, name)


@task(**S3_RETRIES)
def prune(bucket: str, prefix: str, name: str, keep_last: int) -> list[str]:
    if prefix == storage.MODELS_PREFIX:  # production and the models of kept datasets stay
        deleted = registry.apply_model_retention(bucket, name, keep_last)
    else:
        deleted = storage.apply_retention(bucket, name, keep_last, prefix)
    get_run_logger().info("retention (keep %d): deleted %s", keep_last, deleted or "nothing")
    return deleted


def report(stage: str, name: str, rows: dict) -> None:
    """This flow run's markdown artifact: one table of what it produced, keyed by stage and name."""
    key = artifact_key(f"{stage}-{name}")
    lines = [f"### {stage}: {name}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in _flatten(rows).items()]
    create_markdown_artifact("\n".join(lines), key=key, description=f"{stage} {name}")


def artifact_key(text: str) -> str:
    """Prefect's artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _flatten(rows: dict, parent: str = "") -> dict:
    flat = {}
    for key, value in rows.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{parent}{key}.")
        else:
            flat[f"{parent}{key}"] = value
    return flat


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")
