"""Errors a new user meets first say what to do next; output piped into `head` ends quietly."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from gan_core import cli
from gan_core.publication.publish import publish_dataset
from gan_core.s3server import free_port
from tests.helpers import use_aws_env
from tests.test_storage import write_shard

SETUP = "source .ganforge/s3.env"


def no_aws(monkeypatch, tmp_path, **env: str) -> None:
    """A new shell: no AWS variables, no AWS files, no instance metadata to wait for."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    use_aws_env(monkeypatch, tmp_path, {"AWS_EC2_METADATA_DISABLED": "true", **env})


def test_no_credentials_says_to_source_the_env_file(monkeypatch, tmp_path, capsys):
    no_aws(monkeypatch, tmp_path)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ganforge list: error: no S3 credentials (Unable to locate credentials): run "
                          f"`{SETUP}`") and err.count("\n") == 1, err


def test_no_endpoint_says_to_source_the_env_file(monkeypatch, tmp_path, capsys):
    # Keys but no endpoint: botocore goes to AWS, here through a proxy that refuses, as an offline host would.
    no_aws(monkeypatch, tmp_path, AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="x" * 40,
           AWS_MAX_ATTEMPTS="1", HTTPS_PROXY=f"http://127.0.0.1:{free_port()}")
    assert cli.main(["download", "digits-synthetic", "--to", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"(no S3 endpoint set: run `{SETUP}`" in err and err.count("\n") == 1, err


@pytest.fixture
def bucket_of_two(s3_env, tmp_path) -> str:
    """A bucket of its own holding two datasets, so that the list of names is known."""
    bucket = f"names-{uuid.uuid4().hex[:8]}"
    s3_env.client.create_bucket(Bucket=bucket)
    shard = write_shard(tmp_path / "part-00000.parquet", range(3))
    for name in ("digits-synthetic", "faces"):
        publish_dataset([shard], bucket=bucket, name=name, version="v1", manifest={})
    return bucket


@pytest.mark.parametrize("argv", [["list", "digits-synthetc"], ["download", "digits-synthetc", "--to", "x"],
                                  ["download", "digits-synthetc", "--version", "v1", "--to", "x"]])
def test_a_misspelt_dataset_lists_the_names_closest_first(bucket_of_two, argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*argv, "--bucket", bucket_of_two]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # not an empty list
    assert captured.err.rstrip().endswith("names there: digits-synthetic, faces"), captured.err
    assert not (tmp_path / "x").exists()


def test_an_empty_bucket_says_there_is_none(s3_env, capsys):
    bucket = f"empty-{uuid.uuid4().hex[:8]}"
    s3_env.client.create_bucket(Bucket=bucket)
    assert cli.main(["list", "digits", "--bucket", bucket]) == 1
    assert capsys.readouterr().err.rstrip().endswith("there is none yet")


def test_output_piped_into_head_ends_quietly(bucket_of_two, s3_env):
    # `head -n 0` leaves at once, long before the listing is printed: every write meets a closed pipe.
    # (s3_env: the AWS environment the subprocess inherits.)
    listing = (f"{sys.executable} -m gan_core.cli list --long --bucket {bucket_of_two} | head -n 0; "
               "echo \"status ${PIPESTATUS[0]}\"")
    done = subprocess.run(["bash", "-c", listing], capture_output=True, text=True, timeout=120)
    assert (done.stdout, done.stderr) == ("status 0\n", ""), done
