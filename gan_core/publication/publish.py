"""Publish a version: claim its folder, upload its files, write _manifest.json last (the commit marker)."""

from __future__ import annotations

import functools
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from botocore.exceptions import ClientError

from gan_core.publication.claim import Claim, claimed
from gan_core.publication.s3 import (
    EXTRA_FOLDER,
    MANIFEST,
    MODELS_PREFIX,
    StorageError,
    VersionBusyError,
    VersionExistsError,
    delete_keys,
    existing_bytes,
    exists,
    file_digest,
    http_status,
    run_all,
    s3_client,
    sizes_under,
    transfer_config,
    uri,
    validate_name,
    version_prefix,
)

log = logging.getLogger(__name__)


def publish_files(paths: list[Path], *, bucket: str, prefix: str, name: str, version: str,
                  manifest: dict, entries_field: str = "files",
                  describe: Callable[[Path], dict] | None = None, extra_paths: list[Path] = (),
                  client=None) -> str:
    """Upload files into PREFIX/NAME/VERSION/, then write _manifest.json last; return its s3:// URI.

    The manifest is the commit marker: it is written with If-None-Match, only after every
    file is uploaded, and lists each file's key, size, sha256 plus describe(path). While the
    files upload, the version is claimed, so that a concurrent publication of other files
    fails before it writes anything. extra_paths (a card) upload after the others, into
    EXTRA_FOLDER/, listed under the manifest's `files`.
    """
    client = client or s3_client()
    folder = version_prefix(prefix, name, version)
    paths, extra_paths = _check_files(paths), _check_files(extra_paths) if extra_paths else []
    if extra_paths and entries_field == "files":
        raise StorageError("extra files need the main files listed under another manifest key than 'files'")
    body = {**manifest, "name": name, "version": version}
    body.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _refuse_secrets(json.dumps(body, sort_keys=True))  # also fails early on non-JSON values
    manifest_key = f"{folder}/{MANIFEST}"
    _refuse_existing(client, bucket, manifest_key)
    body[entries_field] = entries = run_all(lambda path: _entry(folder, path, describe), paths)
    extras = [_entry(f"{folder}/{EXTRA_FOLDER}", path, None) for path in extra_paths]
    if extras:
        body["files"] = extras
    with claimed(client, bucket, folder, entries + extras) as claim:
        _clear_leftovers(claim, keep={e["key"] for e in entries + extras})
        _upload_all(claim, [list(zip(paths, entries)), list(zip(extra_paths, extras))])
        if not claim.is_ours():  # our lease ran out and another run took the version over
            raise VersionBusyError(f"{uri(bucket, folder)}/: this run's claim expired and was taken over")
        try:
            _put_manifest(client, bucket, manifest_key, json.dumps(body, indent=2, sort_keys=True).encode())
        except VersionExistsError:
            _delete_unlisted(client, bucket, manifest_key, {entries_field: entries, "files": extras})
            raise
    return uri(bucket, folder) + "/"


def publish_dataset(shard_paths: list[Path], *, bucket: str, name: str, version: str, manifest: dict,
                    prefix: str = "datasets", extra_files: list[Path] = (), client=None) -> str:
    """Publish Parquet shards as s3://BUCKET/PREFIX/NAME/VERSION/; return that folder's URI.

    extra_files (the card) land in VERSION/_card/ after the shards, listed under the manifest's `files`.
    """
    return publish_files(shard_paths, bucket=bucket, prefix=prefix, name=name, version=version,
                         manifest=manifest, entries_field="shards", describe=_parquet_rows,
                         extra_paths=extra_files, client=client)


def publish_model(model_dir: Path, *, bucket: str, name: str, version: str, manifest: dict,
                  prefix: str = MODELS_PREFIX, client=None) -> str:
    """Publish an exported model folder (safetensors + meta.json) as s3://BUCKET/models/NAME/VERSION/."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and not p.name.startswith("."))
    return publish_files(files, bucket=bucket, prefix=prefix, name=name, version=version, manifest=manifest,
                         client=client)


def _parquet_rows(path: Path) -> dict:
    import pyarrow.parquet as pq

    return {"rows": pq.ParquetFile(path).metadata.num_rows}


# --- before uploading: refusals ---------------------------------------------------------------

def _refuse_existing(client, bucket: str, manifest_key: str, present: bool | None = None) -> None:
    if present if present is not None else exists(client, bucket, manifest_key):
        raise VersionExistsError(f"{uri(bucket, manifest_key.rsplit('/', 1)[0])}/ already exists: "
                                 "choose another version")


def _check_files(paths: list[Path]) -> list[Path]:
    paths = [Path(p) for p in paths]
    if not paths:
        raise StorageError("nothing to publish: no files given")
    names = [validate_name("file name", p.name) for p in paths]
    if len(set(names)) != len(names):
        raise StorageError(f"file names must be unique within a version: {sorted(names)}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise StorageError(f"cannot publish missing files: {missing}")
    return paths


def _refuse_secrets(text: str) -> None:
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if secret and secret in text:
        raise StorageError("the manifest contains the AWS secret key: remove it from the params")


def _best_effort(cleanup: Callable) -> Callable:
    """Cleanup after a failure must never hide the error being raised."""
    @functools.wraps(cleanup)
    def quiet(*args, **kwargs) -> None:
        try:
            cleanup(*args, **kwargs)
        except Exception as e:
            log.warning("%s failed: %s", cleanup.__name__, e)
    return quiet


def _entry(folder: str, path: Path, describe) -> dict:
    sha256, size = file_digest(path)
    return {"key": f"{folder}/{path.name}", "bytes": size, "sha256": sha256, **(describe(path) if describe else {})}


# --- uploading under the claim ----------------------------------------------------------------

def _clear_leftovers(claim: Claim, keep: set[str]) -> None:
    """Remove what crashed or failed runs left in the claimed, uncommitted folder; nothing reads it."""
    client, bucket, prefix = claim.client, claim.bucket, claim.folder + "/"
    found = sizes_under(client, bucket, prefix)
    # A claim is released only after its manifest is written: look again now that we hold it.
    _refuse_existing(client, bucket, prefix + MANIFEST, present=prefix + MANIFEST in found)
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    stale = [k for k in found if k not in keep and k != claim.key]
    delete_keys(client, bucket, stale)


def _upload_all(claim: Claim, groups: list[list[tuple[Path, dict]]]) -> None:
    """Upload each group of (path, manifest entry) after the one before it."""
    client, bucket, folder = claim.client, claim.bucket, claim.folder
    uploaded: list[str] = []

    def upload(item: tuple[Path, dict]) -> None:
        path, entry = item
        client.upload_file(str(path), bucket, entry["key"], Config=transfer_config())
        uploaded.append(entry["key"])

    try:
        for group in groups:
            run_all(upload, group)
        _verify_sizes(client, bucket, folder, [entry for group in groups for _, entry in group])
    except Exception as e:
        _delete_orphans(claim, uploaded)
        raise StorageError(f"publishing {uri(bucket, folder)}/ failed, no manifest written: {e}") from e


def _verify_sizes(client, bucket: str, folder: str, entries: list[dict]) -> None:
    # Each request was checksummed in transit; this catches an object another run replaced or removed.
    sizes = sizes_under(client, bucket, folder + "/")
    for entry in entries:
        if sizes.get(entry["key"]) != entry["bytes"]:
            raise StorageError(f"{uri(bucket, entry['key'])} holds {sizes.get(entry['key'])} bytes after "
                               f"upload, expected {entry['bytes']}")


@_best_effort
def _delete_orphans(claim: Claim, keys: list[str]) -> None:
    # Only while the claim is still ours and uncommitted: a run that took it over writes these keys too.
    client, bucket = claim.client, claim.bucket
    if keys and claim.is_ours() and existing_bytes(client, bucket, f"{claim.folder}/{MANIFEST}") is None:
        delete_keys(client, bucket, keys)


# --- the commit marker ------------------------------------------------------------------------

@_best_effort
def _delete_unlisted(client, bucket: str, manifest_key: str, ours: dict[str, list[dict]]) -> None:
    # We lost the race for this version: our files that the winner does not list would be
    # read by folder readers (pandas) as if they belonged to it.
    winner = json.loads(existing_bytes(client, bucket, manifest_key) or b"{}")
    listed = {e.get("key") for field in ours for e in winner.get(field, []) if isinstance(e, dict)}
    delete_keys(client, bucket, [e["key"] for entries in ours.values() for e in entries if e["key"] not in listed])


def _put_manifest(client, bucket: str, key: str, body: bytes) -> None:
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                          IfNoneMatch="*")
    except ClientError as e:
        if http_status(e) not in (409, 412):  # 409: another conditional write of it is in flight
            raise
        # A retried request whose first attempt succeeded also gets 412: that one is ours.
        if existing_bytes(client, bucket, key) != body:
            raise VersionExistsError(f"{uri(bucket, key)} was written by another publisher first") from e
