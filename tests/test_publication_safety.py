"""What is published stays what its manifest lists (issue 22, findings 5-8), against a real SeaweedFS.

5: a writer paused past its lease cannot change the version another run published;
6: `latest` and retention order versions by when they are for, whatever their names;
7: pins, the production alias and its rollback history survive retention;
8: a store that ignores conditional writes is refused at first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config

from gan_core import cli, registry
from gan_core.publication import retention
from gan_core.publication.publish import publish_dataset, publish_model
from gan_core.publication.read import download_dataset, list_versions, read_manifest, resolve_version, slot_time
from gan_core.publication.retention import apply_retention
from gan_core.publication.s3 import (
    StorageError,
    VersionNotFoundError,
    require_conditional_writes,
    s3_client,
    sizes_under,
)
from tests.helpers import ROOT
from tests.s3proxy import HeaderStrippingProxy


def shard(path: Path, seeds: range, blob: int = 16) -> Path:
    """A Parquet shard; with large blobs its random bytes make it incompressible (slow to upload)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"image": pa.array([os.urandom(blob) for _ in seeds], pa.binary()),
                      "seed": pa.array(list(seeds), pa.int64())})
    pq.write_table(table, path, compression="none")
    return path


def keys_under(env, prefix: str) -> list[str]:
    return sorted(sizes_under(env.client, env.bucket, prefix))


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- 5. fencing: a writer paused past its lease --------------------------------------------------

STALE_WRITER = """
import os, signal, sys
from pathlib import Path
from gan_core.publication.publish import publish_dataset
from gan_core.publication.s3 import StorageError, s3_client

def pause_once(request, **_):  # as a GC pause or a partition would: every thread stops, renewals too
    if "part-00001" in request.url and not os.environ.get("PAUSED"):
        os.environ["PAUSED"] = "1"
        os.kill(os.getpid(), signal.SIGSTOP)

client = s3_client()
client.meta.events.register("before-send.s3.PutObject", pause_once)
try:
    publish_dataset([Path(p) for p in sys.argv[3:]], bucket=sys.argv[1], name=sys.argv[2], version="v1",
                    manifest={"run": "stale"}, client=client)
except StorageError as e:
    sys.exit(f"refused: {e}")
"""


def stopped(process: subprocess.Popen) -> bool:
    return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_a_writer_paused_past_its_lease_cannot_touch_the_takers_version(s3_env, tmp_path, monkeypatch):
    name = f"fenced-{secrets.token_hex(4)}"
    folder = f"datasets/{name}/v1/"
    monkeypatch.setenv("GANFORGE_CLAIM_LEASE_S", "2")
    # Same names, other bytes, one shard more: what a run with other params (or older code) would write.
    stale = [shard(tmp_path / "stale" / f"part-{i:05d}.parquet", range(3 * i, 3 * i + 3)) for i in range(3)]
    taker = [shard(tmp_path / "taker" / "part-00000.parquet", range(100, 104)),
             shard(tmp_path / "taker" / "part-00001.parquet", range(104, 107))]
    writer = subprocess.Popen([sys.executable, "-c", STALE_WRITER, s3_env.bucket, name, *map(str, stale)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: writer.poll() is None and stopped(writer))  # paused just before sending part-00001
        time.sleep(3)  # past its 2 s lease
        publish_dataset(taker, bucket=s3_env.bucket, name=name, version="v1", manifest={"run": "taker"})
        writer.send_signal(signal.SIGCONT)
        _, err = writer.communicate(timeout=120)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode != 0 and "refused:" in err, err  # it noticed, and says so

    manifest = read_manifest(s3_env.bucket, name, "v1")
    assert manifest["run"] == "taker"
    listed = {e["key"]: e["sha256"] for e in manifest["shards"]}
    stored = {key: hashlib.sha256(s3_env.client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()).hexdigest()
              for key in keys_under(s3_env, folder) if not key[len(folder):].startswith("_")}
    assert stored == listed  # every Parquet file a folder reader sees is the taker's, byte for byte
    frame = pd.read_parquet(f"s3://{s3_env.bucket}/{folder}",
                            storage_options={"client_kwargs": {"endpoint_url": s3_env.endpoint}})
    assert sorted(frame["seed"]) == list(range(100, 107))
    assert keys_under(s3_env, folder) == sorted([folder + "_manifest.json", *listed])  # the stale run's: swept


# --- 6. one order of versions that no name can fool ---------------------------------------------

def slot(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def test_free_form_and_future_names_neither_stay_latest_nor_push_nightly_versions_out(s3_env, tmp_path):
    name, files = f"ordered-{secrets.token_hex(4)}", [shard(tmp_path / "part-00000.parquet", range(3))]
    now = datetime.now(timezone.utc)

    def publish(version: str, published: datetime) -> None:
        publish_dataset(files, bucket=s3_env.bucket, name=name, version=version,
                        manifest={"created_at": published.isoformat(timespec="seconds")})

    publish("v1", now - timedelta(days=3))  # `ganforge generate --version v1`, three days ago
    publish("29991231T000000Z", now - timedelta(days=2))  # a slot-shaped name from the future
    nightly = [slot(now - timedelta(days=1)), slot(now - timedelta(hours=1))]
    for version in nightly:
        publish(version, slot_time(version) + timedelta(minutes=9))
    assert [m["version"] for m in list_versions(s3_env.bucket, name)] == ["v1", "29991231T000000Z", *nightly]
    assert resolve_version(s3_env.bucket, name) == nightly[-1]
    assert apply_retention(s3_env.bucket, name, keep=2) == ["v1", "29991231T000000Z"]
    assert [m["version"] for m in list_versions(s3_env.bucket, name)] == nightly


def test_a_publication_time_in_the_future_is_refused(s3_env, tmp_path):
    name, files = f"ordered-{secrets.token_hex(4)}", [shard(tmp_path / "part-00000.parquet", range(3))]
    later = (datetime.now(timezone.utc) + timedelta(days=30)).isoformat()
    with pytest.raises(StorageError, match=f"manifest created_at '{re.escape(later)}' must be an ISO 8601 time, "
                                           "not in the future"):
        publish_dataset(files, bucket=s3_env.bucket, name=name, version="v1", manifest={"created_at": later})
    assert keys_under(s3_env, f"datasets/{name}/") == []


# --- 7. pins, production and its rollback history outlive retention -----------------------------

def test_a_pinned_dataset_outlives_retention_and_delete_until_unpinned(s3_env, tmp_path, capsys):
    name, files = f"pinned-{secrets.token_hex(4)}", [shard(tmp_path / "part-00000.parquet", range(3))]
    versions = [f"2025010{day}T020000Z" for day in range(1, 5)]
    for version in versions:
        publish_dataset(files, bucket=s3_env.bucket, name=name, version=version, manifest={})
    assert cli.main(["datasets", "pin", name, versions[0], "--reason", "trains over several epochs"]) == 0
    assert apply_retention(s3_env.bucket, name, keep=1) == versions[1:3]  # what a training job streams stays
    assert cli.main(["datasets", "delete", name, versions[0]]) == 1
    assert f"datasets/{name}/{versions[0]} is pinned or in use: `ganforge datasets unpin NAME VERSION` first" in \
        capsys.readouterr().err
    assert [m["version"] for m in list_versions(s3_env.bucket, name)] == [versions[0], versions[3]]
    assert cli.main(["datasets", "pins", name]) == 0
    assert json.loads(capsys.readouterr().out)[versions[0]]["reason"] == "trains over several epochs"

    assert cli.main(["datasets", "unpin", name, versions[0]]) == 0
    assert cli.main(["datasets", "delete", name, versions[0]]) == 0
    assert [m["version"] for m in list_versions(s3_env.bucket, name)] == [versions[3]]
    assert keys_under(s3_env, f"datasets/{name}/{versions[0]}/") == []


def test_a_pin_placed_while_retention_runs_keeps_the_version(s3_env, tmp_path):
    name, files = f"pinned-{secrets.token_hex(4)}", [shard(tmp_path / "part-00000.parquet", range(3))]
    versions = [f"2025010{day}T020000Z" for day in range(1, 4)]
    for version in versions:
        publish_dataset(files, bucket=s3_env.bucket, name=name, version=version, manifest={})
    retaining, manifest_key = s3_client(), f"datasets/{name}/{versions[0]}/_manifest.json"

    def pin_first(params, **_) -> None:  # a user pins it after retention listed the pins, before it deletes
        if params["Key"] == manifest_key:
            retention.pin(s3_env.bucket, name, versions[0], client=s3_env.client)

    retaining.meta.events.register("provide-client-params.s3.DeleteObject", pin_first)
    assert apply_retention(s3_env.bucket, name, keep=1, client=retaining) == [versions[1]]
    assert [m["version"] for m in list_versions(s3_env.bucket, name)] == [versions[0], versions[2]]
    assert download_dataset(s3_env.bucket, name, versions[0], tmp_path / "down").is_dir()  # complete, verified


def test_model_retention_keeps_production_and_its_rollback_history(tiny_model_dir, s3_env):
    name, bucket = f"history-{secrets.token_hex(4)}", s3_env.bucket
    versions = [f"2025010{day}T020000Z" for day in range(1, 7)]
    for version in versions:
        publish_model(tiny_model_dir, bucket=bucket, name=name, version=version, manifest={})
    for version in versions[:3]:
        registry.promote(bucket, name, version)  # production: the third, which can roll back to the first two
    retention.pin(bucket, name, versions[3], prefix="models")
    assert registry.apply_model_retention(bucket, name, keep=1) == [versions[4]]
    assert registry.rollback(bucket, name)["version"] == versions[1]
    assert registry.rollback(bucket, name)["version"] == versions[0]


def test_promote_and_retention_cannot_leave_production_naming_a_deleted_version(tiny_model_dir, s3_env):
    name, bucket = f"raced-{secrets.token_hex(4)}", s3_env.bucket
    versions = [f"2025010{day}T020000Z" for day in range(1, 5)]
    for version in versions:
        publish_model(tiny_model_dir, bucket=bucket, name=name, version=version, manifest={})
    registry.promote(bucket, name, versions[3])
    alias_key = f"models/{name}/_aliases/production.json"

    # Retention runs between promote's check of the version and its write of the alias.
    promoting = s3_client()

    def retention_first(params, **_) -> None:
        if params["Key"] == alias_key:
            retention.delete_version(bucket, name, versions[0], "models", s3_env.client)

    promoting.meta.events.register("provide-client-params.s3.PutObject", retention_first)
    with pytest.raises(VersionNotFoundError, match="was deleted while being made production; production is unchanged"):
        registry.promote(bucket, name, versions[0], client=promoting)
    assert registry.read_alias(bucket, name)["version"] == versions[3]

    # A promotion lands between retention's listing and its deletion: the version stays, complete.
    retaining = s3_client()
    manifest_key = f"models/{name}/{versions[1]}/_manifest.json"

    def promotion_first(params, **_) -> None:
        if params["Key"] == manifest_key:
            registry.promote(bucket, name, versions[1], client=s3_env.client)

    retaining.meta.events.register("provide-client-params.s3.DeleteObject", promotion_first)
    assert registry.apply_model_retention(bucket, name, keep=1, client=retaining) == [versions[2]]
    assert registry.read_alias(bucket, name)["version"] == versions[1]
    assert read_manifest(bucket, name, versions[1], "models")["version"] == versions[1]


# --- 8. a store that ignores conditional writes -------------------------------------------------

def sigv2_client(s3_server, endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=s3_server.access_key,
                        aws_secret_access_key=s3_server.secret_key,
                        config=Config(signature_version="s3", s3={"addressing_style": "path"}))


def test_a_store_that_ignores_conditional_writes_is_refused(s3_server, s3_env, tmp_path, tiny_model_dir):
    name = f"unconditional-{secrets.token_hex(4)}"
    files = [shard(tmp_path / "part-00000.parquet", range(3))]
    publish_model(tiny_model_dir, bucket=s3_env.bucket, name=name, version="v1", manifest={})
    with HeaderStrippingProxy(s3_server.s3_port) as proxy:
        client = sigv2_client(s3_server, proxy.endpoint)
        with pytest.raises(StorageError, match=r"ignores conditional writes \(If-None-Match, If-Match\)"):
            registry.promote(s3_env.bucket, name, "v1", client=client)
        with pytest.raises(StorageError, match="ignores conditional writes"):
            publish_dataset(files, bucket=s3_env.bucket, name=name, version="v1", manifest={}, client=client)
        assert proxy.stripped > 0  # the conditions were sent, and dropped on the way
    assert keys_under(s3_env, f"datasets/{name}/") == [] and keys_under(s3_env, "_ganforge/") == []
    assert registry.read_alias(s3_env.bucket, name) is None


def test_a_store_that_honours_conditional_writes_is_probed_once(s3_server, s3_env):
    bucket = f"gf-probe-{secrets.token_hex(4)}"  # one that no test has probed yet
    s3_env.client.create_bucket(Bucket=bucket)
    client = sigv2_client(s3_server, s3_env.endpoint)  # SeaweedFS itself, no proxy
    sent = []
    client.meta.events.register("before-call.s3.*", lambda model, **_: sent.append(model.name))
    require_conditional_writes(client, bucket)
    assert sent == ["PutObject", "PutObject", "PutObject", "DeleteObject"]
    require_conditional_writes(client, bucket)
    assert len(sent) == 4  # remembered for this endpoint and bucket
    assert s3_env.client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
