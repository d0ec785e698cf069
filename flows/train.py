"""Train stage: prepared data -> models/<dataset>/ (safetensors + meta.json) and plots/losses.csv."""

from prefect import flow, get_run_logger

from gan_core.config import load_params
from gan_core.stages import run_train


@flow(name="train")
def train_flow(params_path: str = "params.yaml", resume: bool = False) -> dict:
    # No retries: a failed training run is a bug or a bad config, and resuming is explicit.
    summary = run_train(load_params(params_path), resume=resume)
    get_run_logger().info("trained %s", summary)
    return summary


if __name__ == "__main__":
    train_flow()
