"""Prepare stage: the configured dataset -> data/prepared/<dataset>.npz."""

from prefect import flow, get_run_logger

from flows.tasks import report
from gan_core.config import load_params
from gan_core.stages import run_prepare


@flow(name="prepare", log_prints=True)
def prepare_flow(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    summary = run_prepare(params)
    get_run_logger().info("prepared %s", summary)
    report("prepare", params.prepare.dataset, {"source": params.prepare.source, **summary})
    return summary


if __name__ == "__main__":
    from flows.local import run_stage
    run_stage(prepare_flow)
