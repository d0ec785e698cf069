"""prefect.yaml on a real `prefect server`: a process worker runs a scheduled generation into SeaweedFS."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from gan_core import registry
from gan_core.layout import default_version
from gan_core.publication.publish import publish_model
from gan_core.publication.read import list_versions
from gan_core.s3server import free_port
from tests.helpers import ROOT, make_project, run, tiny_project_params

BIN = Path(sys.executable).parent
DATASET = "deploy-test"


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"prefect server exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def server_env(s3_server, tmp_path_factory) -> dict:
    """A real `prefect server start` on a free port (own PREFECT_HOME, SQLite); its client environment."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env |= s3_server.env() | {
        "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "AWS_CONFIG_FILE": str(home / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-creds"),
        "GANFORGE_CACHE": str(home / "cache"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    log = home / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(api, server, log)
        yield env
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def deployed(server_env, tiny_model_dir, s3_server, tmp_path_factory) -> Path:
    """A project deployed with `prefect deploy --all`; its model published to S3 and promoted by hand."""
    project = tmp_path_factory.mktemp("deployed")
    params = tiny_project_params(DATASET)
    params["prepare"]["dataset"] = "deploytest"
    make_project(project, params)
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    generation = next(d for d in config["deployments"] if d["name"] == "batch-generation")
    generation["parameters"] |= {"dataset_name": DATASET, "num_samples": 120}
    (project / "prefect.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    publish_model(tiny_model_dir, bucket=s3_server.bucket, name="deploytest", version="v1", manifest={},
                  client=s3_server.client())
    registry.promote(s3_server.bucket, "deploytest", "v1", client=s3_server.client())  # what the nightly run uses
    create_process_pools(server_env["PREFECT_API_URL"], ["cpu", "gpu"])
    out = run(["prefect", "--no-prompt", "deploy", "--all"], project, server_env).stdout
    for name in ("train-and-publish/training", "evaluate/evaluation", "generate/batch-generation"):
        assert name in out
    return project


def create_process_pools(api: str, names: list[str]) -> None:
    # What `prefect work-pool create NAME --type process` does, without 5 s of CLI start-up each.
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    with SyncPrefectClient(api) as client:
        for name in names:
            client.create_work_pool(WorkPoolCreate(name=name, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))


def run_worker_once(project: Path, env: dict) -> None:
    # The pull step's {{ $GANFORGE_PROJECT_DIR }} comes from the worker's environment.
    run(["prefect", "worker", "start", "--pool", "cpu", "--run-once"], project.parent,
        env | {"GANFORGE_PROJECT_DIR": str(project)})


def pull_forward(client, run_id) -> None:
    from prefect.states import Scheduled

    client.set_flow_run_state(run_id, Scheduled(scheduled_time=dt.datetime.now(dt.timezone.utc)), force=True)


def first_scheduled_run(client, deployment_id, timeout: float = 60):
    """The deployment's earliest run, once the server's scheduler service has created it (it polls)."""
    from prefect.client.schemas.filters import DeploymentFilter
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    while not (scheduled := client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment_id]}),
                                                  sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)):
        assert time.monotonic() < deadline, "the server scheduled no run of the deployment"
        time.sleep(1)
    return scheduled[0]


def test_a_scheduled_generation_publishes_once(deployed, server_env, s3_server):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with SyncPrefectClient(server_env["PREFECT_API_URL"]) as client:
        training = client.read_deployment_by_name("train-and-publish/training")
        assert training.global_concurrency_limit.limit == 1 and training.work_pool_name == "gpu"
        generation = client.read_deployment_by_name("generate/batch-generation")
        assert generation.work_pool_name == "cpu" and generation.schedules[0].schedule.cron == "0 2 * * *"
        assert generation.global_concurrency_limit.limit == 1
        assert generation.concurrency_options.collision_strategy == "ENQUEUE"
        flow_run = first_scheduled_run(client, generation.id)
        version = default_version(flow_run.expected_start_time.astimezone(dt.timezone.utc))
        assert version.endswith("T020000Z")  # named by its nightly slot, not by when it ran
        pull_forward(client, flow_run.id)
        run_worker_once(deployed, server_env)
        assert client.read_flow_run(flow_run.id).state.is_completed()
        # The run worked in a folder of its own, removed once published; the checkout's DVC out untouched.
        assert not (deployed / "data" / "generated").exists()
        assert list((deployed / ".ganforge" / "runs").iterdir()) == []
        versions = list_versions(s3_server.bucket, DATASET, client=s3_server.client())
        assert [m["version"] for m in versions] == [version]
        manifest = versions[0]
        assert manifest["sample_count"] == 120 and len(manifest["shards"]) == 3
        assert manifest["model_uri"] == f"s3://{s3_server.bucket}/models/deploytest/v1/"
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))[0]
        assert artifact.key == "generate-deploy-test"
        assert f"| dataset | s3://{s3_server.bucket}/datasets/{DATASET}/{version}/ |" in artifact.data
        assert "| sample_count | 120 |" in artifact.data and "| acceptance_rate | 1 |" in artifact.data
        card = f"s3://{s3_server.bucket}/datasets/{DATASET}/{version}/_card/report.html"
        assert f"| card | {card} |" in artifact.data and manifest["files"][2]["key"] == card.split("/", 3)[3]

        pull_forward(client, flow_run.id)  # the same scheduled run, triggered again
        run_worker_once(deployed, server_env)
        again = client.read_flow_run(flow_run.id)
        assert again.state.is_completed() and again.run_count == 2
        assert list_versions(s3_server.bucket, DATASET, client=s3_server.client()) == versions
