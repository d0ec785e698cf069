"""Faults, bad input and leaks, injected for real: nothing lost, nothing partial, nobody in (issue 7).

One test (or a few) per scenario, numbered as in the issue. Related checks live beside the code they
cover: test_storage (hostile names, manifest keys, a failed multipart upload), test_train (a
bit-flipped checkpoint, a pickle), test_config (each bad value in-process) and
test_pipeline::test_bad_params_stop_before_work (a bad key through one flow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from botocore.exceptions import ClientError

from gan_core import checkpoint as ckpt
from gan_core import cli
from gan_core.config import ConfigError, load_params
from gan_core.images.models import DataShape
from gan_core.images.sampling import load_model
from gan_core.images.train import build_state, latest_good_checkpoint, load_training_state, train
from gan_core.layout import Layout
from gan_core.publication.claim import CLAIM
from gan_core.publication.publish import publish_dataset
from gan_core.publication.read import download_dataset, list_datasets, list_versions, read_manifest
from gan_core.publication.s3 import MANIFEST, StorageError, VersionBusyError, VersionExistsError, s3_client, sizes_under
from gan_core.s3server import SeaweedServer
from tests.faultproxy import FaultProxy
from tests.helpers import (
    ROOT,
    bound_metrics,
    committed_project,
    prepared_digits,
    run,
    tiny_params,
    tiny_project_params,
    use_aws_env,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digests(*paths: Path) -> dict[str, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {str(f): sha256(f) for f in files if f.is_file()}


def keys_under(client, bucket: str, prefix: str) -> list[str]:
    return sorted(sizes_under(client, bucket, prefix))


def pending_uploads(client, bucket: str, prefix: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]


def shard(path: Path, seeds: range, blob: int = 16) -> Path:
    """A Parquet shard; with blob >= 1 MiB its random images make it incompressible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"image": pa.array([os.urandom(blob) for _ in seeds], pa.binary()),
                      "seed": pa.array(list(seeds), pa.int64())})
    pq.write_table(table, path, compression="none")
    return path


def wait_for(condition, process: subprocess.Popen | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited ({process.returncode}) before the fault could be injected")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the moment to inject the fault")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepared_digits(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_project(prepared, tmp_path_factory) -> Path:
    """A project folder as the generate stage sees it: params.yaml, models/digits, metrics/eval.json."""
    root = tmp_path_factory.mktemp("model-project")
    raw = tiny_project_params("unused")  # each test publishes under a name of its own
    raw["train"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    train(load_params(root / "params.yaml"), prepared, root / "models" / "digits", progress=False)
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_text(json.dumps(bound_metrics(root / "models" / "digits")))
    return root


def params_file(project: Path, name: str, **generate) -> Path:
    """A copy of project/params.yaml publishing as NAME, with generate.* overridden."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["generate"].update(name=name, **generate)
    path = project / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- 1. the S3 server is killed during a multipart upload, restarted, and the publish rerun ----

@pytest.fixture
def own_s3(tmp_path, monkeypatch):
    """A server of this test's own, to kill: the session's serves the other tests."""
    server = SeaweedServer(data_dir=tmp_path / "weed", bucket="gf-killed", access_key="GFKILL" + secrets.token_hex(4),
                           secret_key=secrets.token_hex(20))
    server.start()
    try:
        use_aws_env(monkeypatch, tmp_path, server.env())
        yield server
    finally:
        server.stop(timeout=3)  # then SIGKILL: restarted after a kill, weed can ignore SIGTERM for 30 s


def test_s3_killed_mid_multipart_upload_then_restarted(own_s3, tmp_path, monkeypatch):
    monkeypatch.setenv("GANFORGE_S3_MULTIPART_MB", "5")  # the 12 MiB shard goes in parts of 5 MiB
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # give up soon while the server is down
    shards = [shard(tmp_path / "s" / "part-00000.parquet", range(10)),
              shard(tmp_path / "s" / "part-00001.parquet", range(12), blob=2**20)]
    bucket, folder = own_s3.bucket, "datasets/killed/v1/"
    client = s3_client()

    def kill_server(**_):
        if own_s3.process.poll() is None:
            os.kill(own_s3.process.pid, signal.SIGKILL)
            own_s3.process.wait()

    client.meta.events.register("after-call.s3.UploadPart", kill_server)  # once its first part is in
    with pytest.raises(StorageError, match="no manifest written"):
        publish_dataset(shards, bucket=bucket, name="killed", version="v1", manifest={}, client=client)
    assert own_s3.process.returncode == -signal.SIGKILL
    own_s3.stop()  # reaps it and removes the unix sockets weed leaves behind
    own_s3.start()  # the same data folder, ports and keys
    direct = own_s3.client()
    left = keys_under(direct, bucket, folder)
    assert folder + CLAIM in left and folder + MANIFEST not in left  # the rerun must take the claim over
    # Could not be aborted: left in the killed run's own staging folder, which no reader looks into.
    assert [re.sub(r"_staging/[0-9a-f]+/", "_staging/TOKEN/", k) for k in pending_uploads(direct, bucket, folder)] == [
        folder + "_staging/TOKEN/part-00001.parquet"]

    at_commit = []

    def look_before_commit(params, **_):
        if params["Key"].endswith(MANIFEST):
            at_commit.append(keys_under(direct, bucket, folder))

    rerun = s3_client()
    rerun.meta.events.register("provide-client-params.s3.PutObject", look_before_commit)
    publish_dataset(shards, bucket=bucket, name="killed", version="v1", manifest={}, client=rerun)
    entries = read_manifest(bucket, "killed", "v1", client=direct)["shards"]
    visible = [[k for k in keys if not k[len(folder):].startswith("_")] for keys in at_commit]
    assert visible == [[e["key"] for e in entries]]  # no manifest until every shard is in place
    for entry, path in zip(entries, shards):
        body = direct.get_object(Bucket=bucket, Key=entry["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] == sha256(path)
    assert keys_under(direct, bucket, folder) == [folder + MANIFEST] + [e["key"] for e in entries]
    assert pending_uploads(direct, bucket, folder) == []


# --- 2. the worker is killed during generation, then rerun with the same parameters -------------

def test_killed_generation_reruns_to_an_identical_manifest(model_project, s3_server, s3_env):
    params = params_file(model_project, "killed-worker", num_samples=8000, shard_size=500, batch_size=500)
    command = [sys.executable, "-m", "gan_core.cli", "generate", "--params", str(params), "--version", "v1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    client, bucket, folder = s3_env.client, s3_env.bucket, "datasets/killed-worker/v1/"
    client.create_bucket(Bucket="gf-reference")
    run(command + ["--bucket", "gf-reference"], model_project, env)  # never interrupted

    shards = Layout(model_project).generated(load_params(params))  # by dataset: data/generated/digits
    shutil.rmtree(shards)  # the reference's: what appears next is the killed worker's
    worker = subprocess.Popen(command, cwd=model_project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (shards / "part-00003.parquet").exists(), worker)  # a quarter of the way through
    finally:
        worker.kill()
        worker.wait()
    assert not (shards / "part-00015.parquet").exists() and keys_under(client, bucket, folder) == []

    run(command, model_project, env)
    manifest = read_manifest(bucket, "killed-worker", "v1", client=client)
    listed = [e["key"] for e in manifest["shards"]]
    assert len(listed) == 16
    card = [e["key"] for e in manifest["files"]]  # the dataset card, uploaded before the manifest
    assert keys_under(client, bucket, folder) == sorted([folder + MANIFEST] + listed + card)  # nothing twice or stale
    assert pending_uploads(client, bucket, folder) == []

    def without_timestamp(bucket: str) -> bytes:
        # The card states when it was made, so its bytes (and sha256) follow created_at too.
        manifest = json.loads(client.get_object(Bucket=bucket, Key=folder + MANIFEST)["Body"].read())
        manifest.pop("created_at")
        manifest["files"] = [e["key"] for e in manifest["files"]]
        return json.dumps(manifest, sort_keys=True).encode()

    assert without_timestamp(bucket) == without_timestamp("gf-reference")


# --- 3. two runs publish the same version at once ----------------------------------------------

def two_shard_sets(root: Path) -> tuple[list[Path], list[Path]]:
    """Same file names, different bytes: what two runs with different params would publish."""
    def run_files(folder: str, seeds: list[range]) -> list[Path]:
        return [shard(root / folder / f"part-{i:05d}.parquet", s) for i, s in enumerate(seeds)]

    return run_files("a", [range(0, 5), range(5, 9)]), run_files("b", [range(50, 56), range(56, 57)])


def assert_published_exactly(env, name: str, version: str, files: list[Path], to: Path) -> None:
    got = download_dataset(env.bucket, name, version, to, client=env.client)  # every sha256 verified
    for path in files:
        assert (got / path.name).read_bytes() == path.read_bytes()
    folder = f"datasets/{name}/{version}/"
    assert keys_under(env.client, env.bucket, folder) == [folder + MANIFEST] + [folder + p.name for p in files]


# Late: 2.5 leases of 1 s after the first run claimed the version, which it has renewed meanwhile.
@pytest.mark.parametrize("lease, late", [("300", 0.0), ("1", 2.5)], ids=["at-once", "after-its-lease"])
def test_a_second_publisher_is_refused_while_the_first_uploads(lease, late, s3_env, tmp_path, monkeypatch):
    first, second = two_shard_sets(tmp_path)
    name, outcome = f"race-{secrets.token_hex(4)}", []
    monkeypatch.setenv("GANFORGE_CLAIM_LEASE_S", lease)

    def second_run_publishes(params, **_):  # runs whole while the first is between two uploads
        if not outcome and params["Key"].endswith("part-00001.parquet"):
            time.sleep(late)
            with pytest.raises(VersionBusyError) as refused:
                publish_dataset(second, bucket=s3_env.bucket, name=name, version="v1", manifest={},
                                client=s3_env.client)
            outcome.append(str(refused.value))

    client = s3_client()
    client.meta.events.register("provide-client-params.s3.PutObject", second_run_publishes)
    monkeypatch.setattr("gan_core.publication.s3.MAX_WORKERS", 1)  # one upload after the other
    publish_dataset(first, bucket=s3_env.bucket, name=name, version="v1", manifest={}, client=client)
    assert "is being published by another run" in outcome[0] and f"pid {os.getpid()}" in outcome[0]
    assert_published_exactly(s3_env, name, "v1", first, tmp_path / "down")


def test_simultaneous_publishers_one_wins(s3_env, tmp_path):
    sets, name = two_shard_sets(tmp_path), f"race-{secrets.token_hex(4)}"
    for version in ("v1", "v2", "v3"):
        start = threading.Barrier(2)

        def publish(files: list[Path]):
            start.wait()
            try:
                return publish_dataset(files, bucket=s3_env.bucket, name=name, version=version, manifest={})
            except (VersionBusyError, VersionExistsError) as e:  # refused while, or after, the other uploads
                return e

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(publish, sets))
        winners = [i for i, r in enumerate(results) if isinstance(r, str)]
        assert len(winners) == 1 and isinstance(results[1 - winners[0]], StorageError), results
        assert_published_exactly(s3_env, name, version, sets[winners[0]], tmp_path / version)


def put_claim_of_another_run(env, folder: str, expires_at: str) -> None:
    """What a run publishing other files leaves while it holds the version (or after it died), with a stray shard."""
    body = {"content_sha256": "0" * 64, "token": "another", "host": "elsewhere", "pid": 1, "since": expires_at,
            "expires_at": expires_at}
    env.client.put_object(Bucket=env.bucket, Key=folder + CLAIM, Body=json.dumps(body).encode())
    env.client.put_object(Bucket=env.bucket, Key=folder + "part-00009.parquet", Body=b"the other run's")


def test_a_claim_past_its_lease_is_taken_over_a_fresh_one_is_not(s3_env, tmp_path):
    from datetime import datetime, timedelta, timezone

    first, _ = two_shard_sets(tmp_path)
    name, now = f"lease-{secrets.token_hex(4)}", datetime.now(timezone.utc)
    put_claim_of_another_run(s3_env, f"datasets/{name}/v1/", (now + timedelta(minutes=4)).isoformat())
    with pytest.raises(VersionBusyError, match=r"lease until .*retry after its lease"):
        publish_dataset(first, bucket=s3_env.bucket, name=name, version="v1", manifest={})
    put_claim_of_another_run(s3_env, f"datasets/{name}/v2/", (now - timedelta(seconds=1)).isoformat())
    publish_dataset(first, bucket=s3_env.bucket, name=name, version="v2", manifest={})
    assert_published_exactly(s3_env, name, "v2", first, tmp_path / "down")  # the stale run's stray shard is gone


def test_a_claim_lease_setting_is_checked(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("GANFORGE_CLAIM_LEASE_S", "soon")
    with pytest.raises(StorageError, match="GANFORGE_CLAIM_LEASE_S must be a number of seconds from 1 to 86400 "
                                           r"\(got 'soon'\)"):
        publish_dataset(two_shard_sets(tmp_path)[0], bucket=s3_env.bucket, name="lease-bad", version="v1",
                        manifest={})


# --- 4. S3 answers slowly or resets connections -------------------------------------------------

def attempts_at(client, key_part: str) -> list[float]:
    """When each attempt (retries included) to put a key containing key_part was sent."""
    sent: list[float] = []

    def record(request, **_) -> None:  # a handler's non-None return would stand in for the response
        if key_part in request.url:
            sent.append(time.monotonic())

    client.meta.events.register("before-send.s3.PutObject", record)
    return sent


def test_slow_and_resetting_s3_is_retried_then_verified(s3_server, s3_env, tmp_path, monkeypatch):
    files = [shard(tmp_path / "part-00000.parquet", range(1), blob=2**20)]
    name = f"flaky-{secrets.token_hex(4)}"
    with FaultProxy(s3_server.s3_port, delay=0.005, reset_after=256 * 1024, resets=2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        client = s3_client()
        sent = attempts_at(client, "part-00000")
        started = time.monotonic()
        publish_dataset(files, bucket=s3_env.bucket, name=name, version="v1", manifest={}, client=client)
        took = time.monotonic() - started
    assert len(proxy.reset_times) == 2 and len(sent) == 3  # two resets, then through
    assert took > 16 * 0.005  # the slow link was in the way: 1 MiB is at least 16 chunks
    assert_published_exactly(s3_env, name, "v1", files, tmp_path / "down")


def test_s3_that_always_resets_fails_with_nothing_published(s3_server, s3_env, tmp_path, monkeypatch):
    files = [shard(tmp_path / "part-00000.parquet", range(1), blob=2**20)]
    name = f"flaky-{secrets.token_hex(4)}"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    with FaultProxy(s3_server.s3_port, reset_after=256 * 1024) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        client = s3_client()
        sent = attempts_at(client, "part-00000")
        with pytest.raises(StorageError, match=f"s3://{s3_env.bucket}/datasets/{name}/v1/ failed, no manifest"):
            publish_dataset(files, bucket=s3_env.bucket, name=name, version="v1", manifest={}, client=client)
    assert len(sent) == len(proxy.reset_times) == 3  # bounded: AWS_MAX_ATTEMPTS
    assert keys_under(s3_env.client, s3_env.bucket, f"datasets/{name}/") == []  # no manifest, claim or shard
    assert list_versions(s3_env.bucket, name, client=s3_env.client) == []


# --- 5. corrupt checkpoints, and a kill during a checkpoint save --------------------------------

def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (sha256(p), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_truncated_checkpoint_resume_starts_from_the_previous_good_one(prepared, tmp_path):
    params, ck = tiny_params(train__epochs=1, train__checkpoint_every=10), tmp_path / "ck"
    train(params, prepared, tmp_path / "model", checkpoint_dir=ck, stop_after=20, progress=False)
    blob = ck / "step-000000020" / "opt_d.safetensors"
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    good = snapshot(ck / "step-000000010")
    summary = train(params, prepared, tmp_path / "model", checkpoint_dir=ck, resume=True, stop_after=30,
                    progress=False)
    assert summary["steps"] == 30
    assert snapshot(ck / "step-000000010") == good  # resumed from it; a fresh start would have rewritten it
    assert latest_good_checkpoint(ck) == ck / "step-000000030"
    assert ckpt.load_tensors(ck / "step-000000020", "opt_d")  # rewritten whole


KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
import torch
from gan_core import checkpoint
from gan_core.images.train import train
from tests.helpers import tiny_params

mode, where = sys.argv[1], Path(sys.argv[2])
if mode == "files":  # SIGKILL in the second checkpoint, once two of its six files are written
    real, written = checkpoint.save_file, []
    def save_file(tensors, path):
        real(tensors, path)
        written.append(path)
        if len(written) == 8:
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save_file = save_file
    train(tiny_params(train__epochs=1, train__checkpoint_every=10), Path(sys.argv[3]), where.parent / "model",
          checkpoint_dir=where, progress=False)
else:  # SIGKILL between the renames that swap a new checkpoint in for the previous one
    checkpoint.save_checkpoint(where, {"w": {"x": torch.ones(3)}}, {"n": 1})
    real = os.replace
    def replace(src, dst):
        if Path(dst) == where:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
    os.replace = replace
    checkpoint.save_checkpoint(where, {"w": {"x": torch.zeros(3)}}, {"n": 2})
"""


def killed_save(mode: str, *args: Path) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, mode, *map(str, args)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def test_kill_during_checkpoint_save_leaves_the_previous_one_loadable(prepared, tmp_path):
    ck = tmp_path / "ck"
    killed_save("files", ck, prepared)
    assert sorted(p.name for p in ck.iterdir())[-1] == "step-000000010"  # step 20: a hidden staging folder
    assert latest_good_checkpoint(ck) == ck / "step-000000010"
    params = tiny_params(train__epochs=1, train__checkpoint_every=10)
    shape = DataShape(**ckpt.read_meta(ck / "step-000000010")["shape"])
    state = build_state(params, shape, torch.device("cpu"))
    load_training_state(ck / "step-000000010", state)
    assert state.step == 10
    train(params, prepared, tmp_path / "model", checkpoint_dir=ck, resume=True, stop_after=20, progress=False)
    assert sorted(p.name for p in ck.iterdir()) == ["step-000000010", "step-000000020"]  # staging cleared


def test_kill_while_swapping_a_checkpoint_in_keeps_the_previous_one(tmp_path):
    target = tmp_path / "model"
    killed_save("swap", target)
    assert not target.exists()  # the previous set was moved aside, the new one not yet in
    assert ckpt.read_meta(target)["n"] == 1  # put back by the next reader
    assert ckpt.load_tensors(target, "w")["x"].equal(torch.ones(3))


# --- 6. a checkpoint carrying a pickle payload ---------------------------------------------------

class Exploit:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_torch_pickle_in_a_model_is_refused_by_load_model(model_project, tmp_path):
    model, marker = tmp_path / "model", tmp_path / "pwned"
    shutil.copytree(model_project / "models" / "digits", model)
    torch.save({"weights": Exploit(marker)}, model / "ema.safetensors")  # a torch.load would run it
    meta = ckpt.read_meta(model)
    meta["files"]["ema.safetensors"] = sha256(model / "ema.safetensors")  # even with a matching hash
    ckpt.write_json_atomic(model / "meta.json", meta)
    with pytest.raises(ckpt.CheckpointError, match="ema.safetensors: not a safetensors file"):
        load_model(model)
    assert not marker.exists()


def test_no_unsafe_deserialisation_in_the_code():
    unsafe = ["torch.load", "import pickle", "pickle.load", "marshal.load", "joblib.load", "allow_pickle=True",
              "weights_only=False", "yaml.unsafe_load", "yaml.full_load", "Loader=yaml.Loader", "UnsafeLoader"]
    sources = {p: p.read_text() for folder in ("gan_core", "flows") for p in (ROOT / folder).rglob("*.py")}
    assert len(sources) > 10
    found = [(str(p.relative_to(ROOT)), word) for p, text in sources.items() for word in unsafe if word in text]
    assert found == []


# --- 8. hostile names through the CLI and params.yaml -------------------------------------------

HOSTILE = ["..", "a/../../b", "/etc", "", "a\x00b", "x" * 300]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_names_are_refused_by_the_cli_and_params(bad, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # params but no model: generating would fail differently
    shutil.copy(ROOT / "params.yaml", tmp_path)
    for argv in (["download", bad, "--to", "out"], ["download", "ok", "--version", bad, "--to", "out"],
                 ["list", bad], ["generate", "--version", bad]):
        assert cli.main(argv) == 1
        assert f"{bad!r} is invalid" in capsys.readouterr().err, argv
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # nothing downloaded or generated
    for key in ("generate.name", "prepare.dataset"):
        section, field = key.split(".")
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({section: {field: bad}}))
        with pytest.raises(ConfigError, match=re.escape(f"{key}: ")):
            load_params(path)


# --- 9. a sentinel secret never leaks, with DEBUG logging on ------------------------------------

@pytest.fixture
def debug_records():
    """Every record of boto3, botocore, s3transfer, urllib3 and Prefect at DEBUG, formatted."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(n) for n in ("", "boto3", "botocore", "s3transfer", "urllib3", "prefect")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield lines
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


def prefect_records(flow_run_id) -> list[str]:
    """What Prefect stored about a flow run: parameters, logs, artifacts, and its database as bytes."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        run_ = client.read_flow_run(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    stored = [f.read_bytes().decode("latin-1") for f in database.parent.glob(database.name + "*")]
    assert any("datasets/leak-check/v1/" in log.message for log in logs)  # what is searched holds this run
    assert artifacts and any(str(run_.parameters["params_path"]) in text for text in stored)
    return ([json.dumps(run_.parameters)] + [log.message for log in logs]
            + [a.model_dump_json() for a in artifacts] + stored)


def test_the_secret_key_appears_nowhere(model_project, s3_server, s3_env, prefect_api_url, debug_records,
                                        monkeypatch, capsys):
    from flows.generate import generate_flow

    secret, bogus = s3_server.secret_key, "SENTINEL" + secrets.token_hex(16)  # both random: found only if leaked
    monkeypatch.chdir(model_project)
    params = params_file(model_project, "leak-check")
    state = generate_flow(str(params), version="v1", bucket=s3_env.bucket, return_state=True)
    assert state.is_completed(), state
    manifest = s3_env.client.get_object(Bucket=s3_env.bucket, Key=f"datasets/leak-check/v1/{MANIFEST}")["Body"].read()

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bogus)  # a call that fails authentication
    assert cli.main(["list"]) == 1
    with pytest.raises(ClientError, match="SignatureDoesNotMatch|AccessDenied") as failed:
        list_datasets(s3_env.bucket)
    printed = capsys.readouterr()
    texts = (debug_records + [printed.out, printed.err, str(failed.value), manifest.decode()]
             + prefect_records(state.state_details.flow_run_id) + [s3_server.log_path.read_text()])
    # botocore logged the signed headers (the access key ID is not secret), Prefect logged at DEBUG
    assert any("Signature=" in line and s3_server.access_key in line for line in debug_records)
    assert any(line.startswith("prefect") for line in debug_records)
    for sentinel in (secret, bogus):
        assert [t[:200] for t in texts if sentinel in t] == []


# --- 10. the disk fills up during generation ----------------------------------------------------

def test_full_disk_during_generation(model_project, s3_env, monkeypatch, capsys):
    params = params_file(model_project, "full-disk", num_samples=20000, shard_size=2000)
    out = Layout(model_project).generated(load_params(params))  # by dataset: data/generated/digits
    out.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"mounting a 1 MiB tmpfs needs root: {mounted.stderr.decode().strip()}")
    inputs = digests(model_project / "models", model_project / "metrics", params)
    monkeypatch.chdir(model_project)
    try:
        assert cli.main(["generate", "--params", str(params), "--version", "v1"]) == 1
        left = sorted(p.name for p in out.iterdir())
    finally:
        subprocess.run(["umount", str(out)], check=True)
    err = capsys.readouterr().err
    assert re.search(r"generated/digits/part-\d{5}\.parquet: no space left on device \(\d+ bytes free there\)", err), err
    assert left and not [n for n in left if n.endswith(".tmp")]  # the complete shards, no partial one
    assert keys_under(s3_env.client, s3_env.bucket, "datasets/full-disk/") == []
    assert digests(model_project / "models", model_project / "metrics", params) == inputs


# --- 7 and 11: through `dvc repro` ---------------------------------------------------------------

@pytest.fixture(scope="module")
def dvc_project(pipeline_env, tmp_path_factory) -> Path:
    """A committed project whose prepare stage is in dvc.lock; training takes a few seconds."""
    root = committed_project(tmp_path_factory.mktemp("dvc-faults"), tiny_project_params("faults-dvc"), pipeline_env)
    run(["dvc", "repro", "prepare"], root, pipeline_env)
    return root


def edited(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_malformed_params_stop_dvc_repro_before_any_work(dvc_project, pipeline_env, s3_server):
    good, lock = (dvc_project / "params.yaml").read_text(), (dvc_project / "dvc.lock").read_text()
    lr_d = re.search(r"^  lr_d: \S+", good, re.MULTILINE).group()  # train's line, whatever the default
    cases = {  # params.yaml -> what the error must name
        "syntax": (edited(good, lr_d, "  " + lr_d), ["params.yaml"]),
        "missing": (edited(good, "  dataset: digits\n", ""), ["prepare.dataset"]),
        "values": (edited(edited(edited(edited(good, "batch_size: 32", "batch_size: thirty-two"), lr_d,
                                        "  lr_d: .nan"), "shard_size: 50", "shard_size: -50"),
                          "latent_dim: 8", "latent_dim: 8\n  latent_dims: 8"),
                   ["train.batch_size", "train.lr_d", "generate.shard_size", "unknown key model.latent_dims"]),
    }
    try:
        for case, (text, named) in cases.items():
            (dvc_project / "params.yaml").write_text(text)
            failed = run(["dvc", "repro"], dvc_project, pipeline_env, check=False)
            output = failed.stdout + failed.stderr
            assert failed.returncode != 0, case
            assert all(key in output for key in named), (case, output[-3000:])
            assert (dvc_project / "dvc.lock").read_text() == lock, case
            assert not (dvc_project / "models").exists() and not (dvc_project / "checkpoints").exists(), case
    finally:
        (dvc_project / "params.yaml").write_text(good)
    client = s3_server.client()
    assert keys_under(client, s3_server.bucket, "datasets/faults-dvc/") == []


def test_interrupted_repro_keeps_the_lock_and_reruns_the_stage(dvc_project, pipeline_env, tmp_path):
    lock = (dvc_project / "dvc.lock").read_text()
    # Long enough (780 steps, several seconds) that the interrupt lands while training runs.
    params = dvc_project / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["train"]["epochs"] = 20
    params.write_text(yaml.safe_dump(raw))
    with open(tmp_path / "repro.log", "w") as log:
        # Ctrl+C's default action, even under a shell that started this run in the background with
        # SIGINT ignored (its children inherit that, and Python then never raises KeyboardInterrupt).
        repro = subprocess.Popen(["dvc", "repro", "train"], cwd=dvc_project, env=pipeline_env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            wait_for(lambda: any((dvc_project / "checkpoints" / "digits").glob("step-*")), repro)
            os.killpg(repro.pid, signal.SIGINT)  # as Ctrl+C would, to dvc and the stage it runs
            repro.wait(timeout=60)
        finally:
            if repro.poll() is None:
                os.killpg(repro.pid, signal.SIGKILL)
                repro.wait()
    assert repro.returncode != 0, (tmp_path / "repro.log").read_text()
    assert (dvc_project / "dvc.lock").read_text() == lock
    assert not (dvc_project / "models" / "digits" / "meta.json").exists()
    again = run(["dvc", "repro", "train"], dvc_project, pipeline_env)
    assert "Running stage 'train'" in again.stdout
    assert "train:" in (dvc_project / "dvc.lock").read_text()
    # Trained to the end ("step" is the exported, selected step; the summary counts every step).
    assert ckpt.read_meta(dvc_project / "models" / "digits")["summary"]["steps"] == 20 * (1258 // 32)
