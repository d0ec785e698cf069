"""The training deployment (`train-and-publish/training`): prepare, train, evaluate, publish the model, quality gate.

The DVC stage is flows/train.py: it only trains, so that dvc.yaml's train stage depends on training code
alone (evaluation and publishing code changing never retrains the model).
"""

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.evaluate import evaluate_flow
from flows.prepare import prepare_flow
from flows.report import artifact_key, report
from flows.runs import remove_run_folder, run_layout, scheduled_version, use_checkout_data
from flows.tasks import S3_RETRIES, gate_published, prune, publish_once, published, was_production
from gan_core import registry
from gan_core.config import Params, load_params
from gan_core.layout import Layout, bucket_from_env
from gan_core.provenance import training_inputs
from gan_core.publication.s3 import MODELS_PREFIX
from gan_core.registry import run_publish_model
from gan_core.stages.train import run_train


@task(**S3_RETRIES)
def publish_model(params: Params, version: str, bucket: str, metrics: dict, layout: Layout) -> str:
    return publish_once(lambda: run_publish_model(params, version, bucket, metrics, layout),
                        bucket, MODELS_PREFIX, params.prepare.dataset, version, training_inputs(params))


@task(**S3_RETRIES)
def promote(bucket: str, name: str, version: str) -> dict:
    return registry.promote(bucket, name, version, forward_only=True)


def gate(params: Params, bucket: str, version: str) -> None:
    """Move `production` to published VERSION when its own metrics (bound to its generator) pass params' gate
    and production holds no later slot's model; else fail the run, production unchanged."""
    name = params.prepare.dataset
    result = gate_published(bucket, name, version, params.gate)
    create_markdown_artifact(result.markdown(name, version),
                             key=artifact_key(f"gate-{name}"),
                             description=f"quality gate {name} {version}")
    if not result.passed:
        raise registry.gate_error(name, version, result)
    alias = promote(bucket, name, version)
    if alias["version"] == version:
        get_run_logger().info("model %s %s passed the gate: now production", name, version)
    else:
        get_run_logger().info("model %s %s passed the gate; production stays %s, a later slot's model", name, version,
                              alias["version"])


def gate_once(params: Params, bucket: str, version: str) -> None:
    """The gate of a rerun whose model an earlier run published: that run may have stopped before its gate.
    A version that was ever production passed (or was forced) and stays where the alias history left it."""
    if was_production(bucket, params.prepare.dataset, version):
        get_run_logger().info("model %s %s already went through the gate", params.prepare.dataset, version)
        return
    gate(params, bucket, version)


@flow(name="train-and-publish")
def training_flow(params_path: str = "params.yaml", resume: bool = False, prepare_data: bool = False,
               publish: bool = False, bucket: str | None = None, version: str | None = None,
               keep_last: int | None = None) -> dict:
    """publish: evaluate the model, publish it as s3://BUCKET/models/<dataset>/VERSION/ for other workers, and
    make it `production` when it passes the quality gate (params' gate:); a failed gate fails the run.

    version: by default the run's scheduled time, so that rerunning a scheduled run trains nothing new.
    """
    params = load_params(params_path)
    name, bucket, version = params.prepare.dataset, bucket or bucket_from_env(), version or scheduled_version()
    layout = run_layout()  # a deployment run trains in a folder of its own, never in the checkout's DVC outputs
    if publish and (uri := published(bucket, MODELS_PREFIX, name, version, training_inputs(params))):
        report("train", name, {"model": uri, "note": "already published by an earlier run of this schedule"})
        gate_once(params, bucket, version)
        return {"model_uri": uri}
    if prepare_data:  # a fresh worker host has no prepared data yet
        prepare_flow(params_path, str(layout.root))
    use_checkout_data(params, layout)
    # No retries: a failed training run is a bug or a bad config, and resuming is explicit.
    summary = run_train(params, layout, resume=resume)
    get_run_logger().info("trained %s", summary)
    metrics = evaluate_flow(params_path, workdir=str(layout.root)) if publish else {}
    if publish:
        summary["model_uri"] = publish_model(params, version, bucket, metrics, layout)
        remove_run_folder(layout)
        if keep_last:
            prune(bucket, MODELS_PREFIX, name, keep_last)
    report("train", name, {"model_uri": f"{layout.model(params)}/ (not published)", **summary, "metrics": metrics})
    if publish:
        gate(params, bucket, version)
    return summary


if __name__ == "__main__":
    from flows.local import run_stage
    run_stage(training_flow)
