"""Read what is published: list complete versions, resolve `latest`, download and verify every file."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from botocore.exceptions import ClientError

from gan_core.publication.s3 import (
    EXTRA_FOLDER,
    MANIFEST,
    MODELS_PREFIX,
    NAME_RE,
    IntegrityError,
    VersionNotFoundError,
    exists,
    file_digest,
    get_bytes,
    is_missing,
    run_all,
    s3_client,
    subfolders,
    transfer_config,
    uri,
    validate_name,
    version_prefix,
)

SLOT_RE = re.compile(r"\d{8}T\d{6}Z")  # a scheduled run's version: its UTC slot
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def read_manifest(bucket: str, name: str, version: str, prefix: str = "datasets", client=None) -> dict:
    return json.loads(read_manifest_bytes(client or s3_client(), bucket, prefix, name, version))


def read_manifest_bytes(client, bucket: str, prefix: str, name: str, version: str) -> bytes:
    folder = version_prefix(prefix, name, version)
    try:
        return get_bytes(client, bucket, f"{folder}/{MANIFEST}")
    except ClientError as e:
        if is_missing(e):
            raise VersionNotFoundError(f"{uri(bucket, folder)}/ has no {MANIFEST}: "
                                       "no such complete version") from e
        raise


# --- listing and resolving --------------------------------------------------------------------

def list_versions(bucket: str, name: str, prefix: str = "datasets", client=None) -> list[dict]:
    """Manifests of the complete versions of NAME, oldest first (version_order)."""
    validate_name("name", name)  # before any client: a bad name is refused without credentials too
    client = client or s3_client()
    candidates = [v for v in subfolders(client, bucket, f"{prefix}/{name}/")
                  if NAME_RE.match(v) and ".." not in v]

    def manifest_or_none(version: str) -> dict | None:
        try:
            return json.loads(read_manifest_bytes(client, bucket, prefix, name, version))
        except VersionNotFoundError:
            return None  # still being published, or abandoned

    with ThreadPoolExecutor(max_workers=8) as pool:
        manifests = [m for m in pool.map(manifest_or_none, candidates) if m is not None]
    return sorted(manifests, key=version_order)


def version_order(manifest: dict) -> tuple[datetime, str]:
    """When a version is for: the time its name gives when it is a UTC slot (20250101T020000Z, what
    scheduled runs publish), unless that lies after its publication; otherwise when it was published.

    A backfilled old slot published last still sorts before newer slots, while a free-form name (`v1`)
    or a slot in the future sorts where it was published: no name can become `latest` for good, nor
    make retention delete the versions published after it. Ties go by name.
    """
    published = parse_utc(manifest.get("created_at")) or EPOCH  # a manifest without one: oldest
    slot = slot_time(str(manifest.get("version")))
    return (min(slot, published) if slot else published), str(manifest.get("version"))


def slot_time(version: str) -> datetime | None:
    """The UTC time a slot-named version (20250101T020000Z) stands for, or None for another name."""
    if not SLOT_RE.fullmatch(version):
        return None
    try:
        return datetime.strptime(version, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:  # 20251399T000000Z: shaped like a slot, but no time
        return None


def parse_utc(text) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime (naive ones taken as UTC), or None."""
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def list_datasets(bucket: str, prefix: str = "datasets", client=None) -> list[str]:
    """Names under PREFIX/ with at least one complete version, sorted."""
    client = client or s3_client()
    names = [n for n in subfolders(client, bucket, f"{prefix}/") if NAME_RE.match(n) and ".." not in n]
    return sorted(n for n in names if _has_complete_version(client, bucket, prefix, n))


def _has_complete_version(client, bucket: str, prefix: str, name: str) -> bool:
    versions = subfolders(client, bucket, f"{prefix}/{name}/")
    return any(exists(client, bucket, f"{prefix}/{name}/{v}/{MANIFEST}") for v in versions)


def check_names(name: str, version: str) -> None:
    """NAME and VERSION ("latest" allowed) are valid names, checked before any client is made: a hostile
    name is refused as such, with or without credentials."""
    validate_name("name", name)
    if version != "latest":
        validate_name("version", version)


def resolve_version(bucket: str, name: str, version: str = "latest", prefix: str = "datasets",
                    client=None) -> str:
    """VERSION itself if complete, or the newest complete version for "latest"."""
    check_names(name, version)
    client = client or s3_client()
    if version != "latest":
        try:
            read_manifest_bytes(client, bucket, prefix, name, version)
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
                                f"complete version in {uri(bucket, prefix)}/{name}/{there}")


# --- downloading and verifying ----------------------------------------------------------------

def download_files(bucket: str, name: str, version: str, to_dir: Path, *, prefix: str,
                   entries_field: str = "files", also: tuple[str, ...] = (), client=None) -> Path:
    """Download a complete version into TO_DIR/NAME/VERSION, every file's sha256 verified.

    Files land in a temporary folder inside to_dir that is renamed into place only when all
    of them match the manifest, so a failure leaves nothing behind. `also`: more manifest keys
    whose files come too when the manifest has them (a dataset's card, under `files`).
    """
    check_names(name, version)
    client = client or s3_client()
    version = resolve_version(bucket, name, version, prefix, client)
    raw = read_manifest_bytes(client, bucket, prefix, name, version)
    manifest, folder = json.loads(raw), version_prefix(prefix, name, version)
    entries = [entry for field in (entries_field, *(f for f in also if manifest.get(f)))
               for entry in checked_entries(manifest, field, bucket, folder)]
    to_dir = Path(to_dir)
    to_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=to_dir))
    try:
        run_all(lambda entry: _download_verified(client, bucket, entry, tmp, folder), entries)
        (tmp / MANIFEST).write_bytes(raw)
        return _install(tmp, to_dir / name / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checked_entries(manifest: dict, field: str, bucket: str, folder: str) -> list[dict]:
    """The manifest's file entries, refusing any key that would land outside the version folder."""
    entries = manifest.get(field)
    if not isinstance(entries, list) or not entries:
        raise IntegrityError(f"{uri(bucket, folder)}/{MANIFEST} lists no {field}")
    seen = set()
    for entry in entries:
        key = entry.get("key") if isinstance(entry, dict) else None
        base = key[len(folder) + 1:] if isinstance(key, str) and key.startswith(folder + "/") else ""
        sub, slash, file = base.rpartition("/")
        if (slash and sub != EXTRA_FOLDER) or not NAME_RE.match(file) or ".." in file or base in seen:
            raise IntegrityError(f"{uri(bucket, folder)}/{MANIFEST}: refusing entry {key!r}: "
                                 f"not a distinct file directly inside {folder}/ or its {EXTRA_FOLDER}/")
        if not isinstance(entry.get("bytes"), int) or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))):
            raise IntegrityError(f"{uri(bucket, folder)}/{MANIFEST}: entry {key!r} lacks bytes or sha256")
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
        data = get_bytes(client, bucket, entry["key"])
    _check_digest(bucket, entry, hashlib.sha256(data).hexdigest(), len(data))
    return data


@contextlib.contextmanager
def _listed_object(bucket: str, key: str):
    try:
        yield
    except ClientError as e:
        if is_missing(e):
            raise IntegrityError(f"{uri(bucket, key)} is listed in the manifest but missing") from e
        raise


def _check_digest(bucket: str, entry: dict, sha256: str, size: int) -> None:
    if (sha256, size) != (entry["sha256"], entry["bytes"]):
        raise IntegrityError(f"{uri(bucket, entry['key'])} does not match its manifest: got {size} bytes, "
                             f"sha256 {sha256}; expected {entry['bytes']} bytes, sha256 {entry['sha256']}")


def published_entries(bucket: str, name: str, version: str = "latest", prefix: str = "datasets",
                      entries_field: str = "shards", client=None) -> tuple[dict, list[dict]]:
    """A complete version's manifest ("latest" resolved) and its file entries, every key checked."""
    client = client or s3_client()
    version = resolve_version(bucket, name, version, prefix, client)
    manifest = json.loads(read_manifest_bytes(client, bucket, prefix, name, version))
    return manifest, checked_entries(manifest, entries_field, bucket, version_prefix(prefix, name, version))


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


def fetch_model(bucket: str, name: str, version: str, cache_dir: Path, prefix: str = MODELS_PREFIX,
                client=None) -> Path:
    """A published model version ("latest" allowed) in CACHE_DIR/NAME/VERSION, every file verified.

    A cached copy is reused only while its manifest is byte-identical to the published one
    and each of its files still matches its sha256.
    """
    client = client or s3_client()
    version = resolve_version(bucket, name, version, prefix, client)
    cached = Path(cache_dir) / name / version
    raw = read_manifest_bytes(client, bucket, prefix, name, version)
    entries = checked_entries(json.loads(raw), "files", bucket, version_prefix(prefix, name, version))
    if _cache_matches(cached, raw, entries):
        return cached
    return download_files(bucket, name, version, cache_dir, prefix=prefix, client=client)


def _cache_matches(folder: Path, manifest: bytes, entries: list[dict]) -> bool:
    try:
        return (folder / MANIFEST).read_bytes() == manifest and all(
            file_digest(folder / e["key"].rsplit("/", 1)[1]) == (e["sha256"], e["bytes"]) for e in entries)
    except OSError:  # not cached, or a file of it is gone
        return False
