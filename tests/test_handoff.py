"""Model hand-off through S3 (publish, resolve, verified cached fetch) and version retention."""

from __future__ import annotations

import pytest

from gan_core.images.sampling import load_model
from gan_core.publication.publish import publish_files, publish_model
from gan_core.publication.read import list_versions
from gan_core.publication.retention import apply_retention
from gan_core.publication.s3 import StorageError, VersionNotFoundError
from gan_core.registry import fetch_published_model, parse_checkpoint


def test_a_published_model_loads_elsewhere_and_its_cache_is_verified(tiny_model_dir, s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    for version in ("20240101T020000Z", "20240102T020000Z"):
        uri = publish_model(tiny_model_dir, bucket=s3_env.bucket, name="handoff", version=version,
                            manifest={"metrics": {"d_auc": 0.75}})
    assert uri == f"s3://{s3_env.bucket}/models/handoff/20240102T020000Z/"
    model = fetch_published_model("latest", s3_env.bucket, "handoff")
    assert model.uri == uri and model.metrics == {"d_auc": 0.75}
    assert model.directory == tmp_path / "cache" / "models" / "handoff" / "20240102T020000Z"
    for name in ("ema.safetensors", "meta.json"):
        assert (model.directory / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    assert load_model(model.directory).meta["step"] == load_model(tiny_model_dir).meta["step"]
    # A damaged cached file is noticed and replaced by a verified download.
    (model.directory / "ema.safetensors").write_bytes(b"damaged")
    again = fetch_published_model(f"s3://{s3_env.bucket}/models/handoff/20240102T020000Z/", "other", "x")
    assert (again.directory / "ema.safetensors").read_bytes() == (tiny_model_dir / "ema.safetensors").read_bytes()
    with pytest.raises(VersionNotFoundError, match="no complete version"):
        fetch_published_model("latest", s3_env.bucket, "no-such-model")


def test_parse_checkpoint():
    assert parse_checkpoint("latest", "b", "digits") == ("b", "models", "digits", "latest")
    assert parse_checkpoint("s3://x/team/models/digits/v3/", "b", "n") == ("x", "team/models", "digits", "v3")
    with pytest.raises(ValueError, match="expected s3://BUCKET/PREFIX/NAME/VERSION"):
        parse_checkpoint("s3://x/digits/v3", "b", "n")


def test_retention_keeps_the_newest_k_and_deletes_the_rest_completely(s3_env, tmp_path):
    shard = tmp_path / "part-00000.parquet"
    shard.write_bytes(b"not really parquet")
    names = [f"2024010{day}T020000Z" for day in range(1, 5)]
    for day, version in enumerate(names, start=1):
        publish_files([shard], bucket=s3_env.bucket, prefix="datasets", name="retained", version=version,
                      manifest={"created_at": f"2024-01-0{day}T02:00:00+00:00"})
    # A folder without a manifest may be a publication in flight: retention leaves it alone.
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="datasets/retained/20231231T020000Z/part-00000.parquet",
                             Body=b"x")
    assert apply_retention(s3_env.bucket, "retained", keep=2) == names[:2]
    assert [m["version"] for m in list_versions(s3_env.bucket, "retained")] == names[2:]
    listed = s3_env.client.list_objects_v2(Bucket=s3_env.bucket, Prefix="datasets/retained/")
    assert sorted({o["Key"].split("/")[2] for o in listed["Contents"]}) == ["20231231T020000Z", *names[2:]]
    with pytest.raises(StorageError, match="at least 1"):
        apply_retention(s3_env.bucket, "retained", keep=0)
