"""End to end on a real Prefect server and SeaweedFS: the gate decides what the nightly generation uses."""

from __future__ import annotations

import yaml

from gan_core import cli, registry
from gan_core.publication.read import read_manifest
from tests.helpers import ROOT, tiny_params

NAME = "gated"
PASSING = tiny_params().gate.model_dump()
FAILING = PASSING | {"fd_ratio_max": 1e-6}  # no model is that close to the real-real floor


def write_params(path, gate: dict) -> str:
    params = tiny_params(prepare__dataset=NAME, generate__name="gated-synthetic", train__epochs=1)
    raw = params.model_dump(mode="json") | {"gate": gate}
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def nightly_generation(bucket: str, version: str) -> dict:
    """generate/batch-generation's run with prefect.yaml's parameters (tiny sample count): its manifest."""
    from flows.generate import generate_flow

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    parameters = next(d for d in deployments if d["name"] == "batch-generation")["parameters"]
    generate_flow(**parameters | {"dataset_name": "gated-synthetic", "num_samples": 60, "bucket": bucket,
                                  "version": version})
    return read_manifest(bucket, "gated-synthetic", version)


def test_a_model_that_fails_the_gate_never_reaches_nightly_generation(s3_env, prefect_api_url, tmp_path,
                                                                        monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.training import training_flow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    bucket, good, bad = s3_env.bucket, "20261130T020000Z", "20261201T020000Z"
    training_flow(write_params(tmp_path / "params.yaml", PASSING), prepare_data=True, publish=True, bucket=bucket,
               version=good)
    assert registry.production_version(bucket, NAME) == good

    state = training_flow(write_params(tmp_path / "bad.yaml", FAILING), publish=True, bucket=bucket, version=bad,
                       return_state=True)
    assert state.is_failed() and "quality gate failed: fd_ratio" in state.message, state.message
    assert [(m["version"], m["production"]) for m in registry.list_models(bucket, NAME)] == [(good, True),
                                                                                            (bad, False)]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    gate = next(a for a in artifacts if a.key == "gate-gated")
    assert "FAILED: not promoted" in gate.data and "gate.fd_ratio_max" in gate.data

    manifest = nightly_generation(bucket, "20261202T020000Z")  # the newer, failed model is `latest`: unused
    assert manifest["model"]["version"] == good and manifest["model_uri"] == f"s3://{bucket}/models/{NAME}/{good}/"

    assert cli.main(["models", "promote", bad, "--name", NAME, "--bucket", bucket]) == 0
    assert nightly_generation(bucket, "20261203T020000Z")["model"]["version"] == bad
    assert cli.main(["models", "rollback", "--name", NAME, "--bucket", bucket]) == 0
    assert registry.production_version(bucket, NAME) == good
