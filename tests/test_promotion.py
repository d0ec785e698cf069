"""End to end on a real Prefect server and SeaweedFS: the gate decides what the nightly generation uses."""

from __future__ import annotations

import pytest
import yaml

from gan_core import cli, registry
from gan_core.config import load_params
from gan_core.publication.read import list_versions, read_manifest
from tests.helpers import ROOT, tiny_params

NAME = "gated"
PASSING = tiny_params().gate.model_dump()
FAILING = PASSING | {"fd_ratio_max": 1e-6}  # no model is that close to the real-real floor


def write_params(path, gate: dict, dataset: str = NAME) -> str:
    params = tiny_params(prepare__dataset=dataset, generate__name=f"{dataset}-synthetic", train__epochs=1)
    raw = params.model_dump(mode="json") | {"gate": gate}
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def nightly_generation(bucket: str, version: str, **overrides):
    """generate/batch-generation's run with prefect.yaml's parameters (tiny sample count): its manifest, or
    with overrides its final state."""
    from flows.generate import generate_flow

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    parameters = next(d for d in deployments if d["name"] == "batch-generation")["parameters"]
    assert parameters["checkpoint"] == "production"  # the deployment generates from the model the gate promoted
    state = generate_flow(**parameters | {"dataset_name": "gated-synthetic", "num_samples": 60, "bucket": bucket,
                                          "version": version, **overrides}, return_state=True)
    return state if overrides else read_manifest(bucket, "gated-synthetic", version)


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
    # Asked for by hand, the failed model makes no dataset either: refused before any shard is generated.
    state = nightly_generation(bucket, "20261202T030000Z", checkpoint="latest", params_path="bad.yaml")
    assert state.is_failed() and "no dataset published" in state.message, state.message
    assert f"models/{NAME}/{bad}/ missed the quality gate: fd_ratio" in state.message
    assert [m["version"] for m in list_versions(bucket, "gated-synthetic")] == ["20261202T020000Z"]

    # A person may promote it past the gate, and must say so (capsys is not used here: Prefect's console log
    # handler would keep its stream).
    promote = ["models", "promote", bad, "--name", NAME, "--bucket", bucket, "--params", "bad.yaml"]
    assert cli.main(promote) == 1
    with pytest.raises(registry.GateError, match=f"models promote {bad} --name {NAME} --force` promotes it anyway"):
        registry.promote_if_passing(bucket, NAME, bad, load_params("bad.yaml").gate)
    assert registry.production_version(bucket, NAME) == good
    assert cli.main([*promote, "--force"]) == 0
    assert registry.read_alias(bucket, NAME)["action"] == "promote --force"
    assert nightly_generation(bucket, "20261203T020000Z")["model"]["version"] == bad
    assert cli.main(["models", "rollback", "--name", NAME, "--bucket", bucket]) == 0
    assert registry.production_version(bucket, NAME) == good


def test_a_rerun_after_a_crash_before_the_gate_runs_the_gate(s3_env, prefect_api_url, tmp_path, monkeypatch):
    """The model was published, then the run died before its gate; the rerun must gate it, and never move
    production back to it from a later slot's model."""
    import flows.training
    from flows.training import training_flow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    name, bucket, version = "crashed", s3_env.bucket, "20261204T020000Z"
    passing, failing = (write_params(tmp_path / f"{kind}.yaml", gate, name)
                        for kind, gate in (("pass", PASSING), ("fail", FAILING)))
    gate = flows.training.gate

    def worker_lost(*args, **kwargs):
        raise RuntimeError("the worker was lost")

    monkeypatch.setattr(flows.training, "gate", worker_lost)
    with pytest.raises(RuntimeError, match="worker was lost"):
        training_flow(passing, prepare_data=True, publish=True, bucket=bucket, version=version)
    monkeypatch.setattr(flows.training, "gate", gate)
    assert [m["version"] for m in registry.list_models(bucket, name)] == [version]
    assert registry.read_alias(bucket, name) is None

    # The next slot's run trains and promotes its own model meanwhile.
    later = "20261205T020000Z"
    training_flow(passing, publish=True, bucket=bucket, version=later)
    assert registry.production_version(bucket, name) == later

    # The rerun trains nothing (the version is published) but runs the gate: a stricter one fails it visibly...
    state = training_flow(failing, publish=True, bucket=bucket, version=version, return_state=True)
    assert state.is_failed() and "quality gate failed: fd_ratio" in state.message, state.message
    # ...and the one it was trained under passes it, but production keeps the later slot's model.
    assert training_flow(passing, publish=True, bucket=bucket, version=version)["model_uri"].endswith(f"/{version}/")
    assert registry.production_version(bucket, name) == later
    history = f"models/{name}/_aliases/production-history/"
    assert s3_env.client.list_objects_v2(Bucket=bucket, Prefix=history)["KeyCount"] == 1
    training_flow(failing, publish=True, bucket=bucket, version=later)  # gated once: left as it is
    assert s3_env.client.list_objects_v2(Bucket=bucket, Prefix=history)["KeyCount"] == 1
    assert registry.production_version(bucket, name) == later
