"""Publish a version: claim its folder, upload its files, write _manifest.json last (the commit marker)."""

from __future__ import annotations

import functools
import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from gan_core.publication.claim import Claim, claimed
from gan_core.publication.commit import commit, staged_key, staging_prefix, sweep
from gan_core.publication.read import parse_utc
from gan_core.publication.s3 import (
    EXTRA_FOLDER,
    MANIFEST,
    MODELS_PREFIX,
    StorageError,
    VersionBusyError,
    VersionExistsError,
    exists,
    file_digest,
    require_conditional_writes,
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
    file is in place, and lists each file's key, size, sha256 plus describe(path). While the
    files upload, the version is claimed, so that a concurrent publication of other files
    fails before it writes anything. Files upload into this run's own staging folder and reach
    their keys only through the version's commit record (gan_core.publication.commit), so that a
    run whose lease was taken over can never change what another run's manifest lists.
    extra_paths (a card) go into EXTRA_FOLDER/, listed under the manifest's `files`.
    """
    client = client or s3_client()
    folder = version_prefix(prefix, name, version)
    paths, extra_paths = _check_files(paths), _check_files(extra_paths) if extra_paths else []
    if extra_paths and entries_field == "files":
        raise StorageError("extra files need the main files listed under another manifest key than 'files'")
    body = {**manifest, "name": name, "version": version}
    body.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _check_created_at(body["created_at"])
    _refuse_secrets(json.dumps(body, sort_keys=True))  # also fails early on non-JSON values
    manifest_key = f"{folder}/{MANIFEST}"
    _refuse_existing(client, bucket, manifest_key)
    require_conditional_writes(client, bucket)
    body[entries_field] = entries = run_all(lambda path: _entry(folder, path, describe), paths)
    extras = [_entry(f"{folder}/{EXTRA_FOLDER}", path, None) for path in extra_paths]
    if extras:
        body["files"] = extras
    text = json.dumps(body, indent=2, sort_keys=True).encode()
    with claimed(client, bucket, folder, entries + extras) as claim:
        published = _stage_and_commit(claim, [list(zip(paths, entries)), list(zip(extra_paths, extras))], text)
    if published != text:
        raise VersionExistsError(f"{uri(bucket, manifest_key)} was written by another publisher first")
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


def _check_created_at(value) -> None:
    # `latest` and retention order by it (read.version_order): a time to come would outrank every later version.
    when = parse_utc(value)
    if when is None or when > datetime.now(timezone.utc) + timedelta(minutes=5):
        raise StorageError(f"manifest created_at {value!r} must be an ISO 8601 time, not in the future")


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


# --- uploading into this run's staging folder, then the commit -------------------------------

def _stage_and_commit(claim: Claim, groups: list[list[tuple[Path, dict]]], manifest: bytes) -> bytes:
    """Stage the files under CLAIM, commit them with MANIFEST; return the manifest the version now has."""
    client, bucket, folder = claim.client, claim.bucket, claim.folder
    # A claim is released only after its manifest is written: look again now that we hold it.
    manifest_key = f"{folder}/{MANIFEST}"
    _refuse_existing(client, bucket, manifest_key, present=manifest_key in sizes_under(client, bucket, folder + "/"))
    try:
        _stage_all(claim, groups)
        if not claim.is_ours():  # our lease ran out and another run took the version over
            raise VersionBusyError(f"{uri(bucket, folder)}/: this run's claim expired and was taken over")
    except BaseException:
        _sweep_quietly(client, bucket, staging_prefix(folder, claim.token))
        raise
    # Once committed, our staged files are what the record names: they stay until it is rolled forward
    # (by this call, or by a retry that finds the record after a failure here).
    return commit(client, bucket, folder, claim.token, [e for group in groups for _, e in group], manifest)


def _stage_all(claim: Claim, groups: list[list[tuple[Path, dict]]]) -> None:
    """Upload each group of (path, manifest entry) after the one before it, into the claim's staging folder."""
    client, bucket, folder = claim.client, claim.bucket, claim.folder
    staged = {entry["key"]: staged_key(folder, claim.token, entry["key"]) for group in groups for _, entry in group}

    def upload(item: tuple[Path, dict]) -> None:
        path, entry = item
        client.upload_file(str(path), bucket, staged[entry["key"]], Config=transfer_config())

    try:
        for group in groups:
            run_all(upload, group)
        # Each request was checksummed in transit; this catches an object lost or replaced since.
        sizes = sizes_under(client, bucket, staging_prefix(folder, claim.token))
        for key, expected in ((staged[e["key"]], e["bytes"]) for group in groups for _, e in group):
            if sizes.get(key) != expected:
                raise StorageError(f"{uri(bucket, key)} holds {sizes.get(key)} bytes after upload, expected {expected}")
    except Exception as e:
        raise StorageError(f"publishing {uri(bucket, folder)}/ failed, no manifest written: {e}") from e


@_best_effort
def _sweep_quietly(client, bucket: str, prefix: str) -> None:
    sweep(client, bucket, prefix)
