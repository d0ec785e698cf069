"""The whole path through real DVC, real Prefect and real SeaweedFS, on a tiny config."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gan_core.publication.read import list_versions
from tests.helpers import committed_project, run, tiny_project_params


@pytest.fixture(scope="module")
def project(pipeline_env, tmp_path_factory) -> Path:
    root = committed_project(tmp_path_factory.mktemp("project"), tiny_project_params("pipeline-test"), pipeline_env)
    run(["dvc", "repro"], root, pipeline_env)
    return root


def test_repro_publishes_a_readable_verified_dataset(project, pipeline_env, s3_server, s3_env, tmp_path):
    client = s3_server.client()
    versions = list_versions(s3_server.bucket, "pipeline-test", client=client)
    assert len(versions) == 1
    manifest = versions[0]
    assert manifest["sample_count"] == 120 and len(manifest["shards"]) == 3
    assert manifest["params"]["train"]["epochs"] == 2
    assert 0.0 <= manifest["metrics"]["d_auc"] <= 1.0
    meta = json.loads((project / "models" / "digits" / "meta.json").read_text())
    assert manifest["generator_sha256"] == meta["files"]["ema.safetensors"]
    uri = f"s3://{s3_server.bucket}/datasets/pipeline-test/{manifest['version']}/"
    # As a user with .ganforge/s3.env sourced: endpoint and keys from the environment only.
    frame = pd.read_parquet(uri)
    assert len(frame) == 120 and list(frame.columns) == ["image", "label", "seed", "d_score"]
    assert frame["image"].iloc[0]["bytes"].startswith(b"\x89PNG")
    out = run(["ganforge", "download", "pipeline-test", "--to", str(tmp_path)], project, pipeline_env)
    folder = Path(json.loads(out.stdout))
    assert sorted(p.name for p in folder.iterdir()) == ["_card", "_manifest.json", "part-00000.parquet",
                                                         "part-00001.parquet", "part-00002.parquet"]
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert set(metrics["d_score_real"]) == {"mean", "p10", "p50", "p90"}


def test_repro_reruns_exactly_what_changed(project, pipeline_env):
    again = run(["dvc", "repro"], project, pipeline_env)
    assert "Running stage" not in again.stdout
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], project, pipeline_env)
    ran = {line.split("'")[1] for line in changed.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "evaluate", "generate"}


def test_bad_params_stop_before_work(project, pipeline_env):
    lock = (project / "dvc.lock").read_text()
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("lr_g:", "lr_gg:"))
    failed = run(["python", "-m", "flows.train"], project, pipeline_env, check=False)
    assert failed.returncode != 0
    assert "unknown key train.lr_gg" in failed.stdout + failed.stderr
    assert (project / "dvc.lock").read_text() == lock
