"""Shared pytest fixtures, one section per real component the tests start."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import use_aws_env

# --- S3 ---
# One real SeaweedFS for the whole session (it starts in about 1 s, stops in about 2 s);
# tests keep apart by using their own dataset names.

@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from gan_core.s3server import SeaweedServer

    server = SeaweedServer(data_dir=tmp_path_factory.mktemp("seaweedfs"), bucket="ganforge-test",
                           access_key="GFTEST" + secrets.token_hex(6).upper(),
                           secret_key=secrets.token_hex(20),
                           max_volumes=100)  # tests make buckets of their own; CI's free disk left too few
    with server:
        yield server


@dataclass
class S3Env:
    bucket: str
    endpoint: str
    client: Any  # a boto3 S3 client built from the environment, as the library builds it


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path) -> S3Env:
    """Point the standard AWS environment at the test server, away from any user config."""
    from gan_core.publication.s3 import s3_client

    use_aws_env(monkeypatch, tmp_path, s3_server.env())
    return S3Env(bucket=s3_server.bucket, endpoint=s3_server.endpoint, client=s3_client())


# --- Prefect ---
# One Prefect test server for the whole run: it costs 10-13 s to start on 2 cores.

@pytest.fixture(scope="session")
def prefect_api_url():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


# --- DVC projects ---
# The environment of a user's shell in a clone: the test S3 and Prefect, DVC and AWS isolated from
# this machine's config, a git identity for commits.

@pytest.fixture(scope="session")
def pipeline_env(s3_server, prefect_api_url, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_", "DVC_"))}
    env |= s3_server.env() | {
        "PREFECT_API_URL": prefect_api_url, "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"), "DVC_SITE_CACHE_DIR": str(home / "dvc-site"),
        "AWS_CONFIG_FILE": str(home / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-creds"),
        "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
    }
    return env


# --- a tiny trained model ---

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """models/<dataset>/ as training exports it, after one epoch of the tiny config (a few seconds)."""
    from gan_core.images.train import train
    from tests.helpers import prepared_digits, tiny_params

    root = tmp_path_factory.mktemp("tiny-model")
    train(tiny_params(train__epochs=1), prepared_digits(root), root / "model", progress=False)
    return root / "model"
