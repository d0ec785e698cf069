"""The S3 base every publication room shares: the client, names and URIs, errors, small object helpers."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import boto3
import botocore.loaders
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from gan_core.errors import S3_SETUP_HINT

MANIFEST = "_manifest.json"
# Extra files (a dataset's card) go into this sub-folder: Parquet readers skip `_`-prefixed names,
# while a README.md beside the shards breaks `pandas.read_parquet(version folder)`.
EXTRA_FOLDER = "_card"
MODELS_PREFIX = "models"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_WORKERS = 4
TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=16 * 2**20, max_concurrency=4)


class StorageError(ValueError):
    """A publication or download was refused or failed; the message says which object."""


class VersionExistsError(StorageError):
    pass


class VersionBusyError(StorageError):
    """Another run is publishing other files as this version right now: worth retrying later."""


class VersionNotFoundError(StorageError):
    pass


class IntegrityError(StorageError):
    pass


def s3_client():
    """An S3 client from the standard AWS chain; botocore reads AWS_ENDPOINT_URL(_S3) itself."""
    config = Config(retries={"mode": "standard", "total_max_attempts": _max_attempts()}, connect_timeout=5,
                    read_timeout=60,
                    s3={"addressing_style": "path"},
                    # parallel files x parallel parts, with room to spare
                    max_pool_connections=2 * MAX_WORKERS * TRANSFER.max_request_concurrency)
    # A session per client, as boto3's default session is not safe to share between threads,
    # but one model loader for all: parsing the S3 model again costs ~0.1 s per client.
    session = botocore.session.get_session()
    session.register_component("data_loader", _model_loader())
    if session.get_credentials() is None:  # resolved once here; the client reuses them
        raise StorageError(f"no S3 credentials (Unable to locate credentials): {S3_SETUP_HINT}")
    return boto3.session.Session(botocore_session=session).client("s3", config=config)


def _max_attempts() -> int:
    # AWS_MAX_ATTEMPTS is the standard AWS setting; botocore ignores it once Config sets retries.
    raw = os.environ.get("AWS_MAX_ATTEMPTS", "5")
    if not raw.isdigit() or int(raw) < 1:
        raise StorageError(f"AWS_MAX_ATTEMPTS must be a whole number >= 1 (got {raw!r})")
    return int(raw)


def transfer_config() -> TransferConfig:
    """Multipart transfers above GANFORGE_S3_MULTIPART_MB MiB (default 64), in parts of a quarter of it."""
    raw = os.environ.get("GANFORGE_S3_MULTIPART_MB")
    if not raw:
        return TRANSFER
    try:
        threshold = int(float(raw) * 2**20)
    except ValueError:
        threshold = 0
    if threshold < 5 * 2**20:  # S3's smallest part
        raise StorageError(f"GANFORGE_S3_MULTIPART_MB must be a number >= 5 (got {raw!r})")
    return TransferConfig(multipart_threshold=threshold, multipart_chunksize=max(5 * 2**20, threshold // 4),
                          max_concurrency=TRANSFER.max_request_concurrency)


@functools.cache
def _model_loader():
    return botocore.loaders.create_loader()


# --- names and URIs -------------------------------------------------------------------------

def validate_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise StorageError(f"{kind} {value!r} is invalid: use letters, digits, '.', '_' and '-' "
                           "(at most 128, starting with a letter or digit)")
    return value


def version_prefix(prefix: str, name: str, version: str) -> str:
    return f"{prefix}/{validate_name('name', name)}/{validate_name('version', version)}"


def uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def version_uri(bucket: str, prefix: str, name: str, version: str) -> str:
    return uri(bucket, version_prefix(prefix, name, version)) + "/"


# --- small object helpers -------------------------------------------------------------------

def http_status(e: ClientError) -> int | None:
    return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def is_missing(e: ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def exists(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if is_missing(e):
            return False
        raise
    return True


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 hex and byte size of a local file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.hexdigest(), os.path.getsize(path)


def get_bytes(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def existing_bytes(client, bucket: str, key: str) -> bytes | None:
    try:
        return get_bytes(client, bucket, key)
    except ClientError as e:
        if is_missing(e):
            return None
        raise


def read_object(bucket: str, key: str, client=None) -> bytes | None:
    """The bytes of s3://BUCKET/KEY, or None when there is no such object."""
    return existing_bytes(client or s3_client(), bucket, key)


def read_object_tagged(bucket: str, key: str, client=None) -> tuple[bytes | None, str | None]:
    """(bytes, ETag) of s3://BUCKET/KEY, or (None, None): the ETag makes a later put_if a compare-and-swap."""
    try:
        response = (client or s3_client()).get_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if is_missing(e):
            return None, None
        raise
    return response["Body"].read(), response["ETag"]


def put_if(bucket: str, key: str, body: bytes, client=None, **condition: str) -> bool:
    """PUT with a condition (IfMatch=ETAG or IfNoneMatch="*"); False when it did not hold."""
    try:
        (client or s3_client()).put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                                           **condition)
    except ClientError as e:
        if http_status(e) not in (409, 412):
            raise
        return False
    return True


# Stores checked to honour If-None-Match and If-Match, by (endpoint, bucket): probed once per process.
_HONOURING: set[tuple[str, str]] = set()
_PROBE_LOCK = threading.Lock()
PROBE_PREFIX = "_ganforge/conditional-write-probe"


def require_conditional_writes(client, bucket: str) -> None:
    """Refuse a store that ignores conditional writes, probed at first use per endpoint and bucket.

    Publication (a manifest, a claim, a commit record: If-None-Match) and the production alias
    (compare-and-swap: If-Match) rely on them; on a store that drops them both silently become
    last-writer-wins, so ganforge stops with one line instead.
    """
    where = (client.meta.endpoint_url, bucket)
    with _PROBE_LOCK:
        if where in _HONOURING:
            return
        key = f"{PROBE_PREFIX}/{secrets.token_hex(8)}"
        try:
            created = put_if(bucket, key, b"1", client, IfNoneMatch="*")
            overwrote = put_if(bucket, key, b"2", client, IfNoneMatch="*")
            swapped = put_if(bucket, key, b"3", client, IfMatch='"0123456789abcdef0123456789abcdef"')
        finally:
            client.delete_object(Bucket=bucket, Key=key)
        if not created or overwrote or swapped:
            raise StorageError(f"{uri(bucket, '')} at {where[0]} ignores conditional writes (If-None-Match, "
                               "If-Match), which ganforge needs so that a version is never overwritten: use a store "
                               "that honours them (AWS S3, SeaweedFS, MinIO)")
        _HONOURING.add(where)


def sizes_under(client, bucket: str, prefix: str) -> dict[str, int]:
    """Every object under PREFIX and its size in bytes."""
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        sizes |= {o["Key"]: o["Size"] for o in page.get("Contents", [])}
    return sizes


def subfolders(client, bucket: str, prefix: str) -> list[str]:
    names = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
    return names


def delete_keys(client, bucket: str, keys: list[str]) -> None:
    """Delete KEYS, at most 1,000 (one S3 request)."""
    if keys:
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})


def run_all(fn: Callable, items: list) -> list:
    """fn over items in threads, results in order; on an error, skip what has not started."""
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_WORKERS, len(items)))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
