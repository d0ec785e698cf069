"""S3 publication against a real SeaweedFS: layout, commit marker, integrity, hostile input."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from gan_core.publication.publish import publish_dataset, publish_files
from gan_core.publication.read import download_dataset, list_datasets, list_versions, read_manifest, resolve_version
from gan_core.publication.s3 import (
    IntegrityError,
    StorageError,
    VersionExistsError,
    VersionNotFoundError,
    s3_client,
    validate_name,
)
from gan_core.s3server import free_port, read_env_file, start_embedded, status_embedded, stop_embedded


def write_shard(path: Path, seeds: range) -> Path:
    table = pa.table({
        "image": pa.array([b"\x89PNG fake " + bytes([s % 256]) * 8 for s in seeds], pa.binary()),
        "label": pa.array([s % 10 for s in seeds], pa.int64()),
        "seed": pa.array(list(seeds), pa.int64()),
        "d_score": pa.array([s / 100 for s in seeds], pa.float32()),
    })
    pq.write_table(table, path)
    return path


@pytest.fixture
def shards(tmp_path) -> list[Path]:
    out = tmp_path / "shards"
    out.mkdir()
    return [write_shard(out / "part-00000.parquet", range(0, 3)),
            write_shard(out / "part-00001.parquet", range(3, 7))]


@pytest.fixture
def name() -> str:
    return f"digits-{uuid.uuid4().hex[:8]}"  # one server per session: keep tests apart


def keys_under(env, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in env.client.list_objects_v2(Bucket=env.bucket, Prefix=prefix).get("Contents", []))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FlakyClient:
    """A real client whose upload of one key fails, and which records what existed at manifest time."""

    def __init__(self, client, fail_key_part: str | None = None):
        self._client, self._fail = client, fail_key_part
        self.keys_at_manifest: list[str] | None = None

    def upload_file(self, filename, bucket, key, **kwargs):
        if self._fail and self._fail in key:
            raise ConnectionError(f"injected failure uploading {key}")
        return self._client.upload_file(filename, bucket, key, **kwargs)

    def put_object(self, **kwargs):
        if kwargs["Key"].endswith("/_manifest.json"):
            folder = kwargs["Key"].rsplit("/", 1)[0] + "/"
            listed = self._client.list_objects_v2(Bucket=kwargs["Bucket"], Prefix=folder).get("Contents", [])
            self.keys_at_manifest = sorted(o["Key"] for o in listed)
        return self._client.put_object(**kwargs)

    def __getattr__(self, attr):
        return getattr(self._client, attr)


def test_client_takes_endpoint_from_environment(s3_env, monkeypatch):
    assert s3_env.client.meta.endpoint_url == s3_env.endpoint
    assert s3_env.client.meta.config.s3["addressing_style"] == "path"
    assert s3_env.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    assert s3_client().meta.endpoint_url == "http://127.0.0.1:1"


def test_publish_list_download_round_trip(s3_env, shards, name, tmp_path):
    uri = publish_dataset(shards, bucket=s3_env.bucket, name=name, version="v1",
                          manifest={"sample_count": 7, "params": {"seed": 0}})
    assert uri == f"s3://{s3_env.bucket}/datasets/{name}/v1/"
    assert keys_under(s3_env, f"datasets/{name}/") == [
        f"datasets/{name}/v1/_manifest.json", f"datasets/{name}/v1/part-00000.parquet",
        f"datasets/{name}/v1/part-00001.parquet"]

    manifest = read_manifest(s3_env.bucket, name, "v1")
    assert (manifest["name"], manifest["version"], manifest["sample_count"]) == (name, "v1", 7)
    assert manifest["shards"] == [
        {"key": f"datasets/{name}/v1/{p.name}", "rows": rows, "bytes": p.stat().st_size, "sha256": sha256(p)}
        for p, rows in zip(shards, [3, 4])]
    assert [m["version"] for m in list_versions(s3_env.bucket, name)] == ["v1"]
    assert name in list_datasets(s3_env.bucket)
    assert resolve_version(s3_env.bucket, name) == "v1"

    to_dir = tmp_path / "download"
    for _ in range(2):  # the second download replaces the first
        got = download_dataset(s3_env.bucket, name, "latest", to_dir)
        assert got == to_dir / name / "v1"
        assert sorted(p.name for p in got.iterdir()) == ["_manifest.json"] + [p.name for p in shards]
        for p in shards:
            assert (got / p.name).read_bytes() == p.read_bytes()
        assert json.loads((got / "_manifest.json").read_text()) == manifest
        assert os.listdir(to_dir) == [name]  # no temporary folder left behind


def test_latest_is_newest_complete_version(s3_env, shards, name):
    for version, created in [("v2", "2026-02-01T00:00:00+00:00"), ("v1", "2026-01-01T00:00:00+00:00")]:
        publish_dataset(shards, bucket=s3_env.bucket, name=name, version=version, manifest={"created_at": created})
    # v3 and another dataset are being published: shards without a manifest do not exist for readers
    s3_env.client.upload_file(str(shards[0]), s3_env.bucket, f"datasets/{name}/v3/part-00000.parquet")
    s3_env.client.upload_file(str(shards[0]), s3_env.bucket, f"datasets/{name}-partial/v1/part-00000.parquet")

    assert [m["version"] for m in list_versions(s3_env.bucket, name)] == ["v1", "v2"]
    assert resolve_version(s3_env.bucket, name, "latest") == "v2"
    with pytest.raises(VersionNotFoundError, match="no _manifest.json"):
        resolve_version(s3_env.bucket, name, "v3")
    with pytest.raises(VersionNotFoundError, match=f"dataset '{name}-partial' has no complete version"):
        resolve_version(s3_env.bucket, f"{name}-partial")
    datasets = list_datasets(s3_env.bucket)
    assert name in datasets and f"{name}-partial" not in datasets


def test_corrupted_shard_fails_download_and_leaves_nothing(s3_env, shards, name, tmp_path):
    publish_dataset(shards, bucket=s3_env.bucket, name=name, version="v1", manifest={})
    good = download_dataset(s3_env.bucket, name, "v1", tmp_path / "good")
    key = f"datasets/{name}/v1/part-00001.parquet"
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=key, Body=shards[0].read_bytes())

    to_dir = tmp_path / "fresh"
    with pytest.raises(IntegrityError, match=f"s3://{s3_env.bucket}/{key} does not match its manifest"):
        download_dataset(s3_env.bucket, name, "v1", to_dir)
    assert list(to_dir.iterdir()) == []
    with pytest.raises(IntegrityError):  # a failed refresh keeps the earlier verified copy
        download_dataset(s3_env.bucket, name, "v1", tmp_path / "good")
    assert (good / "part-00001.parquet").read_bytes() == shards[1].read_bytes()
    assert os.listdir(tmp_path / "good") == [name]


def test_no_manifest_until_every_shard_is_uploaded(s3_env, shards, name):
    flaky = FlakyClient(s3_env.client, fail_key_part="part-00001")
    with pytest.raises(StorageError, match="no manifest written: injected failure"):
        publish_dataset(shards, bucket=s3_env.bucket, name=name, version="v1", manifest={}, client=flaky)
    assert flaky.keys_at_manifest is None
    assert keys_under(s3_env, f"datasets/{name}/") == []  # the shard that did upload was removed
    assert list_versions(s3_env.bucket, name) == []

    recorder = FlakyClient(s3_env.client)  # a retry succeeds, and the manifest still comes last
    publish_dataset(shards, bucket=s3_env.bucket, name=name, version="v1", manifest={}, client=recorder)
    folder = f"datasets/{name}/v1/"
    at_manifest = [k[len(folder):] for k in recorder.keys_at_manifest]
    assert [k for k in at_manifest if not k.startswith("_")] == [p.name for p in shards]  # every shard in place
    assert {"_commit.json", "_publishing.json"} <= set(at_manifest)  # the commit record, the claim
    assert [m["version"] for m in list_versions(s3_env.bucket, name)] == ["v1"]
    assert keys_under(s3_env, folder) == [folder + "_manifest.json"] + [folder + p.name for p in shards]


def test_failed_multipart_upload_is_aborted(s3_env, shards, name, monkeypatch, tmp_path):
    monkeypatch.setenv("GANFORGE_S3_MULTIPART_MB", "5")  # parts of 5 MiB, S3's smallest
    big = tmp_path / "part-00002.parquet"
    big.write_bytes(os.urandom(12 * 2**20))  # three parts; describe() is not called for publish_files
    client = s3_client()

    def fail_second_part(params, **_):
        if params.get("PartNumber") == 2:
            raise ConnectionError("injected failure in part 2")

    client.meta.events.register("provide-client-params.s3.UploadPart", fail_second_part)
    with pytest.raises(StorageError, match="injected failure in part 2"):
        publish_files([shards[0], big], bucket=s3_env.bucket, prefix="models", name=name,
                      version="v1", manifest={}, client=client)
    pending = s3_env.client.list_multipart_uploads(Bucket=s3_env.bucket, Prefix=f"models/{name}/")
    assert pending.get("Uploads", []) == []
    assert keys_under(s3_env, f"models/{name}/") == []


def test_existing_version_is_refused(s3_env, shards, name, tmp_path):
    publish_dataset(shards, bucket=s3_env.bucket, name=name, version="v1", manifest={"run": "winner"})
    key = f"datasets/{name}/v1/_manifest.json"
    winner = s3_env.client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    loser = [write_shard(tmp_path / "part-00009.parquet", range(100, 102))]
    with pytest.raises(VersionExistsError, match="already exists"):
        publish_dataset(loser, bucket=s3_env.bucket, name=name, version="v1", manifest={"run": "loser"})

    class MissesTheWinner(FlakyClient):  # the loser of a race checks before the winner commits
        def head_object(self, **kwargs):
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")

    late = MissesTheWinner(s3_env.client)
    with pytest.raises(VersionExistsError, match="already exists"):  # seen again once it holds the claim
        publish_dataset(loser, bucket=s3_env.bucket, name=name, version="v1", manifest={"run": "loser"},
                        client=late)
    assert late.keys_at_manifest is None  # refused before uploading anything
    assert s3_env.client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read() == winner
    assert keys_under(s3_env, f"datasets/{name}/") == [key] + [f"datasets/{name}/v1/{p.name}" for p in shards]


HOSTILE = ["", ".", "..", "a/../../b", "/abs", "a/b", "a\x00b", "x" * 300, "a..b", "-a", "_manifest.json", "a b"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_names_are_refused(bad, shards, tmp_path):
    unused = object()  # any S3 call would fail with AttributeError, not StorageError
    with pytest.raises(StorageError, match="is invalid"):
        publish_dataset(shards, bucket="b", name=bad, version="v1", manifest={}, client=unused)
    with pytest.raises(StorageError, match="is invalid"):
        publish_dataset(shards, bucket="b", name="ok", version=bad, manifest={}, client=unused)
    with pytest.raises(StorageError, match="is invalid"):
        download_dataset("b", bad, "v1", tmp_path, client=unused)
    assert validate_name("dataset name", "digits_v1.2-x") == "digits_v1.2-x"


def test_invalid_name_message():
    with pytest.raises(StorageError) as e:
        validate_name("dataset name", "a/../b")
    assert str(e.value).startswith("dataset name 'a/../b' is invalid: use letters, digits, '.', '_' and '-'")


def test_shard_names_readers_would_skip_are_refused(tmp_path):
    hidden = write_shard(tmp_path / "_part.parquet", range(2))
    with pytest.raises(StorageError, match="file name '_part.parquet' is invalid"):
        publish_dataset([hidden], bucket="b", name="ok", version="v1", manifest={}, client=object())


@pytest.mark.parametrize("key", ["datasets/other/v1/part-00000.parquet", "datasets/{name}/v1/../../x.parquet",
                                 "datasets/{name}/v1/sub/x.parquet", "datasets/{name}/v1/_manifest.json",
                                 "/etc/passwd", "datasets/{name}/v1/", "datasets/{name}/v1/.hidden.parquet",
                                 "datasets/{name}/v1/_card/../x.parquet", "datasets/{name}/v1/_card/sub/x.md",
                                 "datasets/{name}/v1/a\x00.parquet", "datasets/{name}/v1//x.parquet"])
def test_manifest_keys_outside_the_version_are_refused(s3_env, name, key, tmp_path):
    key = key.format(name=name)
    manifest = {"name": name, "version": "v1", "shards": [{"key": key, "rows": 1, "bytes": 1, "sha256": "0" * 64}]}
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=f"datasets/{name}/v1/_manifest.json",
                             Body=json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match="refusing entry"):
        download_dataset(s3_env.bucket, name, "v1", tmp_path / "to")
    assert not (tmp_path / "to").exists()  # refused before anything was written


def test_pandas_reads_the_version_folder_whole(s3_env, shards, name):
    publish_dataset(shards, bucket=s3_env.bucket, name=name, version="v1", manifest={})
    df = pd.read_parquet(f"s3://{s3_env.bucket}/datasets/{name}/v1/",
                         storage_options={"client_kwargs": {"endpoint_url": s3_env.endpoint}})
    assert sorted(df["seed"]) == list(range(7))
    assert list(df.columns) == ["image", "label", "seed", "d_score"]


def test_manifest_with_the_secret_key_is_refused(s3_env, shards, name):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    with pytest.raises(StorageError, match="secret key"):
        publish_dataset(shards, bucket=s3_env.bucket, name=name, version="v1", manifest={"params": {"k": secret}})
    assert keys_under(s3_env, f"datasets/{name}/") == []


def test_embedded_server_start_status_stop(tmp_path):
    state, port = tmp_path / "state", free_port()
    try:
        info = start_embedded(state, port=port, bucket="gf-embedded")
        assert info["running"] and info["endpoint"] == f"http://127.0.0.1:{port}"
        assert start_embedded(state, port=port)["pid"] == info["pid"]  # idempotent
        assert status_embedded(state) == info
        lines = (state / "s3.env").read_text().splitlines()
        assert all(line.startswith("export ") for line in lines) and len(lines) == 5
        assert (state / "s3.env").stat().st_mode & 0o777 == 0o600
        env = read_env_file(state / "s3.env")
        assert env["AWS_ENDPOINT_URL"] == info["endpoint"] and env["GANFORGE_BUCKET"] == "gf-embedded"
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        client.put_object(Bucket="gf-embedded", Key="kept", Body=b"across restarts")

        stopped = stop_embedded(state)
        assert not stopped["running"] and stopped["pid"] is None and not (state / "s3.pid").exists()
        assert not Path(f"/proc/{info['pid']}").exists()

        again = start_embedded(state, bucket="gf-embedded")  # same keys, port and data
        assert again["endpoint"] == info["endpoint"] and read_env_file(state / "s3.env") == env
        assert client.get_object(Bucket="gf-embedded", Key="kept")["Body"].read() == b"across restarts"
        assert env["AWS_SECRET_ACCESS_KEY"] not in (state / "s3-data" / "weed.log").read_text()
    finally:
        stop_embedded(state)
    assert not status_embedded(state)["running"]


def test_a_publication_that_fails_after_its_commit_is_finished_by_the_retry(s3_env, shards, name):
    client, failed = storage_client_failing_first_copy()
    manifest = {"created_at": "2026-01-01T00:00:00+00:00"}  # a retried task's: the same inputs, the same manifest
    with pytest.raises(ConnectionError, match="injected failure copying"):
        publish_dataset(shards, bucket=s3_env.bucket, name=name, version="v1", manifest=manifest, client=client)
    folder = f"datasets/{name}/v1/"
    assert failed and list_versions(s3_env.bucket, name) == []  # committed, not yet in place: not a version
    assert folder + "_commit.json" in keys_under(s3_env, folder)

    assert publish_dataset(shards, bucket=s3_env.bucket, name=name, version="v1", manifest=manifest).endswith("/v1/")
    entries = read_manifest(s3_env.bucket, name, "v1")["shards"]
    assert [e["sha256"] for e in entries] == [sha256(p) for p in shards]
    assert keys_under(s3_env, folder) == [folder + "_manifest.json"] + [folder + p.name for p in shards]


def storage_client_failing_first_copy():
    client, failed = s3_client(), []

    def fail_once(params, **_) -> None:
        if not failed:
            failed.append(params["Key"])
            raise ConnectionError(f"injected failure copying {params['Key']}")

    client.meta.events.register("provide-client-params.s3.CopyObject", fail_once)
    return client, failed
