"""The model registry: quality gate, production alias (promote, rollback, list), slot order, retention,
and what a dataset records about the model that made it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from gan_core import cli, registry
from gan_core.config import GateConfig
from gan_core.publication.publish import publish_files, publish_model
from gan_core.publication.read import list_versions, read_manifest, resolve_version
from gan_core.publication.retention import apply_retention
from gan_core.publication.s3 import VersionExistsError, VersionNotFoundError, read_object, read_object_tagged
from gan_core.registry import fetch_published_model
from tests.helpers import bound_metrics, tiny_params

GOOD = {"fd_ratio": 1.3, "utility": 0.97, "label_consistency": 0.98, "memorisation": 0.001}
PUBLISHED = {"metrics": {"fd_ratio": 1.25, "utility": 0.95}, "git": {"revision": "abc123", "dirty": False},
             "dvc": {"model": {"md5": "feed"}}, "params": {"train": {"epochs": 7}}}


def test_the_gate_names_each_metric_that_misses_or_is_missing():
    gate = GateConfig(fd_ratio_max=2.0, utility_min=0.9, label_consistency_min=0.9, memorisation_max=0.02)
    assert registry.check_gate(GOOD, gate).passed
    result = registry.check_gate({**GOOD, "fd_ratio": 2.5, "memorisation": 0.03}, gate)
    assert result.misses == ["fd_ratio 2.5 > 2.0 (gate.fd_ratio_max)", "memorisation 0.03 > 0.02 (gate.memorisation_max)"]
    unlabelled = {k: v for k, v in GOOD.items() if k != "label_consistency"}
    assert registry.check_gate(unlabelled, gate).misses == [
        "label_consistency is missing from the evaluation (gate.label_consistency_min: 0.9)"]
    assert registry.check_gate(unlabelled, gate.model_copy(update={"label_consistency_min": None})).passed
    assert not registry.check_gate({**GOOD, "utility": float("nan")}, gate).passed
    assert registry.check_gate({**GOOD, "utility": 0.9}, gate).passed  # a threshold itself passes


def test_the_gate_artifact_has_a_row_per_threshold_and_lists_the_misses():
    gate = GateConfig(fd_ratio_max=2.0, utility_min=0.9, label_consistency_min=0.9, memorisation_max=None)
    text = registry.check_gate({"fd_ratio": 2.5, "utility": 0.97}, gate).markdown("digits", "v7")
    assert text.splitlines()[0] == "### quality gate: digits v7 FAILED: not promoted"
    assert "| fd_ratio | 2.5 | <= 2 | missed |" in text and "| utility | 0.97 | >= 0.9 | met |" in text
    assert "| label_consistency | missing | >= 0.9 | missed |" in text
    assert "| memorisation | missing | not checked | not checked |" in text
    assert text.splitlines()[-2:] == ["- fd_ratio 2.5 > 2.0 (gate.fd_ratio_max)",
                                      "- label_consistency is missing from the evaluation (gate.label_consistency_min: 0.9)"]
    assert registry.check_gate(GOOD, gate).markdown("digits", "v8").startswith(
        "### quality gate: digits v8 passed: promoted to production")


def test_gate_thresholds_are_validated():
    from gan_core.config import ConfigError, parse_params

    assert parse_params({"gate": {"utility_min": None}}).gate.utility_min is None
    with pytest.raises(ConfigError, match="unknown key gate.fd_max"):
        parse_params({"gate": {"fd_max": 1}})
    with pytest.raises(ConfigError, match="gate.memorisation_max: input should be less than or equal to 1"):
        parse_params({"gate": {"memorisation_max": 3}})


def publish_models(model_dir: Path, bucket: str, name: str, versions: list[str]) -> None:
    for i, version in enumerate(versions):
        publish_model(model_dir, bucket=bucket, name=name, version=version,
                      manifest={"metrics": {"fd_ratio": 1.0 + i}})


def test_promote_rollback_and_list_move_one_alias(tiny_model_dir, s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    name, bucket = "aliased", s3_env.bucket
    publish_models(tiny_model_dir, bucket, name, ["20250101T020000Z", "20250102T020000Z", "20250103T020000Z"])
    with pytest.raises(VersionNotFoundError, match="ganforge models promote VERSION --name aliased"):
        fetch_published_model("production", bucket, name)
    with pytest.raises(VersionNotFoundError, match="no such complete version"):
        registry.promote(bucket, name, "20250104T020000Z")  # not published: the alias is not written
    assert registry.read_alias(bucket, name) is None
    for version in ("20250101T020000Z", "20250103T020000Z", "20250102T020000Z"):
        registry.promote(bucket, name, version)
    listed = registry.list_models(bucket, name)
    assert [(m["version"], m["production"], m["metrics"]["fd_ratio"]) for m in listed] == [
        ("20250101T020000Z", False, 1.0), ("20250102T020000Z", True, 2.0), ("20250103T020000Z", False, 3.0)]
    assert fetch_published_model("production", bucket, name).uri == f"s3://{bucket}/models/{name}/20250102T020000Z/"
    assert registry.rollback(bucket, name)["version"] == "20250103T020000Z"
    assert registry.rollback(bucket, name)["version"] == "20250101T020000Z"
    with pytest.raises(VersionNotFoundError, match="no earlier production version"):
        registry.rollback(bucket, name)
    # A promotion that read the alias before another one wrote it is refused, not lost: promote() reads again.
    before, stale = read_object_tagged(bucket, f"models/{name}/_aliases/production.json")
    registry.promote(bucket, name, "20250103T020000Z")
    with pytest.raises(registry._AliasChanged):
        registry._set_production(bucket, name, "20250102T020000Z", [], "promote", "models", s3_env.client, stale,
                                 before)
    assert registry.rollback(bucket, name)["version"] == "20250101T020000Z"
    history = s3_env.client.list_objects_v2(Bucket=bucket, Prefix=f"models/{name}/_aliases/production-history/")
    actions = [json.loads(read_object(bucket, o["Key"]))["action"] for o in history["Contents"]]
    assert actions == ["promote"] * 3 + ["rollback"] * 2 + ["promote", "rollback"]
    assert [m["version"] for m in list_versions(bucket, name, "models")][0] == "20250101T020000Z"
    # A scheduled run's promotion only moves production forward in time; a person's may go anywhere.
    assert registry.promote(bucket, name, "20250103T020000Z")["version"] == "20250103T020000Z"
    assert registry.promote(bucket, name, "20250102T020000Z", forward_only=True)["version"] == "20250103T020000Z"
    assert registry.read_alias(bucket, name)["action"] == "promote"
    assert registry.promote(bucket, name, "20250102T020000Z")["version"] == "20250102T020000Z"


def test_latest_and_retention_follow_the_slot_not_the_upload_time(s3_env, tmp_path):
    shard = tmp_path / "part-00000.parquet"
    shard.write_bytes(b"not really parquet")
    # The 2 January slot runs on time; the 1 January slot is backfilled a month later.
    for version, created in (("20250102T020000Z", "2025-01-02T02:00:00+00:00"),
                             ("20250101T020000Z", "2025-02-01T09:00:00+00:00")):
        publish_files([shard], bucket=s3_env.bucket, prefix="datasets", name="backfilled", version=version,
                      manifest={"created_at": created})
    assert resolve_version(s3_env.bucket, "backfilled") == "20250102T020000Z"
    assert apply_retention(s3_env.bucket, "backfilled", keep=1) == ["20250101T020000Z"]


def test_model_retention_keeps_production_and_the_models_of_kept_datasets(tiny_model_dir, s3_env, tmp_path):
    name, bucket = "retained-model", s3_env.bucket
    versions = [f"2025010{day}T020000Z" for day in range(1, 6)]
    publish_models(tiny_model_dir, bucket, name, versions)
    registry.promote(bucket, name, versions[0])
    shard = tmp_path / "part-00000.parquet"
    shard.write_bytes(b"x")
    publish_files([shard], bucket=bucket, prefix="datasets", name="made-by-v2", version="v1",
                  manifest={"model_uri": f"s3://{bucket}/models/{name}/{versions[1]}/"})
    publish_files([shard], bucket=bucket, prefix="datasets", name="made-by-v3", version="v1",
                  manifest={"model": {"uri": f"s3://{bucket}/models/{name}/{versions[2]}/"}})
    assert registry.apply_model_retention(bucket, name, keep=1) == [versions[3]]
    assert [m["version"] for m in list_versions(bucket, name, "models")] == versions[:3] + versions[4:]


# --- finding 2: the model actually used, never the checkout's -----------------------------------

@pytest.fixture
def checkout(tiny_model_dir, s3_env, tmp_path, monkeypatch) -> Path:
    """A folder whose local model, metrics and params differ from the published model s3://.../models/recorded/v1/."""
    params = tiny_params(prepare__dataset="recorded", generate__name="recorded-synthetic")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "recorded")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "eval.json").write_text('{"fd_ratio": 99.0}')
    try:
        publish_model(tiny_model_dir, bucket=s3_env.bucket, name="recorded", version="v1",
                              manifest={**PUBLISHED, "metrics": bound_metrics(tiny_model_dir, **PUBLISHED["metrics"])})
    except VersionExistsError:
        pass  # published by the other test of this pair
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_a_dataset_from_a_fetched_model_records_that_model(checkout, tiny_model_dir, s3_env, prefect_api_url):
    from flows.generate import generate_flow

    generate_flow("params.yaml", version="from-fetched", bucket=s3_env.bucket, checkpoint="v1")
    manifest = read_manifest(s3_env.bucket, "recorded-synthetic", "from-fetched")
    published = read_manifest(s3_env.bucket, "recorded", "v1", "models")
    generator = next(e for e in published["files"] if e["key"].endswith("/ema.safetensors"))
    assert published["metrics"]["fd_ratio"] == PUBLISHED["metrics"]["fd_ratio"]
    assert manifest["model"] == {"uri": f"s3://{s3_env.bucket}/models/recorded/v1/", "version": "v1",
                                 "sha256": generator["sha256"], "metrics": published["metrics"],
                                 "provenance": {k: PUBLISHED[k] for k in ("git", "dvc", "params")}}
    assert manifest["metrics"] == published["metrics"] and manifest["generator_sha256"] == generator["sha256"]
    # The checkout's model, its DVC hash and its training params describe another model: left out.
    assert manifest["dvc"] == {} and list(manifest["params"]) == ["generate"]


def test_evaluating_a_fetched_model_leaves_the_checkouts_metrics_alone(checkout, s3_env, prefect_api_url):
    from flows.evaluate import evaluate_flow

    metrics = evaluate_flow("params.yaml", checkpoint="v1", bucket=s3_env.bucket, prepare_data=True)
    assert (checkout / "metrics" / "eval.json").read_text() == '{"fd_ratio": 99.0}'
    assert not (checkout / "plots").exists()
    assert metrics["fd"] > 0 and metrics["step"] == json.loads((checkout / "models/recorded/meta.json").read_text())["step"]
    written = checkout / ".ganforge" / "evaluations" / "recorded" / "v1" / "eval.json"
    assert json.loads(written.read_text()) == metrics


# --- finding 10: `make run` publishes and promotes its model -------------------------------------

def test_models_publish_promotes_only_through_the_gate(checkout, s3_env, capsys):
    name = "published-by-cli"
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    params["prepare"]["dataset"] = name
    params["gate"] = GateConfig().model_dump()  # params.yaml's thresholds, not the tiny config's loose ones
    (checkout / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(checkout / "models" / "recorded", checkout / "models" / name)
    (checkout / "metrics" / "eval.json").write_text(json.dumps(bound_metrics(checkout / "models" / name, **GOOD)))
    bucket = ["--bucket", s3_env.bucket]
    assert cli.main(["models", "publish", "--promote", "--version", "20250101T020000Z", *bucket]) == 0
    assert registry.production_version(s3_env.bucket, name) == "20250101T020000Z"
    (checkout / "metrics" / "eval.json").write_text(json.dumps(bound_metrics(checkout / "models" / name, fd_ratio=7.0)))
    capsys.readouterr()
    assert cli.main(["models", "publish", "--promote", "--version", "20250102T020000Z", *bucket]) == 1
    assert "not promoted, the quality gate failed: fd_ratio 7 > 2.0" in capsys.readouterr().err
    assert cli.main(["models", "list", *bucket]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["version"], m["production"]) for m in listed] == [("20250101T020000Z", True),
                                                                 ("20250102T020000Z", False)]
