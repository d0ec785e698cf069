"""Publish, list and download versioned file sets (datasets, checkpoints) on S3."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import boto3
import botocore.loaders
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from gan_core.errors import S3_SETUP_HINT, setup_hint  # noqa: F401  (setup_hint: the CLI's and flows' import)

log = logging.getLogger(__name__)
MANIFEST = "_manifest.json"
# Extra files (a dataset's card) go into this sub-folder: Parquet readers skip `_`-prefixed names,
# while a README.md beside the shards breaks `pandas.read_parquet(version folder)`.
EXTRA_FOLDER = "_card"
CLAIM = "_publishing.json"  # held while a version is being published; '_': Parquet readers skip it
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


def validate_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise StorageError(f"{kind} {value!r} is invalid: use letters, digits, '.', '_' and '-' "
                           "(at most 128, starting with a letter or digit)")
    return value


def version_prefix(prefix: str, name: str, version: str) -> str:
    return f"{prefix}/{validate_name('name', name)}/{validate_name('version', version)}"


def _uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def version_uri(bucket: str, prefix: str, name: str, version: str) -> str:
    return _uri(bucket, version_prefix(prefix, name, version)) + "/"


def _status(e: ClientError) -> int | None:
    return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _is_missing(e: ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _exists(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if _is_missing(e):
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


# --- publishing ---------------------------------------------------------------------------

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
    body[entries_field] = entries = _run_all(lambda path: _entry(folder, path, describe), paths)
    extras = [_entry(f"{folder}/{EXTRA_FOLDER}", path, None) for path in extra_paths]
    if extras:
        body["files"] = extras
    with _claimed(client, bucket, folder, entries + extras) as claim:
        _clear_leftovers(claim, keep={e["key"] for e in entries + extras})
        _upload_all(claim, [list(zip(paths, entries)), list(zip(extra_paths, extras))])
        if not claim.is_ours():  # our lease ran out and another run took the version over
            raise VersionBusyError(f"{_uri(bucket, folder)}/: this run's claim expired and was taken over")
        try:
            _put_manifest(client, bucket, manifest_key, json.dumps(body, indent=2, sort_keys=True).encode())
        except VersionExistsError:
            _delete_unlisted(client, bucket, manifest_key, {entries_field: entries, "files": extras})
            raise
    return _uri(bucket, folder) + "/"


def _refuse_existing(client, bucket: str, manifest_key: str, exists: bool | None = None) -> None:
    if exists if exists is not None else _exists(client, bucket, manifest_key):
        raise VersionExistsError(f"{_uri(bucket, manifest_key.rsplit('/', 1)[0])}/ already exists: "
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


def claim_lease_seconds() -> float:
    """How long a publication claim lasts unless renewed: GANFORGE_CLAIM_LEASE_S seconds (default 300)."""
    raw = os.environ.get("GANFORGE_CLAIM_LEASE_S", "300")
    try:
        lease = float(raw)
    except ValueError:
        lease = 0.0
    if not 1 <= lease <= 86400:
        raise StorageError(f"GANFORGE_CLAIM_LEASE_S must be a number of seconds from 1 to 86400 (got {raw!r})")
    return lease


@dataclass(frozen=True)
class _Claim:
    client: object
    bucket: str
    folder: str
    token: str  # this run's, to tell its claim from a later one
    content: str  # sha256 of the file entries it publishes
    lease: float  # seconds a claim stays valid without renewal

    @property
    def key(self) -> str:
        return f"{self.folder}/{CLAIM}"

    def body(self) -> bytes:
        now = datetime.now(timezone.utc)
        return json.dumps({"content_sha256": self.content, "token": self.token, "host": socket.gethostname(),
                           "pid": os.getpid(), "since": now.isoformat(timespec="seconds"),
                           "expires_at": (now + timedelta(seconds=self.lease)).isoformat()}).encode()

    def held(self) -> dict:
        try:
            return json.loads(_existing_bytes(self.client, self.bucket, self.key) or b"{}")
        except ValueError:
            return {}

    def is_ours(self) -> bool:
        return self.held().get("token") == self.token

    def renew(self) -> bool:
        """Extend the lease while the claim is still ours; False once another run has taken it over."""
        if not self.is_ours():
            return False
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self.body())
        return True


def _expired(held: dict) -> bool:
    try:
        return datetime.fromisoformat(held["expires_at"]) < datetime.now(timezone.utc)
    except (KeyError, TypeError, ValueError):
        return False  # a claim without a lease (an older ganforge's) never expires by itself


@contextlib.contextmanager
def _claimed(client, bucket: str, folder: str, entries: list[dict]):
    """Hold FOLDER for this publication: another one of different files is refused before it writes.

    A claim on the very same files (a rerun after a crash, a retried task) is taken over:
    both would write identical objects; so is one past its lease (`expires_at`), whose run
    stopped renewing it. A claim is renewed while held and released on the way out, success or not.
    """
    content = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    claim = _Claim(client, bucket, folder, secrets.token_hex(8), content, claim_lease_seconds())
    held = _put_claim(claim)
    if held == {}:  # released between our write and our read
        held = _put_claim(claim)
    if held is not None:
        if held.get("content_sha256") != content and not _expired(held):
            raise VersionBusyError(
                f"{_uri(bucket, folder)}/ is being published by another run (pid {held.get('pid')} on "
                f"{held.get('host')} since {held.get('since')}, lease until {held.get('expires_at')}); "
                f"if that run died, retry after its lease or delete {_uri(bucket, claim.key)}")
        client.put_object(Bucket=bucket, Key=claim.key, Body=claim.body())
        if not claim.is_ours():  # another run took the same stale claim over at the same moment
            raise VersionBusyError(f"{_uri(bucket, folder)}/ was just claimed by another run")
    stop = threading.Event()
    renewer = threading.Thread(target=_keep_renewing, args=(claim, stop), daemon=True)
    renewer.start()
    try:
        yield claim
    finally:
        stop.set()
        renewer.join()
        _release(claim)


def _keep_renewing(claim: _Claim, stop: threading.Event) -> None:
    # Three renewals per lease: a run that is alive never looks stale, one that died stops renewing.
    while not stop.wait(claim.lease / 3):
        try:
            if not claim.renew():
                return
        except Exception as e:  # the next renewal, or the manifest write, will tell
            log.warning("renewing the claim on %s failed: %s", _uri(claim.bucket, claim.key), e)


def _put_claim(claim: _Claim) -> dict | None:
    """None when the claim is now ours, else the claim that another run holds ({} if just released)."""
    try:
        claim.client.put_object(Bucket=claim.bucket, Key=claim.key, Body=claim.body(), IfNoneMatch="*")
    except ClientError as e:
        if _status(e) not in (409, 412):
            raise
        return claim.held()
    return None


@_best_effort
def _release(claim: _Claim) -> None:
    if claim.is_ours():
        claim.client.delete_object(Bucket=claim.bucket, Key=claim.key)


def _clear_leftovers(claim: _Claim, keep: set[str]) -> None:
    """Remove what crashed or failed runs left in the claimed, uncommitted folder; nothing reads it."""
    client, bucket, prefix = claim.client, claim.bucket, claim.folder + "/"
    found = _sizes_under(client, bucket, prefix)
    # A claim is released only after its manifest is written: look again now that we hold it.
    _refuse_existing(client, bucket, prefix + MANIFEST, exists=prefix + MANIFEST in found)
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    stale = [k for k in found if k not in keep and k != claim.key]
    _delete_keys(client, bucket, stale)


def _sizes_under(client, bucket: str, prefix: str) -> dict[str, int]:
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        sizes |= {o["Key"]: o["Size"] for o in page.get("Contents", [])}
    return sizes


def _upload_all(claim: _Claim, groups: list[list[tuple[Path, dict]]]) -> None:
    """Upload each group of (path, manifest entry) after the one before it."""
    client, bucket, folder = claim.client, claim.bucket, claim.folder
    uploaded: list[str] = []

    def upload(item: tuple[Path, dict]) -> None:
        path, entry = item
        client.upload_file(str(path), bucket, entry["key"], Config=transfer_config())
        uploaded.append(entry["key"])

    try:
        for group in groups:
            _run_all(upload, group)
        _verify_sizes(client, bucket, folder, [entry for group in groups for _, entry in group])
    except Exception as e:
        _delete_orphans(claim, uploaded)
        raise StorageError(f"publishing {_uri(bucket, folder)}/ failed, no manifest written: {e}") from e


def _verify_sizes(client, bucket: str, folder: str, entries: list[dict]) -> None:
    # Each request was checksummed in transit; this catches an object another run replaced or removed.
    sizes = _sizes_under(client, bucket, folder + "/")
    for entry in entries:
        if sizes.get(entry["key"]) != entry["bytes"]:
            raise StorageError(f"{_uri(bucket, entry['key'])} holds {sizes.get(entry['key'])} bytes after "
                               f"upload, expected {entry['bytes']}")


def _run_all(fn: Callable, items: list) -> list:
    """fn over items in threads, results in order; on an error, skip what has not started."""
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_WORKERS, len(items)))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


@_best_effort
def _delete_orphans(claim: _Claim, keys: list[str]) -> None:
    # Only while the claim is still ours and uncommitted: a run that took it over writes these keys too.
    client, bucket = claim.client, claim.bucket
    if keys and claim.is_ours() and _existing_bytes(client, bucket, f"{claim.folder}/{MANIFEST}") is None:
        _delete_keys(client, bucket, keys)


@_best_effort
def _delete_unlisted(client, bucket: str, manifest_key: str, ours: dict[str, list[dict]]) -> None:
    # We lost the race for this version: our files that the winner does not list would be
    # read by folder readers (pandas) as if they belonged to it.
    winner = json.loads(_existing_bytes(client, bucket, manifest_key) or b"{}")
    listed = {e.get("key") for field in ours for e in winner.get(field, []) if isinstance(e, dict)}
    _delete_keys(client, bucket, [e["key"] for entries in ours.values() for e in entries if e["key"] not in listed])


def _delete_keys(client, bucket: str, keys: list[str]) -> None:
    if keys:
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})


def _existing_bytes(client, bucket: str, key: str) -> bytes | None:
    try:
        return _get_bytes(client, bucket, key)
    except ClientError as e:
        if _is_missing(e):
            return None
        raise


def read_object(bucket: str, key: str, client=None) -> bytes | None:
    """The bytes of s3://BUCKET/KEY, or None when there is no such object."""
    return _existing_bytes(client or s3_client(), bucket, key)


def read_object_tagged(bucket: str, key: str, client=None) -> tuple[bytes | None, str | None]:
    """(bytes, ETag) of s3://BUCKET/KEY, or (None, None): the ETag makes a later put_if a compare-and-swap."""
    try:
        response = (client or s3_client()).get_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if _is_missing(e):
            return None, None
        raise
    return response["Body"].read(), response["ETag"]


def put_if(bucket: str, key: str, body: bytes, client=None, **condition: str) -> bool:
    """PUT with a condition (IfMatch=ETAG or IfNoneMatch="*"); False when it did not hold."""
    try:
        (client or s3_client()).put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                                           **condition)
    except ClientError as e:
        if _status(e) not in (409, 412):
            raise
        return False
    return True


def _put_manifest(client, bucket: str, key: str, body: bytes) -> None:
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                          IfNoneMatch="*")
    except ClientError as e:
        if _status(e) not in (409, 412):  # 409: another conditional write of it is in flight
            raise
        # A retried request whose first attempt succeeded also gets 412: that one is ours.
        if _existing_bytes(client, bucket, key) != body:
            raise VersionExistsError(f"{_uri(bucket, key)} was written by another publisher first") from e


def publish_dataset(shard_paths: list[Path], *, bucket: str, name: str, version: str, manifest: dict,
                    prefix: str = "datasets", extra_files: list[Path] = (), client=None) -> str:
    """Publish Parquet shards as s3://BUCKET/PREFIX/NAME/VERSION/; return that folder's URI.

    extra_files (the card) land in VERSION/_card/ after the shards, listed under the manifest's `files`.
    """
    return publish_files(shard_paths, bucket=bucket, prefix=prefix, name=name, version=version,
                         manifest=manifest, entries_field="shards", describe=_parquet_rows,
                         extra_paths=extra_files, client=client)


def _parquet_rows(path: Path) -> dict:
    import pyarrow.parquet as pq

    return {"rows": pq.ParquetFile(path).metadata.num_rows}


# --- reading ------------------------------------------------------------------------------

def _get_bytes(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def read_manifest(bucket: str, name: str, version: str, prefix: str = "datasets", client=None) -> dict:
    return json.loads(_read_manifest_bytes(client or s3_client(), bucket, prefix, name, version))


def _read_manifest_bytes(client, bucket: str, prefix: str, name: str, version: str) -> bytes:
    folder = version_prefix(prefix, name, version)
    try:
        return _get_bytes(client, bucket, f"{folder}/{MANIFEST}")
    except ClientError as e:
        if _is_missing(e):
            raise VersionNotFoundError(f"{_uri(bucket, folder)}/ has no {MANIFEST}: "
                                       "no such complete version") from e
        raise


def _subfolders(client, bucket: str, prefix: str) -> list[str]:
    names = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
    return names


def list_versions(bucket: str, name: str, prefix: str = "datasets", client=None) -> list[dict]:
    """Manifests of the complete versions of NAME, oldest first by version name.

    Versions are named by their scheduled slot (20250101T020000Z): a backfilled old slot published
    last is still older than a newer slot, so the name, not the upload time, orders them.
    """
    validate_name("name", name)  # before any client: a bad name is refused without credentials too
    client = client or s3_client()
    candidates = [v for v in _subfolders(client, bucket, f"{prefix}/{name}/")
                  if NAME_RE.match(v) and ".." not in v]

    def manifest_or_none(version: str) -> dict | None:
        try:
            return json.loads(_read_manifest_bytes(client, bucket, prefix, name, version))
        except VersionNotFoundError:
            return None  # still being published, or abandoned

    with ThreadPoolExecutor(max_workers=8) as pool:
        manifests = [m for m in pool.map(manifest_or_none, candidates) if m is not None]
    return sorted(manifests, key=lambda m: m["version"])


def list_datasets(bucket: str, prefix: str = "datasets", client=None) -> list[str]:
    """Names under PREFIX/ with at least one complete version, sorted."""
    client = client or s3_client()
    names = [n for n in _subfolders(client, bucket, f"{prefix}/") if NAME_RE.match(n) and ".." not in n]
    return sorted(n for n in names if _has_complete_version(client, bucket, prefix, n))


def _has_complete_version(client, bucket: str, prefix: str, name: str) -> bool:
    versions = _subfolders(client, bucket, f"{prefix}/{name}/")
    return any(_exists(client, bucket, f"{prefix}/{name}/{v}/{MANIFEST}") for v in versions)


def _check_names(name: str, version: str) -> None:
    # Before any client is made: a hostile name is refused as such, with or without credentials.
    validate_name("name", name)
    if version != "latest":
        validate_name("version", version)


def resolve_version(bucket: str, name: str, version: str = "latest", prefix: str = "datasets",
                    client=None) -> str:
    """VERSION itself if complete, or the newest complete version for "latest"."""
    _check_names(name, version)
    client = client or s3_client()
    if version != "latest":
        try:
            _read_manifest_bytes(client, bucket, prefix, name, version)
        except VersionNotFoundError:
            if not list_versions(bucket, name, prefix, client):  # the name itself is wrong
                raise no_versions_error(bucket, name, prefix, client) from None
            raise
        return version
    versions = list_versions(bucket, name, prefix, client)
    if not versions:
        raise no_versions_error(bucket, name, prefix, client)
    return versions[-1]["version"]


def no_versions_error(bucket: str, name: str, prefix: str = "datasets", client=None) -> VersionNotFoundError:
    """NAME has no complete version: the error names those that have one, closest to NAME first."""
    names = list_datasets(bucket, prefix, client)
    closest = difflib.get_close_matches(name, names, n=max(len(names), 1), cutoff=0.0)
    there = f"; names there: {', '.join(closest)}" if closest else "; there is none yet"
    return VersionNotFoundError(f"{prefix[:-1] if prefix.endswith('s') else prefix} '{name}' has no "
                                f"complete version in {_uri(bucket, prefix)}/{name}/{there}")


# --- downloading --------------------------------------------------------------------------

def download_files(bucket: str, name: str, version: str, to_dir: Path, *, prefix: str,
                   entries_field: str = "files", also: tuple[str, ...] = (), client=None) -> Path:
    """Download a complete version into TO_DIR/NAME/VERSION, every file's sha256 verified.

    Files land in a temporary folder inside to_dir that is renamed into place only when all
    of them match the manifest, so a failure leaves nothing behind. `also`: more manifest keys
    whose files come too when the manifest has them (a dataset's card, under `files`).
    """
    _check_names(name, version)
    client = client or s3_client()
    version = resolve_version(bucket, name, version, prefix, client)
    raw = _read_manifest_bytes(client, bucket, prefix, name, version)
    manifest, folder = json.loads(raw), version_prefix(prefix, name, version)
    entries = [entry for field in (entries_field, *(f for f in also if manifest.get(f)))
               for entry in _checked_entries(manifest, field, bucket, folder)]
    to_dir = Path(to_dir)
    to_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=to_dir))
    try:
        _run_all(lambda entry: _download_verified(client, bucket, entry, tmp, folder), entries)
        (tmp / MANIFEST).write_bytes(raw)
        return _install(tmp, to_dir / name / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _checked_entries(manifest: dict, field: str, bucket: str, folder: str) -> list[dict]:
    """The manifest's file entries, refusing any key that would land outside the version folder."""
    entries = manifest.get(field)
    if not isinstance(entries, list) or not entries:
        raise IntegrityError(f"{_uri(bucket, folder)}/{MANIFEST} lists no {field}")
    seen = set()
    for entry in entries:
        key = entry.get("key") if isinstance(entry, dict) else None
        base = key[len(folder) + 1:] if isinstance(key, str) and key.startswith(folder + "/") else ""
        sub, slash, file = base.rpartition("/")
        if (slash and sub != EXTRA_FOLDER) or not NAME_RE.match(file) or ".." in file or base in seen:
            raise IntegrityError(f"{_uri(bucket, folder)}/{MANIFEST}: refusing entry {key!r}: "
                                 f"not a distinct file directly inside {folder}/ or its {EXTRA_FOLDER}/")
        if not isinstance(entry.get("bytes"), int) or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))):
            raise IntegrityError(f"{_uri(bucket, folder)}/{MANIFEST}: entry {key!r} lacks bytes or sha256")
        seen.add(base)
    return entries


def _download_verified(client, bucket: str, entry: dict, folder: Path, version_folder: str) -> None:
    key = entry["key"]
    dest = folder / key[len(version_folder) + 1:]  # checked: a file name, or EXTRA_FOLDER/ and one
    dest.parent.mkdir(exist_ok=True)
    with _listed_object(bucket, key):
        client.download_file(bucket, key, str(dest), Config=transfer_config())
    _check_digest(bucket, entry, *file_digest(dest))


def get_verified(client, bucket: str, entry: dict) -> bytes:
    """A manifest entry's object in memory, refused unless its size and sha256 match the manifest."""
    with _listed_object(bucket, entry["key"]):
        data = _get_bytes(client, bucket, entry["key"])
    _check_digest(bucket, entry, hashlib.sha256(data).hexdigest(), len(data))
    return data


@contextlib.contextmanager
def _listed_object(bucket: str, key: str):
    try:
        yield
    except ClientError as e:
        if _is_missing(e):
            raise IntegrityError(f"{_uri(bucket, key)} is listed in the manifest but missing") from e
        raise


def _check_digest(bucket: str, entry: dict, sha256: str, size: int) -> None:
    if (sha256, size) != (entry["sha256"], entry["bytes"]):
        raise IntegrityError(f"{_uri(bucket, entry['key'])} does not match its manifest: got {size} bytes, "
                             f"sha256 {sha256}; expected {entry['bytes']} bytes, sha256 {entry['sha256']}")


def published_entries(bucket: str, name: str, version: str = "latest", prefix: str = "datasets",
                      entries_field: str = "shards", client=None) -> tuple[dict, list[dict]]:
    """A complete version's manifest ("latest" resolved) and its file entries, every key checked."""
    client = client or s3_client()
    version = resolve_version(bucket, name, version, prefix, client)
    manifest = json.loads(_read_manifest_bytes(client, bucket, prefix, name, version))
    return manifest, _checked_entries(manifest, entries_field, bucket, version_prefix(prefix, name, version))


def _install(tmp: Path, final: Path) -> Path:
    """Rename tmp to final, replacing an earlier download of the same version."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.rename(tmp, final)
        return final
    old = tmp.with_name(tmp.name + "-old")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def download_card(bucket: str, name: str, version: str, to_dir: Path, prefix: str = "datasets",
                  client=None) -> Path:
    """A dataset version's card (its manifest's `files`) into TO_DIR/NAME/VERSION/_card/; return that folder."""
    return download_files(bucket, name, version, to_dir, prefix=prefix, client=client) / EXTRA_FOLDER


def download_dataset(bucket: str, name: str, version: str, to_dir: Path, prefix: str = "datasets",
                     client=None) -> Path:
    """Download s3://BUCKET/PREFIX/NAME/VERSION ("latest" allowed) into TO_DIR/NAME/VERSION."""
    return download_files(bucket, name, version, to_dir, prefix=prefix, entries_field="shards", also=("files",),
                          client=client)


# --- models -------------------------------------------------------------------------------

MODELS_PREFIX = "models"


def publish_model(model_dir: Path, *, bucket: str, name: str, version: str, manifest: dict,
                  prefix: str = MODELS_PREFIX, client=None) -> str:
    """Publish an exported model folder (safetensors + meta.json) as s3://BUCKET/models/NAME/VERSION/."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and not p.name.startswith("."))
    return publish_files(files, bucket=bucket, prefix=prefix, name=name, version=version, manifest=manifest,
                         client=client)


def fetch_model(bucket: str, name: str, version: str, cache_dir: Path, prefix: str = MODELS_PREFIX,
                client=None) -> Path:
    """A published model version ("latest" allowed) in CACHE_DIR/NAME/VERSION, every file verified.

    A cached copy is reused only while its manifest is byte-identical to the published one
    and each of its files still matches its sha256.
    """
    client = client or s3_client()
    version = resolve_version(bucket, name, version, prefix, client)
    cached = Path(cache_dir) / name / version
    raw = _read_manifest_bytes(client, bucket, prefix, name, version)
    entries = _checked_entries(json.loads(raw), "files", bucket, version_prefix(prefix, name, version))
    if _cache_matches(cached, raw, entries):
        return cached
    return download_files(bucket, name, version, cache_dir, prefix=prefix, client=client)


def _cache_matches(folder: Path, manifest: bytes, entries: list[dict]) -> bool:
    try:
        return (folder / MANIFEST).read_bytes() == manifest and all(
            file_digest(folder / e["key"].rsplit("/", 1)[1]) == (e["sha256"], e["bytes"]) for e in entries)
    except OSError:  # not cached, or a file of it is gone
        return False


# --- retention ----------------------------------------------------------------------------

def delete_version(bucket: str, name: str, version: str, prefix: str = "datasets", client=None) -> int:
    """Delete a version completely, manifest first so that readers stop seeing it; return objects deleted."""
    client = client or s3_client()
    folder = version_prefix(prefix, name, version)
    client.delete_object(Bucket=bucket, Key=f"{folder}/{MANIFEST}")
    deleted = 1
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{folder}/"):
        keys = [o["Key"] for o in page.get("Contents", [])]
        _delete_keys(client, bucket, keys)  # a page holds at most 1,000 keys: one request
        deleted += len(keys)
    return deleted


def apply_retention(bucket: str, name: str, keep: int, prefix: str = "datasets", client=None,
                    protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Keep the newest KEEP complete versions of NAME and those in PROTECT, delete the others; return those deleted.

    Folders without a manifest are left alone: they may be publications still in flight.
    """
    if keep < 1:
        raise StorageError(f"retention must keep at least 1 version (got {keep})")
    client = client or s3_client()
    older = [m["version"] for m in list_versions(bucket, name, prefix, client)][:-keep]
    older = [version for version in older if version not in protect]
    for version in older:
        delete_version(bucket, name, version, prefix, client)
    return older
