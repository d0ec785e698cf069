"""Evaluate stage: model -> metrics/eval.json and plots/ (sample grid, score histograms)."""

from prefect import flow, get_run_logger

from gan_core.config import load_params
from gan_core.stages import run_evaluate


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict:
    metrics = run_evaluate(load_params(params_path))
    get_run_logger().info("discriminator AUC %.3f", metrics.get("d_auc", float("nan")))
    return metrics


if __name__ == "__main__":
    evaluate_flow()
