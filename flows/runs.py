"""Where a flow run writes (the checkout, or a deployment run's own folder) and how its version is named."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from prefect.runtime import deployment, flow_run

from gan_core.config import Params
from gan_core.layout import Layout, default_version

RUNS = Path(".ganforge") / "runs"  # one folder per deployment run, git-ignored


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
        return Layout(root=Path(workdir), project=Path("."))
    if deployment.id is None:
        return Layout()
    return Layout(root=RUNS / flow_run.get_id(), project=Path("."))


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
