"""Runs that share a checkout or a version keep apart: run folders, inputs in manifests, derived names."""

from __future__ import annotations

import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from gan_core.publication.publish import publish_files, publish_model
from gan_core.publication.read import download_dataset, read_manifest
from gan_core.publication.s3 import MODELS_PREFIX, VersionExistsError
from tests.helpers import bound_metrics, tiny_project_params

SENTINEL = b"the checkout's DVC output"


def write_project_params(path: Path, dataset: str, **generate) -> Path:
    """The repository's params.yaml, tiny, for another dataset; generate.name left unset, as a user leaves it."""
    params = tiny_project_params("unused")
    params["prepare"]["dataset"] = dataset
    del params["generate"]["name"]
    params["generate"] |= generate
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def checkout(tiny_model_dir, s3_env, tmp_path, monkeypatch) -> tuple[Path, str]:
    """A checkout whose DVC outputs hold sentinel bytes; its model (dataset iso<hex>) only in S3 as v1."""
    dataset, root = f"iso{secrets.token_hex(4)}", tmp_path / "checkout"
    publish_model(tiny_model_dir, bucket=s3_env.bucket, name=dataset, version="v1",
                          manifest={"metrics": bound_metrics(tiny_model_dir)})  # it passed the gate
    for relpath in (f"data/generated/{dataset}/part-00000.parquet", "metrics/eval.json", "plots/losses.csv"):
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(SENTINEL)
    monkeypatch.chdir(root)
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    return root, dataset


def as_deployment_run(monkeypatch) -> None:
    # Prefect's documented way to set a runtime value (prefect.runtime.deployment.id) for a test:
    # the flow then behaves as a worker's run of a deployment.
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", str(uuid.uuid4()))


def assert_checkout_untouched(root: Path, dataset: str) -> None:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")  # the evaluator cache is shared
                   if p.is_file() and not p.name.endswith(".yaml") and ".ganforge/cache/" not in p.as_posix())
    assert files == ["data/generated/" + dataset + "/part-00000.parquet", "metrics/eval.json", "plots/losses.csv"]
    assert all((root / f).read_bytes() == SENTINEL for f in files)
    assert list((root / ".ganforge" / "runs").iterdir()) == []  # each run's folder removed once published


def test_two_generation_deployment_runs_keep_their_own_shards(checkout, s3_env, prefect_api_url, monkeypatch,
                                                              tmp_path):
    from flows.generate import generate_flow

    root, dataset = checkout
    as_deployment_run(monkeypatch)
    runs = {"va": write_project_params(root / "a.yaml", dataset, num_samples=150, shard_size=30, seed=1),
            "vb": write_project_params(root / "b.yaml", dataset, num_samples=90, shard_size=30, seed=2)}

    def generate(version: str) -> str:
        return generate_flow(params_path=str(runs[version].name), version=version, checkpoint="v1",
                             bucket=s3_env.bucket)

    with ThreadPoolExecutor(2) as pool:
        uris = list(pool.map(generate, runs))
    name = f"{dataset}-synthetic"  # only prepare.dataset was set: the name follows it
    assert uris == [f"s3://{s3_env.bucket}/datasets/{name}/{v}/" for v in runs]
    for version, rows, seed in (("va", 150, 1), ("vb", 90, 2)):
        manifest = read_manifest(s3_env.bucket, name, version)
        assert manifest["sample_count"] == rows and sum(s["rows"] for s in manifest["shards"]) == rows
        assert manifest["inputs"]["generate"]["seed"] == seed
        download_dataset(s3_env.bucket, name, version, tmp_path / "down")  # every sha256 verified
    assert_checkout_untouched(root, dataset)


def test_a_training_deployment_run_leaves_the_checkouts_outputs_alone(checkout, s3_env, prefect_api_url, monkeypatch):
    from flows.training import training_flow

    root, dataset = checkout
    as_deployment_run(monkeypatch)
    write_project_params(root / "params.yaml", dataset)
    summary = training_flow(prepare_data=True, publish=True, bucket=s3_env.bucket, version="v2")
    assert summary["model_uri"] == f"s3://{s3_env.bucket}/models/{dataset}/v2/"
    manifest = read_manifest(s3_env.bucket, dataset, "v2", MODELS_PREFIX)
    assert manifest["inputs"]["prepare"]["dataset"] == dataset and "d_auc" in manifest["metrics"]
    assert_checkout_untouched(root, dataset)  # no models/, data/prepared/, checkpoints/ either


def test_a_version_with_other_inputs_is_not_taken_as_this_runs(checkout, s3_env, prefect_api_url):
    from flows.generate import generate_flow

    root, dataset = checkout
    first = write_project_params(root / "first.yaml", dataset, num_samples=50)
    second = write_project_params(root / "second.yaml", dataset, num_samples=60)
    version, name = "20250101T020000Z", f"{dataset}-synthetic"
    uri = generate_flow(params_path=first.name, version=version, checkpoint="v1", bucket=s3_env.bucket)
    with pytest.raises(VersionExistsError,
                       match=rf"version {version} exists with other inputs \(generate.num_samples 50 vs 60; "
                             r"sample_count 50 vs 60\) at .*: choose another version"):
        generate_flow(params_path=second.name, version=version, checkpoint="v1", bucket=s3_env.bucket)
    assert generate_flow(params_path=first.name, version=version, checkpoint="v1", bucket=s3_env.bucket) == uri
    assert read_manifest(s3_env.bucket, name, version)["sample_count"] == 50


def test_a_race_lost_to_other_inputs_fails(s3_env, prefect_api_url, tmp_path):
    from prefect import flow

    from flows.tasks import publish_once

    name = f"race-{secrets.token_hex(4)}"
    files = {label: tmp_path / label / "part-00000.parquet" for label in ("a", "b", "c")}
    for label, path in files.items():
        path.parent.mkdir()
        path.write_bytes(label.encode() * 10)

    @flow
    def publish(label: str, inputs: dict) -> str:  # the publication itself, as a run that lost the race sees it
        return publish_once(lambda: publish_files([files[label]], bucket=s3_env.bucket, prefix="datasets",
                                                  name=name, version="v1", manifest={"inputs": inputs}),
                            s3_env.bucket, "datasets", name, "v1", inputs)

    uri = publish("a", {"model_sha256": "aa", "generate": {"seed": 0}})
    with pytest.raises(VersionExistsError, match=r"other inputs \(generate.seed 0 vs 1; model_sha256 aa vs bb"):
        publish("b", {"model_sha256": "bb", "generate": {"seed": 1}})
    assert publish("c", {"model_sha256": "aa", "generate": {"seed": 0}}) == uri  # the same inputs: its twin's
