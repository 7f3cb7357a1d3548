"""The audit witness: the newest signed checkpoint this archive wrote or verified, kept OUTSIDE it.

A checkpoint in the store proves the events before it — until an insider deletes the checkpoint together
with the events. The witness is a copy of checkpoints kept where the archive's own credential cannot
delete them (``ARCHIVE_AUDIT_WITNESS``):

* ``file:///other/disk/witness.json`` — one JSON file on another disk or a mount of another machine,
  replaced atomically and only ever by a larger checkpoint (a file lock orders concurrent writers);
* ``s3://bucket/prefix`` — a bucket other than the store's, under its own credential
  (``ARCHIVE_AUDIT_WITNESS_S3_*``): each checkpoint is a write-once object
  ``<prefix>/checkpoints/<size:012d>.json`` (``If-None-Match``), so the witness only grows. Give that
  credential ``s3:PutObject`` and ``s3:GetObject``/``s3:ListBucket`` and nothing else, on a bucket with
  Object Lock: then even someone who copies it from a worker cannot remove or overwrite an entry.

Who writes it: the audit log, for every checkpoint it writes automatically (``AuditLog``), and
``archive audit verify``, for the newest checkpoint it verified. Who reads it: the verifier, which
requires the log to still hold every event the witness's newest checkpoint covers, with the same root,
and that checkpoint itself (:mod:`archive.audit.verify`).

Without ``ARCHIVE_AUDIT_WITNESS`` the witness is ``$ARCHIVE_HOME/audit-witness.json``: inside the archive
home, where whoever can delete the checkpoints can delete it too. ``archive audit verify`` says so.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from archive.errors import StorageError

WITNESS_FORMAT = "archive-audit-witness/1"


class WitnessUnavailable(StorageError):
    """Raised when the witness cannot be read or written (unreachable, unreadable, malformed)."""

    code = "witness_unavailable"


class Witness(Protocol):
    """Where checkpoints are kept outside the archive."""

    where: str  # for messages: the URL, never a credential

    def newest(self) -> dict | None:
        """The newest checkpoint witnessed (a signed checkpoint document; legacy witnesses hold only
        ``size`` and ``root``), or None when nothing was witnessed yet. Raises WitnessUnavailable."""
        ...

    def publish(self, checkpoint: dict) -> None:
        """Witness ``checkpoint``; never replaces a larger one. Raises WitnessUnavailable."""
        ...


def _entry(checkpoint: dict) -> bytes:
    return json.dumps({"format": WITNESS_FORMAT, "checkpoint": checkpoint,
                       "witnessed_at": datetime.now(UTC).isoformat(timespec="seconds")},
                      sort_keys=True).encode()


def _checkpoint_of(raw: bytes, where: str) -> dict:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise WitnessUnavailable(f"the audit witness {where} is not valid JSON: {e}") from e
    if isinstance(doc, dict) and doc.get("format") == WITNESS_FORMAT and isinstance(doc.get("checkpoint"), dict):
        doc = doc["checkpoint"]
    if not (isinstance(doc, dict) and isinstance(doc.get("size"), int) and isinstance(doc.get("root"), str)):
        raise WitnessUnavailable(f"the audit witness {where} holds no checkpoint (size and root)")
    return doc


class FileWitness:
    """The witness as one JSON file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = f"file://{self.path}"

    def newest(self) -> dict | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise WitnessUnavailable(f"the audit witness {self.where} cannot be read: {e}") from e
        return _checkpoint_of(raw, self.where)

    def publish(self, checkpoint: dict) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                current = self.newest()
                if current is not None and current["size"] >= checkpoint["size"]:
                    return  # the witness only moves forward
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    f.write(_entry(checkpoint))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            finally:
                os.close(fd)
        except OSError as e:
            raise WitnessUnavailable(f"the audit witness {self.where} cannot be written: {e}") from e


class S3Witness:
    """The witness as write-once objects in a bucket of its own (see the module docstring)."""

    def __init__(self, client, bucket: str, prefix: str = "") -> None:
        self._client = client  # a client, or a function making one (on first use: most commands never ask)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.where = f"s3://{bucket}/{self.prefix}"

    @property
    def client(self):
        if callable(self._client) and not hasattr(self._client, "put_object"):
            self._client = self._client()
        return self._client

    def _error(self, e: Exception, what: str) -> WitnessUnavailable:
        from archive.store.s3 import _translate

        err = _translate(e, what)
        return WitnessUnavailable(f"the audit witness {self.where}: {err}", **getattr(err, "details", {}))

    def newest(self) -> dict | None:
        last = None
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=f"{self.prefix}checkpoints/"):
                for item in page.get("Contents", []):
                    if item["Key"].endswith(".json"):
                        last = item["Key"]  # keys are zero-padded sizes: the last listed is the largest
            if last is None:
                return None
            raw = self.client.get_object(Bucket=self.bucket, Key=last)["Body"].read()
        except Exception as e:
            raise self._error(e, "read") from e
        return _checkpoint_of(raw, f"{self.where} ({last})")

    def publish(self, checkpoint: dict) -> None:
        key = f"{self.prefix}checkpoints/{checkpoint['size']:012d}.json"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=io.BytesIO(_entry(checkpoint)),
                                   IfNoneMatch="*")
        except Exception as e:
            err = self._error(e, "write")
            if err.details.get("http_status") == 412 or err.details.get("vendor_code") == "PreconditionFailed":
                return  # witnessed before (write-once)
            raise err from e


def open_witness(settings) -> Witness:
    """The witness ``ARCHIVE_AUDIT_WITNESS`` names (settings validated it). Raises ConfigError."""
    url = urlparse(settings.audit_witness_url)
    if url.scheme == "s3":
        def client():
            import boto3
            from botocore.config import Config

            return boto3.client(
                "s3", endpoint_url=settings.audit_witness_s3_endpoint_url,
                region_name=settings.audit_witness_s3_region,
                aws_access_key_id=settings.audit_witness_s3_access_key_id,
                aws_secret_access_key=settings.audit_witness_s3_secret_access_key,
                config=Config(retries={"mode": "standard", "max_attempts": 3},
                              s3={"addressing_style": "path"} if settings.audit_witness_s3_endpoint_url else {}))

        return S3Witness(client, url.netloc, url.path)
    return FileWitness(Path(url.path))
