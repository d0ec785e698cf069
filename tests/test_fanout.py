"""Generation fans out as mapped Prefect tasks: on a local Dask cluster its shards are byte-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from gan_core.images.generate import generate_dataset
from gan_core.images.sampling import load_model
from gan_core.publication.publish import publish_model
from gan_core.publication.s3 import VersionExistsError
from tests.helpers import tiny_params

PARAMS = tiny_params(prepare__dataset="fanout", generate__name="fanout-test",
                     generate__rejection={"enabled": True, "target_acceptance": 0.5, "burn_in": 200})


def shard_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("part-*.parquet"))}


@pytest.fixture
def project(tiny_model_dir, s3_env, tmp_path, monkeypatch) -> Path:
    """A project folder with tiny params whose model is only in S3: s3://BUCKET/models/fanout/v1/."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    try:
        publish_model(tiny_model_dir, bucket=s3_env.bucket, name="fanout", version="v1", manifest={})
    except VersionExistsError:
        pass  # published by an earlier test of this module
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_dask_fan_out_writes_the_same_bytes_as_one_process(project, tiny_model_dir, prefect_api_url):
    from prefect_dask import DaskTaskRunner

    from flows.generate import LOCAL_DASK, generate_flow

    out = project / "data" / "generated" / "fanout"  # by dataset, as dvc.yaml names the out
    generate_flow(checkpoint="v1", publish_to_s3=False)
    threads = shard_digests(out)
    generate_flow.with_options(task_runner=DaskTaskRunner(cluster_kwargs=LOCAL_DASK))(
        checkpoint="v1", publish_to_s3=False)
    on_dask = shard_digests(out)
    summary = generate_dataset(load_model(tiny_model_dir), PARAMS.generate, project / "plain")  # no Prefect at all
    assert list(threads) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert on_dask == threads == shard_digests(project / "plain")
    assert summary["sample_count"] == 120 and 0.3 < summary["acceptance_rate"] < 0.7


def test_a_missing_model_fails_at_once_without_retries(project, prefect_api_url):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.generate import generate_flow

    state = generate_flow(checkpoint="v9", publish_to_s3=False, return_state=True)
    assert state.is_failed() and "models/fanout/v9/ has no _manifest.json" in state.message

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert [r.run_count for r in runs if r.name.startswith("fetch_model")] == [1]  # no retry
