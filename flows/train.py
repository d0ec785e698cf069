"""Train stage: prepared data -> models/<dataset>/ (safetensors + meta.json), plots/losses.csv, plots/selection.csv.

Training only: the `train-and-publish/training` deployment (flows/training.py) adds evaluation, publication and the gate.
"""

from prefect import flow, get_run_logger

from flows.report import report
from flows.runs import run_layout
from gan_core.config import load_params
from gan_core.stages.train import run_train


@flow(name="train")
def train_flow(params_path: str = "params.yaml", resume: bool = False, workdir: str | None = None) -> dict:
    """resume: continue the last good checkpoint of this same run (same fingerprint), else refuse."""
    params = load_params(params_path)
    layout = run_layout(workdir)
    # No retries: a failed training run is a bug or a bad config, and resuming is explicit.
    summary = run_train(params, layout, resume=resume)
    get_run_logger().info("trained %s", summary)
    report("train", params.prepare.dataset, {"model": f"{layout.model(params)}/", **summary})
    return summary


if __name__ == "__main__":
    from flows.local import run_stage
    run_stage(train_flow)
