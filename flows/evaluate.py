"""Evaluate stage: model -> metrics/eval.json and plots/ (sample grid, score histograms)."""

from prefect import flow, get_run_logger

from flows.prepare import prepare_flow
from flows.tasks import fetch_model, report
from gan_core.config import load_params
from gan_core.stages import Layout, bucket_from_env, run_evaluate


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml", checkpoint: str | None = None, bucket: str | None = None,
                  prepare_data: bool = False) -> dict:
    """checkpoint: None for the local models/<dataset>/, else "latest", a version or an s3:// URI of one."""
    params = load_params(params_path)
    if prepare_data:  # a fresh worker host has no prepared held-out data yet
        prepare_flow(params_path)
    model = fetch_model(checkpoint, bucket or bucket_from_env(), params.prepare.dataset) if checkpoint else None
    metrics = run_evaluate(params, model_dir=model.directory if model else None)
    get_run_logger().info("discriminator AUC %.3f", metrics.get("d_auc", float("nan")))
    report("evaluate", params.prepare.dataset,
           {"model": model.uri if model else str(Layout().model(params)), "metrics": metrics})
    return metrics


if __name__ == "__main__":
    from flows.local import run_stage
    run_stage(evaluate_flow)
