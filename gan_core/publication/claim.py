"""A publication's claim on its version folder: one run publishes a version at a time, under a lease it renews."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from botocore.exceptions import ClientError

from gan_core.publication.s3 import StorageError, VersionBusyError, existing_bytes, http_status, uri

log = logging.getLogger(__name__)
CLAIM = "_publishing.json"  # held while a version is being published; '_': Parquet readers skip it


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
class Claim:
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
            return json.loads(existing_bytes(self.client, self.bucket, self.key) or b"{}")
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
def claimed(client, bucket: str, folder: str, entries: list[dict]):
    """Hold FOLDER for this publication: another one of different files is refused before it writes.

    A claim on the very same files (a rerun after a crash, a retried task) is taken over:
    both would write identical objects; so is one past its lease (`expires_at`), whose run
    stopped renewing it. A claim is renewed while held and released on the way out, success or not.
    """
    content = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    claim = Claim(client, bucket, folder, secrets.token_hex(8), content, claim_lease_seconds())
    held = _put_claim(claim)
    if held == {}:  # released between our write and our read
        held = _put_claim(claim)
    if held is not None:
        if held.get("content_sha256") != content and not _expired(held):
            raise VersionBusyError(
                f"{uri(bucket, folder)}/ is being published by another run (pid {held.get('pid')} on "
                f"{held.get('host')} since {held.get('since')}, lease until {held.get('expires_at')}); "
                f"if that run died, retry after its lease or delete {uri(bucket, claim.key)}")
        client.put_object(Bucket=bucket, Key=claim.key, Body=claim.body())
        if not claim.is_ours():  # another run took the same stale claim over at the same moment
            raise VersionBusyError(f"{uri(bucket, folder)}/ was just claimed by another run")
    stop = threading.Event()
    renewer = threading.Thread(target=_keep_renewing, args=(claim, stop), daemon=True)
    renewer.start()
    try:
        yield claim
    finally:
        stop.set()
        renewer.join()
        _release(claim)


def _keep_renewing(claim: Claim, stop: threading.Event) -> None:
    # Three renewals per lease: a run that is alive never looks stale, one that died stops renewing.
    while not stop.wait(claim.lease / 3):
        try:
            if not claim.renew():
                return
        except Exception as e:  # the next renewal, or the manifest write, will tell
            log.warning("renewing the claim on %s failed: %s", uri(claim.bucket, claim.key), e)


def _put_claim(claim: Claim) -> dict | None:
    """None when the claim is now ours, else the claim that another run holds ({} if just released)."""
    try:
        claim.client.put_object(Bucket=claim.bucket, Key=claim.key, Body=claim.body(), IfNoneMatch="*")
    except ClientError as e:
        if http_status(e) not in (409, 412):
            raise
        return claim.held()
    return None


def _release(claim: Claim) -> None:
    # Cleanup on the way out must never hide the error being raised.
    try:
        if claim.is_ours():
            claim.client.delete_object(Bucket=claim.bucket, Key=claim.key)
    except Exception as e:
        log.warning("releasing the claim on %s failed: %s", uri(claim.bucket, claim.key), e)
