"""The quality gate guards everything published, on metrics bound to the model they measured (real SeaweedFS,
Prefect and DVC): no dataset from a model that missed it, no promotion on another model's numbers."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from gan_core import cli, registry
from gan_core.checkpoint import sha256_file
from gan_core.layout import Layout
from gan_core.publication.publish import publish_model
from tests.helpers import bound_metrics, committed_project, prepared_digits, run, tiny_params, tiny_project_params

FAILING = {"fd_ratio_max": 1e-6}  # no model is that close to the real-real floor
ANOTHER_MODEL = "0" * 64


def keys(client, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


@pytest.fixture
def project(tiny_model_dir, s3_env, tmp_path, monkeypatch) -> tuple[Path, str]:
    """A checkout after train and evaluate: params.yaml, models/<dataset>/, data/prepared/, metrics/eval.json."""
    dataset = f"gate{uuid.uuid4().hex[:8]}"
    params = tiny_params(prepare__dataset=dataset, generate__name=f"{dataset}-synthetic")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    layout = Layout(tmp_path)
    shutil.copytree(tiny_model_dir, layout.model(params))
    layout.prepared(params).parent.mkdir(parents=True)
    shutil.copy(prepared_digits(tiny_model_dir.parent), layout.prepared(params))
    write_metrics(tmp_path, bound_metrics(layout.model(params)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path, dataset


def write_metrics(root: Path, metrics: dict) -> None:
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "eval.json").write_text(json.dumps(metrics))


def set_gate(root: Path, **gate) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gate"] |= gate
    (root / "params.yaml").write_text(yaml.safe_dump(params))


# --- finding 4: metrics bound to the model they measure --------------------------------------------

def test_the_evaluation_records_the_model_it_measured(project):
    from gan_core.config import load_params
    from gan_core.stages.evaluate import run_evaluate

    root, dataset = project
    model = root / "models" / dataset
    metrics = run_evaluate(load_params("params.yaml"), Layout(root))
    assert metrics["generator_sha256"] == sha256_file(model / "ema.safetensors")
    assert metrics["step"] == json.loads((model / "meta.json").read_text())["step"]
    assert json.loads((root / "metrics" / "eval.json").read_text()) == metrics


def test_models_publish_refuses_another_models_metrics(project, s3_env, capsys):
    root, dataset = project
    write_metrics(root, bound_metrics(root / "models" / dataset, generator_sha256=ANOTHER_MODEL))
    assert cli.main(["models", "publish", "--promote", "--version", "v1", "--bucket", s3_env.bucket]) == 1
    err = capsys.readouterr().err
    assert "measured generator sha256 000000000000" in err and "evaluate this model first" in err, err
    assert keys(s3_env.client, s3_env.bucket, f"models/{dataset}/") == []  # nothing published, nothing promoted

    write_metrics(root, bound_metrics(root / "models" / dataset))  # its own evaluation: published and promoted
    assert cli.main(["models", "publish", "--promote", "--version", "v1", "--bucket", s3_env.bucket]) == 0
    assert registry.production_version(s3_env.bucket, dataset) == "v1"


def test_models_promote_gates_unless_forced(project, s3_env, capsys):
    root, dataset = project
    model, bucket = root / "models" / dataset, s3_env.bucket
    for version, metrics in (("fails", bound_metrics(model, fd_ratio=7.0)),
                             ("others", bound_metrics(model, generator_sha256=ANOTHER_MODEL))):
        publish_model(model, bucket=bucket, name=dataset, version=version, manifest={"metrics": metrics})
    set_gate(root, fd_ratio_max=2.0)
    capsys.readouterr()
    assert cli.main(["models", "promote", "fails", "--bucket", bucket]) == 1
    err = capsys.readouterr().err
    assert "quality gate failed: fd_ratio 7 > 2.0" in err and f"models promote fails --name {dataset} --force" in err
    assert cli.main(["models", "promote", "others", "--bucket", bucket]) == 1  # good numbers, another model's
    assert "the metrics are not this model's: they measured generator sha256 000000000000" in capsys.readouterr().err
    assert registry.read_alias(bucket, dataset) is None

    assert cli.main(["models", "promote", "fails", "--force", "--bucket", bucket]) == 0
    alias = registry.read_alias(bucket, dataset)
    assert (alias["version"], alias["action"]) == ("fails", "promote --force")  # the audit log says it was forced


def test_an_evaluation_run_without_a_model_fails_rather_than_evaluate_the_checkouts(project, prefect_api_url,
                                                                                   monkeypatch):
    from flows.evaluate import evaluate_flow

    root, dataset = project
    before = (root / "metrics" / "eval.json").read_text()
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", str(uuid.uuid4()))  # a worker's run: a run folder
    state = evaluate_flow("params.yaml", checkpoint=None, return_state=True)
    assert state.is_failed() and "no model to evaluate: .ganforge/runs/" in state.message, state.message
    assert "pass checkpoint (production, latest" in state.message
    assert (root / "metrics" / "eval.json").read_text() == before


# --- finding 2: no dataset from a model that missed the gate --------------------------------------

@pytest.mark.parametrize("metrics", ["failing", "another model's"])
def test_generate_publishes_nothing_from_a_model_that_missed_the_gate(metrics, project, s3_env, capsys):
    root, dataset = project
    model = root / "models" / dataset
    write_metrics(root, bound_metrics(model) if metrics == "failing" else bound_metrics(model, generator_sha256="ab"))
    if metrics == "failing":
        set_gate(root, **FAILING)
    assert cli.main(["generate", "--version", "v1", "--bucket", s3_env.bucket]) == 1
    err = capsys.readouterr().err
    assert "no dataset published: model models/" in err and "missed the quality gate" in err, err
    assert "fd_ratio 1.3 > 1e-06" in err if metrics == "failing" else "are not this model's" in err
    assert keys(s3_env.client, s3_env.bucket, f"datasets/{dataset}-synthetic/") == []
    assert not (root / "data" / "generated").exists()  # refused before any work


def test_the_generate_stage_refuses_but_experiments_may_publish(project, s3_env, prefect_api_url, monkeypatch):
    from flows.generate import generate_flow

    root, dataset = project
    set_gate(root, **FAILING)
    state = generate_flow(version="v1", bucket=s3_env.bucket, return_state=True)
    assert state.is_failed() and "no dataset published" in state.message, state.message
    assert keys(s3_env.client, s3_env.bucket, f"datasets/{dataset}-synthetic/") == []
    # `dvc exp run`: its own prefix, whose versions never become datasets/' latest
    monkeypatch.setenv("DVC_EXP_NAME", "trial")
    uri = generate_flow(version="v1", bucket=s3_env.bucket)
    assert uri == f"s3://{s3_env.bucket}/experiments/trial/datasets/{dataset}-synthetic/v1/"
    assert keys(s3_env.client, s3_env.bucket, f"datasets/{dataset}-synthetic/") == []


def test_make_run_publishes_nothing_from_a_model_that_misses_the_gate(pipeline_env, s3_server, tmp_path):
    """scripts/run.sh (`make run`): `dvc repro` stops at generate, before any dataset, model or alias is written."""
    name = f"missed{uuid.uuid4().hex[:8]}"
    params = tiny_project_params(f"{name}-synthetic")
    params["prepare"]["dataset"] = name
    params["train"]["epochs"] = 1
    params["gate"] |= FAILING
    root = committed_project(tmp_path / "clone", params, pipeline_env)
    failed = run(["bash", "scripts/run.sh"], root, pipeline_env, check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "no dataset published: model models/" in output and "missed the quality gate: fd_ratio" in output, output
    assert "Dataset published" not in output
    client = s3_server.client()
    assert keys(client, s3_server.bucket, f"datasets/{name}-synthetic/") == []
    assert keys(client, s3_server.bucket, f"models/{name}/") == []
    metrics = json.loads((root / "metrics" / "eval.json").read_text())  # evaluated, and bound to its model
    assert metrics["generator_sha256"] == sha256_file(root / "models" / name / "ema.safetensors")
