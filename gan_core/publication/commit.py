"""The commit of a version: one conditional PUT of _commit.json fixes its files, and any run rolls it forward.

Each publication uploads into its own VERSION/_staging/TOKEN/ ('_': Parquet readers skip it), then tries
to write VERSION/_commit.json with If-None-Match: the one run that succeeds decides what the version
holds. Rolling the record forward (deleting visible files it does not list, copying the staged files into
place, writing _manifest.json last, sweeping _staging/) writes the same bytes whoever does it, so a run that
lost the race, or a rerun after a crash, finishes the winner's commit instead of fighting it. A writer
whose lease was taken over therefore never writes a visible key: it either lost the commit (its staging is
swept) or won it before the taker (and the taker publishes the winner's files).
"""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from gan_core.publication.s3 import (
    EXTRA_FOLDER,
    MANIFEST,
    StorageError,
    VersionExistsError,
    delete_keys,
    existing_bytes,
    is_missing,
    put_if,
    run_all,
    sizes_under,
    transfer_config,
    uri,
)

COMMIT = "_commit.json"
STAGING = "_staging"


def staging_prefix(folder: str, token: str) -> str:
    return f"{folder}/{STAGING}/{token}/"


def staged_key(folder: str, token: str, final_key: str) -> str:
    """Where TOKEN's run uploads the file that the version will hold at FINAL_KEY."""
    return staging_prefix(folder, token) + final_key[len(folder) + 1:]


def commit(client, bucket: str, folder: str, token: str, entries: list[dict], manifest: bytes) -> bytes:
    """Commit TOKEN's staged ENTRIES with MANIFEST unless another run committed first; roll the commit
    that won forward and return the bytes of the manifest the version now has."""
    key = f"{folder}/{COMMIT}"
    ours = json.dumps({"token": token, "entries": entries, "manifest": manifest.decode()}).encode()
    if put_if(bucket, key, ours, client, IfNoneMatch="*"):
        return roll_forward(client, bucket, folder, json.loads(ours))
    record = existing_bytes(client, bucket, key)  # the winner's (or ours: a retried request's 412)
    if record is None or json.loads(record)["token"] != token:
        sweep(client, bucket, staging_prefix(folder, token))  # we lost: our staged files will never be used
    if record is None:  # the winner finished and removed its record in between
        published = existing_bytes(client, bucket, f"{folder}/{MANIFEST}")
        if published is None:
            raise StorageError(f"{uri(bucket, key)} came and went without a manifest: retry")
        return published
    return roll_forward(client, bucket, folder, json.loads(record))


def roll_forward(client, bucket: str, folder: str, record: dict) -> bytes:
    """Make the version exactly what RECORD lists, manifest last; idempotent, whoever runs it."""
    found = sizes_under(client, bucket, folder + "/")
    manifest_key = f"{folder}/{MANIFEST}"
    if manifest_key not in found:
        finals = {e["key"] for e in record["entries"]}
        # Only files of this commit may be visible: leftovers of an older ganforge or of a crashed run go.
        _delete_all(client, bucket, [k for k in found if _visible(folder, k) and k not in finals])
        if not _copy_staged(client, bucket, folder, record):
            return _manifest_or_gone(client, bucket, folder)
        _verify_sizes(client, bucket, folder, record["entries"])
        _put_manifest(client, bucket, manifest_key, record["manifest"].encode())
    published = existing_bytes(client, bucket, manifest_key)
    # The record has done its work; a record written after this point finds the manifest and stops here.
    client.delete_object(Bucket=bucket, Key=f"{folder}/{COMMIT}")
    sweep(client, bucket, f"{folder}/{STAGING}/")
    return published


def sweep(client, bucket: str, prefix: str) -> None:
    """Delete every object and abort every multipart upload under PREFIX (a staging folder)."""
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    _delete_all(client, bucket, list(sizes_under(client, bucket, prefix)))


def _visible(folder: str, key: str) -> bool:
    """A key a folder reader (pandas) or a card reader would take for part of the version."""
    relative = key[len(folder) + 1:]
    return not relative.startswith("_") or relative.startswith(EXTRA_FOLDER + "/")


def _delete_all(client, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):  # one request deletes at most 1,000
        delete_keys(client, bucket, keys[start:start + 1000])


def _copy_staged(client, bucket: str, folder: str, record: dict) -> bool:
    """Copy each staged file into place (server-side); False when a staged file is gone."""
    def copy(entry: dict) -> bool:
        source = staged_key(folder, record["token"], entry["key"])
        try:
            client.copy({"Bucket": bucket, "Key": source}, bucket, entry["key"], Config=transfer_config())
        except ClientError as e:
            if is_missing(e):
                return False
            raise
        return True

    return all(run_all(copy, record["entries"]))


def _manifest_or_gone(client, bucket: str, folder: str) -> bytes:
    # Staged files are swept only after the manifest is written: another run finished this commit.
    published = existing_bytes(client, bucket, f"{folder}/{MANIFEST}")
    if published is None:
        raise StorageError(f"{uri(bucket, folder)}/{COMMIT} names staged files that are gone: delete "
                           f"{uri(bucket, folder)}/ and publish again")
    return published


def _verify_sizes(client, bucket: str, folder: str, entries: list[dict]) -> None:
    # Each request was checksummed in transit; this catches an object replaced or removed meanwhile.
    sizes = sizes_under(client, bucket, folder + "/")
    for entry in entries:
        if sizes.get(entry["key"]) != entry["bytes"]:
            raise StorageError(f"{uri(bucket, entry['key'])} holds {sizes.get(entry['key'])} bytes after "
                               f"upload, expected {entry['bytes']}")


def _put_manifest(client, bucket: str, key: str, body: bytes) -> None:
    # 412 for a retried request whose first attempt succeeded, or another run rolling the same commit forward.
    if not put_if(bucket, key, body, client, IfNoneMatch="*") and existing_bytes(client, bucket, key) != body:
        raise VersionExistsError(f"{uri(bucket, key)} was written by another publisher first")
