"""Evaluate stage: the local model -> metrics/eval.json and plots/; a published one -> .ganforge/evaluations/."""

from prefect import flow, get_run_logger

from flows.prepare import prepare_flow
from flows.report import report
from flows.runs import run_layout, use_checkout_data
from flows.tasks import fetch_model
from gan_core.config import load_params
from gan_core.layout import Layout, bucket_from_env
from gan_core.stages.evaluate import run_evaluate
from gan_core.verdict import verdict


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml", checkpoint: str | None = None, bucket: str | None = None,
                  prepare_data: bool = False, workdir: str | None = None) -> dict:
    """checkpoint: None for the local models/<dataset>/ (in a deployment run's folder: the one it trained, never
    the checkout's), else "production", "latest", a version or an s3:// URI.

    A published model's metrics are returned and reported, and written to .ganforge/evaluations/NAME/VERSION/.
    workdir: where to write (flows.runs.run_layout); a deployment run writes into a folder of its own.
    """
    params, layout = load_params(params_path), run_layout(workdir)
    if checkpoint is None and not layout.model(params).exists():
        # Never another model than the one asked for: a run folder's metrics would gate the checkout's model.
        raise FileNotFoundError(f"no model to evaluate: {layout.model(params)} does not exist; pass checkpoint "
                                f"(production, latest, a version or an s3:// URI), or train first")
    if prepare_data:  # a fresh worker host has no prepared held-out data yet
        prepare_flow(params_path, str(layout.root))
    use_checkout_data(params, layout)
    model = fetch_model(checkpoint, bucket or bucket_from_env(), params.prepare.dataset) if checkpoint else None
    local = layout.model(params)  # the checkout's, or the one a run folder trained
    # A published model's metrics go to its own folder and this run's artifact: the checkout's
    # metrics/eval.json describes the local model, and local generation stamps it into manifests.
    out_dir = Layout().evaluation(model.directory.parent.name, model.version) if model else None
    metrics = run_evaluate(params, layout, model_dir=model.directory if model else local, out_dir=out_dir)
    logger = get_run_logger()
    logger.info("discriminator AUC %.3f", metrics.get("d_auc", float("nan")))
    for line in verdict(metrics, params.gate).lines():  # each gate threshold, then the verdict
        logger.info(line)
    report("evaluate", params.prepare.dataset,
           {"model": model.uri if model else str(local), "metrics": metrics})
    return metrics


if __name__ == "__main__":
    from flows.local import run_stage
    run_stage(evaluate_flow)
