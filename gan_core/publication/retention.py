"""Retention: delete a version (manifest first), keep the newest versions of a name."""

from __future__ import annotations

from gan_core.publication.read import list_versions
from gan_core.publication.s3 import MANIFEST, StorageError, delete_keys, s3_client, version_prefix


def delete_version(bucket: str, name: str, version: str, prefix: str = "datasets", client=None) -> int:
    """Delete a version completely, manifest first so that readers stop seeing it; return objects deleted."""
    client = client or s3_client()
    folder = version_prefix(prefix, name, version)
    client.delete_object(Bucket=bucket, Key=f"{folder}/{MANIFEST}")
    deleted = 1
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{folder}/"):
        keys = [o["Key"] for o in page.get("Contents", [])]
        delete_keys(client, bucket, keys)  # a page holds at most 1,000 keys: one request
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
