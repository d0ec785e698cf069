"""Prepare stage: the configured dataset -> data/prepared/<dataset>.npz."""

from prefect import flow, get_run_logger

from flows.report import report
from flows.runs import run_layout
from gan_core.config import load_params
from gan_core.stages.prepare import run_prepare


@flow(name="prepare", log_prints=True)
def prepare_flow(params_path: str = "params.yaml", workdir: str | None = None) -> dict:
    """workdir: a deployment run's own folder (flows.runs.run_layout), for the prepared data."""
    params = load_params(params_path)
    summary = run_prepare(params, run_layout(workdir))
    get_run_logger().info("prepared %s", summary)
    report("prepare", params.prepare.dataset, {"source": params.prepare.source, **summary})
    return summary


if __name__ == "__main__":
    from flows.local import run_stage
    run_stage(prepare_flow)
