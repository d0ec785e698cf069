"""Generate stage: model -> Parquet shards -> published dataset version in S3 (manifest last)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from gan_core.config import load_params
from gan_core.stages import Layout, bucket_from_env, default_version, run_generate, run_publish


@task
def generate_shards(params_path: str) -> dict:
    params = load_params(params_path)
    return run_generate(params, Layout().generated(params))


@task(retries=3, retry_delay_seconds=[2, 8, 30], retry_jitter_factor=0.5)
def publish(params_path: str, summary: dict, version: str, bucket: str) -> str:
    # Retried: uploads are the network side effect. Safe to repeat: no manifest until all shards are in.
    return run_publish(load_params(params_path), summary, version, bucket)


@flow(name="generate")
def generate_flow(params_path: str = "params.yaml", version: str | None = None, publish_to_s3: bool = True,
                  bucket: str | None = None) -> str | None:
    summary = generate_shards(params_path)
    logger = get_run_logger()
    logger.info("generated %d samples (acceptance %.2f)", summary["sample_count"], summary["acceptance_rate"])
    if not publish_to_s3:
        return None
    uri = publish(params_path, summary, version or default_version(), bucket or bucket_from_env())
    logger.info("published %s", uri)
    return uri


if __name__ == "__main__":
    generate_flow()
