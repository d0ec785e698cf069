"""Generate stage: model -> Parquet shards (one mapped task each) -> a dataset version in S3, manifest last."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows.report import report
from flows.runs import remove_run_folder, run_layout, scheduled_version
from flows.tasks import S3_RETRIES, check_dataset_model, fetch_model, prune, publish_once, published
from gan_core.config import Params, load_params, override_params
from gan_core.layout import bucket_from_env
from gan_core.provenance import ModelSource, generation_inputs, local_model
from gan_core.publication.s3 import validate_name
from gan_core.stages.generate import (
    card_uri,
    plan_generation,
    publishes,
    run_publish,
    run_shard,
    sample_overrides,
    summarize_shards,
    unpublished_note,
)

# A local Dask cluster: worker processes with one thread each, and one torch thread each
# (distributed's nanny sets these too; here they are explicit, as two torch threads per
# process on shared cores slow everyone down).
LOCAL_DASK = {"n_workers": 2, "processes": True, "threads_per_worker": 1,
              "env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}


def task_runner_from_env():
    """Threads here, or Dask: GANFORGE_DASK=local for a local cluster, or a scheduler's address.

    A cluster of several hosts needs the project folder (model, shards) on a shared filesystem.
    """
    where = os.environ.get("GANFORGE_DASK")
    if not where:
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(cluster_kwargs=LOCAL_DASK) if where == "local" else DaskTaskRunner(address=where)


@task
def plan(params: Params, model_dir: str, out_dir: str) -> dict:
    return plan_generation(params, Path(model_dir), Path(out_dir))


@task
def generate_shard(params: Params, model_dir: str, index: int, quota: list, rule: dict | None, out_dir: str) -> dict:
    # One shard file per task, from its own seeds: shards run anywhere, in any order. Paths in, paths out.
    return run_shard(params, Path(model_dir), index, quota, rule, Path(out_dir))


@task(**S3_RETRIES)
def publish(params: Params, summary: dict, version: str, bucket: str, prefix: str, model: ModelSource) -> str:
    # Safe to repeat: no manifest until every shard is in.
    return publish_once(lambda: run_publish(params, summary, version, bucket, model=model, prefix=prefix),
                        bucket, prefix, params.generate.name, version, generation_inputs(params, model))


def experiment_prefix(prefix: str) -> str:
    """Under `dvc exp run` (DVC sets DVC_EXP_NAME), experiments/<name>/PREFIX: an experiment never publishes
    to production, where the last one to finish would become `latest`."""
    experiment = os.environ.get("DVC_EXP_NAME")
    return f"experiments/{validate_name('experiment name', experiment)}/{prefix}" if experiment else prefix


def generate_shards(params: Params, model_dir: Path, out_dir: Path) -> dict:
    planned = plan(params, str(model_dir), str(out_dir))
    indices, quotas = zip(*planned["shards"])
    shards = generate_shard.map(unmapped(params), unmapped(str(model_dir)), list(indices), list(quotas),
                                unmapped(planned["rule"]), unmapped(str(out_dir)))
    return summarize_shards(params, shards.result(), planned["rule"])


@flow(name="generate", task_runner=task_runner_from_env())
def generate_flow(params_path: str = "params.yaml", version: str | None = None, publish_to_s3: bool | None = None,
                  bucket: str | None = None, prefix: str = "datasets", dataset_name: str | None = None,
                  num_samples: int | None = None, rejection: bool | None = None, checkpoint: str | None = None,
                  keep_last: int | None = None, class_counts: dict[str, int] | None = None,
                  truncation: float | None = None) -> str | None:
    """publish_to_s3: None follows params' generate.publish (true, false, or auto: when an S3 endpoint is set).
    checkpoint: None for the local models/<dataset>/ (the DVC stage), else "production" (the scheduled
    deployment's: the model the quality gate promoted), "latest", a version or an s3:// URI of one.

    version: by default the run's scheduled time, so that rerunning a scheduled run publishes nothing new.
    class_counts: {class index or name: count} (num_samples then defaults to their sum); truncation: psi, 1 = off.
    Under `dvc exp run` the prefix is experiments/<exp>/PREFIX; a deployment run writes its shards into
    a folder of its own (flows.runs.run_layout).
    """
    params = override_params(load_params(params_path), {
        "generate.name": dataset_name, "generate.rejection.enabled": rejection, "generate.truncation": truncation,
        **sample_overrides(num_samples, class_counts)})
    name, bucket, version = params.generate.name, bucket or bucket_from_env(), version or scheduled_version()
    prefix, layout = experiment_prefix(prefix), run_layout()
    publish_to_s3 = publishes(params) if publish_to_s3 is None else publish_to_s3
    model = fetch_model(checkpoint, bucket, params.prepare.dataset) if checkpoint else local_model(params)
    if publish_to_s3 and (uri := published(bucket, prefix, name, version, generation_inputs(params, model))):
        report("generate", name, {"dataset": uri, "note": "already published by an earlier run of this schedule"})
        return uri
    if publish_to_s3:  # before any work: only a model that passed the gate makes a dataset (experiments aside)
        check_dataset_model(model, params.gate, prefix)
    summary = generate_shards(params, model.directory, layout.generated(params))
    uri = publish(params, summary, version, bucket, prefix, model) if publish_to_s3 else None
    if uri:
        remove_run_folder(layout)
    if uri and keep_last:
        prune(bucket, prefix, name, keep_last)
    get_run_logger().info("%d samples (acceptance %.2f) -> %s", summary["sample_count"], summary["acceptance_rate"],
                          uri or unpublished_note(params, summary))
    report("generate", name, {"dataset": uri, "card": uri and card_uri(uri), "version": version, "model": model.uri or str(model.directory),
                              **{k: summary[k] for k in ("sample_count", "acceptance_rate", "candidates", "truncation",
                                                         "class_counts")},
                              "shards": len(summary["shard_files"]), "metrics": model.metrics})
    return uri


if __name__ == "__main__":
    from flows.local import run_stage
    run_stage(generate_flow)
