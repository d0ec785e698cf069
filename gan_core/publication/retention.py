"""Retention: delete a version (manifest first), keep the newest versions of a name, and pins that it never deletes.

A pin is a small object, PREFIX/NAME/_pins/VERSION.json ('_': never a version name, never read by Parquet
readers). Pinning and deleting each write first and check second: `pin` writes the pin, then checks that the
version is still complete; retention deletes the manifest, then checks for a pin (or, for models, the
production alias) and puts the manifest back if one appeared. Whichever order they run in, a pinned or
production version keeps its manifest and its files.
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import datetime, timezone
from typing import Callable

from gan_core.publication.read import list_versions, read_manifest_bytes
from gan_core.publication.s3 import (
    MANIFEST,
    StorageError,
    VersionNotFoundError,
    delete_keys,
    existing_bytes,
    put_if,
    s3_client,
    validate_name,
    version_prefix,
)

PINS = "_pins"


def pin_key(prefix: str, name: str, version: str) -> str:
    return f"{prefix}/{validate_name('name', name)}/{PINS}/{validate_name('version', version)}.json"


def pin(bucket: str, name: str, version: str, prefix: str = "datasets", reason: str = "", client=None) -> dict:
    """Keep complete VERSION of NAME from retention and `delete` until it is unpinned; return the pin."""
    client = client or s3_client()
    read_manifest_bytes(client, bucket, prefix, name, version)  # VersionNotFoundError unless complete
    body = {"name": name, "version": version, "reason": reason, "by": f"{getpass.getuser()}@{socket.gethostname()}",
            "pinned_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    key = pin_key(prefix, name, version)
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(body, indent=2).encode(), ContentType="application/json")
    if existing_bytes(client, bucket, f"{version_prefix(prefix, name, version)}/{MANIFEST}") is None:
        client.delete_object(Bucket=bucket, Key=key)  # retention deleted it in between: nothing left to keep
        raise VersionNotFoundError(f"{prefix}/{name}/{version} was deleted while being pinned")
    return body


def unpin(bucket: str, name: str, version: str, prefix: str = "datasets", client=None) -> bool:
    """Let retention and `delete` have VERSION again; False when it was not pinned."""
    client = client or s3_client()
    key = pin_key(prefix, name, version)
    if existing_bytes(client, bucket, key) is None:
        return False
    client.delete_object(Bucket=bucket, Key=key)
    return True


def pinned_versions(bucket: str, name: str, prefix: str = "datasets", client=None) -> dict[str, dict]:
    """The pins of NAME's versions, by version."""
    client = client or s3_client()
    folder = f"{prefix}/{validate_name('name', name)}/{PINS}/"
    pins = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
        for item in page.get("Contents", []):
            version = item["Key"][len(folder):].removesuffix(".json")
            pins[version] = json.loads(existing_bytes(client, bucket, item["Key"]) or b"{}")
    return pins


def is_pinned(bucket: str, name: str, version: str, prefix: str = "datasets", client=None) -> bool:
    return existing_bytes(client or s3_client(), bucket, pin_key(prefix, name, version)) is not None


def delete_version(bucket: str, name: str, version: str, prefix: str = "datasets", client=None) -> int:
    """Delete a version completely, manifest first so that readers stop seeing it; return objects deleted."""
    client = client or s3_client()
    folder = version_prefix(prefix, name, version)
    client.delete_object(Bucket=bucket, Key=f"{folder}/{MANIFEST}")
    return 1 + _delete_folder(client, bucket, folder)


def delete_unpinned(bucket: str, name: str, version: str, prefix: str = "datasets",
                    keep: Callable[[str], bool] | None = None, client=None) -> int:
    """Delete complete VERSION unless it is pinned (or keep(version) says so); return objects deleted."""
    client = client or s3_client()
    read_manifest_bytes(client, bucket, prefix, name, version)  # VersionNotFoundError unless complete
    if not _delete_unless_kept(client, bucket, prefix, name, version, keep):
        hint = "ganforge datasets unpin NAME VERSION" if prefix == "datasets" else "unpin it"
        raise StorageError(f"{prefix}/{name}/{version} is pinned or in use: `{hint}` first")
    return 1 + _delete_folder(client, bucket, version_prefix(prefix, name, version))


def apply_retention(bucket: str, name: str, keep: int, prefix: str = "datasets", client=None,
                    protect: set[str] | frozenset[str] = frozenset(),
                    still_protected: Callable[[str], bool] | None = None) -> list[str]:
    """Keep the newest KEEP complete versions of NAME, the pinned ones and those in PROTECT; delete the
    others and return them. still_protected(version), asked again right before each deletion, keeps a
    version that became protected meanwhile (a promotion).

    Folders without a manifest are left alone: they may be publications still in flight.
    """
    if keep < 1:
        raise StorageError(f"retention must keep at least 1 version (got {keep})")
    client = client or s3_client()
    older = [m["version"] for m in list_versions(bucket, name, prefix, client)][:-keep]
    protect = set(protect) | set(pinned_versions(bucket, name, prefix, client))
    deleted = []
    for version in (v for v in older if v not in protect):
        if _delete_unless_kept(client, bucket, prefix, name, version, still_protected):
            _delete_folder(client, bucket, version_prefix(prefix, name, version))
            deleted.append(version)
    return deleted


def _delete_unless_kept(client, bucket: str, prefix: str, name: str, version: str,
                        keep: Callable[[str], bool] | None) -> bool:
    """Delete VERSION's manifest, then look for a pin or keep(version): put it back if one is there."""
    key = f"{version_prefix(prefix, name, version)}/{MANIFEST}"
    manifest = existing_bytes(client, bucket, key)
    if manifest is None:
        return True  # deleted meanwhile: its files may go
    client.delete_object(Bucket=bucket, Key=key)
    if is_pinned(bucket, name, version, prefix, client) or (keep is not None and keep(version)):
        put_if(bucket, key, manifest, client, IfNoneMatch="*")
        return False
    return True


def _delete_folder(client, bucket: str, folder: str) -> int:
    deleted = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{folder}/"):
        keys = [o["Key"] for o in page.get("Contents", [])]
        delete_keys(client, bucket, keys)  # a page holds at most 1,000 keys: one request
        deleted += len(keys)
    return deleted

