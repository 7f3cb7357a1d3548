"""S3 object store (boto3) on a bucket with S3 Object Lock: MinIO, AWS S3, SeaweedFS, Ceph RGW.

* Every object is written once: ``If-None-Match: *`` on PutObject and CompleteMultipartUpload makes the
  store itself refuse a second write under the same key (HTTP 412 → ObjectExists).
* Retention: ``ObjectLockMode`` (COMPLIANCE by default, or GOVERNANCE) and ``ObjectLockRetainUntilDate``
  per object, legal holds, extend-only retention. The bucket must have Object Lock enabled; the store
  checks that when it is built and refuses to run otherwise (SEC 17a-4(f)(2)(i): non-rewriteable,
  non-erasable storage is the bucket's job, not only ours).
* Uploads larger than one part go multipart: parts are read from the stream one at a time, uploaded by a
  small thread pool (bounded: at most ``concurrency`` parts in memory), each with its SHA-256 checksum
  (``x-amz-checksum-sha256``) that the store verifies; after completion the composite checksum the store
  reports is compared with ours. Any failure aborts the upload: nothing partial becomes visible.
  (boto3's transfer manager cannot send ``If-None-Match``, so the multipart calls are driven here.)
* Retain-until dates are rounded up to the whole second: S3 stores seconds, and rounding down would
  release an object early.
* Vendor errors are translated in ``_translate`` keeping the request id and HTTP status; their text
  quotes the endpoint URL, so any credentials in it are redacted.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from archive.errors import (ArchiveError, IntegrityError, ObjectExists, ObjectLocked, ObjectNotFound,
                            RetentionError, StorageError, StoreMisconfigured, StoreUnavailable)
from archive.store.base import (LockMode, ObjectInfo, PutRequest, check_deletable, check_extension, check_key,
                                check_new_retention, check_retain_until, put_each)
from archive.streams import fill, filler, remaining_size
from archive.text import redact

_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_TRANSIENT = {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
              "503", "500", "BadDigest", "XAmzContentSHA256Mismatch"}


def _translate(e: Exception, op: str, key: str | None = None, *, locked_hint: bool = False) -> ArchiveError:
    """Map a botocore error to the archive's error tree, keeping request id and status."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        meta = e.response.get("ResponseMetadata", {})
        code, status = str(err.get("Code", "")), meta.get("HTTPStatusCode")
        details = {"key": key, "vendor_code": code, "http_status": status, "request_id": meta.get("RequestId")}
        where = f"S3 {op}" + (f" {key!r}" if key else "")
        message = redact(f"{where}: {code} {err.get('Message', '')}".strip())
        if code in _NOT_FOUND or (status == 404 and code not in ("NoSuchBucket",)):
            return ObjectNotFound(f"no object {key!r}", **details)
        if code == "NoSuchBucket":
            return StoreMisconfigured(f"{where}: the bucket does not exist", **details)
        if code == "PreconditionFailed" or status == 412:
            return ObjectExists(f"object {key!r} already exists; sealed objects are written once", **details)
        if code == "AccessDenied" and locked_hint:
            return ObjectLocked(f"{where}: refused by the store's Object Lock ({code})", **details)
        if code in _TRANSIENT or (status is not None and status >= 500):
            return StoreUnavailable(message, **details)
        return StorageError(message, **details)
    if isinstance(e, BotoCoreError):  # its text quotes the endpoint URL, which may carry credentials
        return StoreUnavailable(f"S3 {op}" + (f" {key!r}" if key else "") + f": {redact(e)}", key=key)
    if isinstance(e, ArchiveError):
        return e
    return StorageError(f"S3 {op}: {type(e).__name__}: {redact(e)}", key=key)


def _ceil_second(when: datetime) -> datetime:
    return when.replace(microsecond=0) + timedelta(seconds=1) if when.microsecond else when


def _read_part(read, n: int) -> bytearray:
    """Up to ``n`` bytes in one new buffer, short only at the end of the stream (a sealer encrypts
    straight into it)."""
    buf = bytearray(n)
    with memoryview(buf) as view:
        got = fill(read, view)
    if got < n:
        del buf[got:]
    return buf


def _checksum_signs_the_body(request, **_) -> None:
    """Sign a PutObject or UploadPart that carries the body's SHA-256 as ``x-amz-checksum-sha256`` without
    hashing the body a second time for the signature (``UNSIGNED-PAYLOAD``), over http too — what
    botocore does by itself over https. The checksum header is signed and the server refuses a body that
    does not match it, so the signature still binds the body's content; the client saves a SHA-256 pass
    over every byte it uploads (about a millisecond of CPU per MB). A botocore that no longer passes its
    config this way leaves the body signed as before."""
    config = request.context.get("client_config")
    if config is None or "x-amz-checksum-sha256" not in request.headers:
        return
    derived = _UNSIGNED_BODY.get(id(config))
    if derived is None or derived[0] is not config:
        from botocore.config import Config

        s3 = dict(getattr(config, "s3", None) or {})
        derived = _UNSIGNED_BODY[id(config)] = (config, config.merge(Config(s3={**s3, "payload_signing_enabled": False})))
    request.context["client_config"] = derived[1]


_UNSIGNED_BODY: dict[int, tuple] = {}  # a client's config → the same with the body unsigned (made once)


def _b64sha256(data: bytes | bytearray) -> tuple[bytes, str]:
    digest = hashlib.sha256(data).digest()
    return digest, base64.b64encode(digest).decode()


class S3Store:
    """Objects in an S3 bucket with Object Lock, under an optional key prefix."""

    remote = True  # every request is a round trip: callers group them, and skip the ones they can

    def __init__(self, bucket: str, prefix: str = "", *, client=None, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, part_size: int = 16 * 1024 * 1024,
                 concurrency: int = 4, check_lock: bool = True) -> None:
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=Config(retries={"mode": "standard", "max_attempts": 5},
                              s3={"addressing_style": "path"} if endpoint_url else {},
                              max_pool_connections=max(10, concurrency * 4)))
        self.client = client
        for operation in ("PutObject", "UploadPart"):
            client.meta.events.register(f"before-sign.s3.{operation}", _checksum_signs_the_body,
                                        unique_id=f"archive-checksum-signs-{operation}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.concurrency = concurrency
        self._threads: ThreadPoolExecutor | None = None
        self._threads_lock = threading.Lock()
        if check_lock:
            self.check_object_lock()

    def check_object_lock(self) -> None:
        """Raise StoreMisconfigured unless the bucket exists with Object Lock enabled."""
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except Exception as e:
            err = _translate(e, "GetObjectLockConfiguration")
            if getattr(err, "details", {}).get("vendor_code") == "ObjectLockConfigurationNotFoundError":
                raise StoreMisconfigured(
                    f"bucket {self.bucket!r} has no S3 Object Lock; sealed evidence needs a bucket created "
                    "with Object Lock enabled (archive init --create-bucket does that)",
                    bucket=self.bucket) from e
            raise err from e
        if conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise StoreMisconfigured(f"bucket {self.bucket!r} does not have Object Lock enabled",
                                     bucket=self.bucket)

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    # --- writing -------------------------------------------------------------------------------------

    def put(self, key: str, source: BinaryIO, *, retain_until: datetime | None = None,
            mode: LockMode = LockMode.COMPLIANCE, legal_hold: bool = False) -> ObjectInfo:
        s3key = self._k(key)
        mode = LockMode.parse(mode)
        retain_until = check_new_retention(key, retain_until)
        lock: dict = {"ObjectLockLegalHoldStatus": "ON" if legal_hold else "OFF"}
        if retain_until is not None:
            lock.update(ObjectLockMode=mode.value, ObjectLockRetainUntilDate=_ceil_second(retain_until))
        read = filler(source)
        # Most objects (manifests, receipts, audit batches, chats, a call's few megabytes) are smaller
        # than a part: read what the source says it holds (and one byte more, to see its end), or a
        # little first when it cannot say, rather than allocate and zero a whole part for each.
        expected = remaining_size(source)
        probe = min(self.part_size, 256 * 1024 if expected is None else expected + 1)
        first = _read_part(read, probe)
        if len(first) == probe < self.part_size:
            first += _read_part(read, self.part_size - probe)
        if len(first) < self.part_size:
            _, checksum = _b64sha256(first)
            try:
                out = self.client.put_object(Bucket=self.bucket, Key=s3key, Body=first, IfNoneMatch="*",
                                             ChecksumSHA256=checksum, **lock)
            except Exception as e:
                raise _translate(e, "PutObject", key) from e
            if out.get("ChecksumSHA256") not in (None, checksum):
                raise IntegrityError(f"S3 stored {key!r} with checksum {out['ChecksumSHA256']}, sent {checksum}",
                                     object_key=key, segment="upload")
            size = len(first)
            version = out.get("VersionId")
            verified = out.get("ChecksumSHA256") == checksum
        else:
            size, version, verified = self._multipart(key, s3key, first, read, lock)
        return ObjectInfo(key=key, size=size, retain_until=lock.get("ObjectLockRetainUntilDate"),
                          mode=mode if retain_until else None, legal_hold=legal_hold,
                          created=datetime.now(UTC), version_id=version, verified=verified)

    def put_many(self, requests: Sequence[PutRequest]) -> list[ObjectInfo | ArchiveError]:
        """The PutObjects of a group at once (each is durable when S3 answers, so there is nothing to
        commit together): a group costs about one round trip, not one per object. Up to
        ``4 × concurrency`` requests are in flight; each is one connection of the client's pool."""
        if len(requests) <= 1:
            return put_each(self, requests)
        return [r for chunk in self._pool().map(lambda r: put_each(self, [r]), requests) for r in chunk]

    def _pool(self) -> ThreadPoolExecutor:
        """The threads that send a group's requests, kept: starting threads costs a GIL hand-off each,
        milliseconds when other threads are busy."""
        if self._threads is None:
            with self._threads_lock:
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(4 * self.concurrency, thread_name_prefix="s3")
        return self._threads

    def _multipart(self, key: str, s3key: str, first: bytearray, read, lock: dict) -> tuple[int, str | None, bool]:
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=s3key,
                                                            ChecksumAlgorithm="SHA256", **lock)["UploadId"]
        except Exception as e:
            raise _translate(e, "CreateMultipartUpload", key) from e
        slots = threading.BoundedSemaphore(self.concurrency)
        futures: list[Future] = []

        def upload(number: int, body: bytes) -> dict:
            try:
                digest, checksum = _b64sha256(body)
                out = self.client.upload_part(Bucket=self.bucket, Key=s3key, UploadId=upload_id,
                                              PartNumber=number, Body=body, ChecksumSHA256=checksum)
                return {"PartNumber": number, "ETag": out["ETag"], "ChecksumSHA256": checksum, "_digest": digest}
            finally:
                slots.release()

        size = 0
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part") as pool:
                body, number = first, 1
                while body:
                    slots.acquire()
                    if any(f.done() and f.exception() for f in futures):
                        slots.release()
                        break
                    futures.append(pool.submit(upload, number, body))
                    size += len(body)
                    number += 1
                    if number > 10000:
                        raise StorageError(f"{key!r} needs more than 10000 parts; raise ARCHIVE_S3_PART_SIZE", key=key)
                    body = _read_part(read, self.part_size)
                parts = [f.result() for f in futures]
            expected = base64.b64encode(hashlib.sha256(b"".join(p.pop("_digest") for p in parts)).digest()).decode()
            out = self.client.complete_multipart_upload(Bucket=self.bucket, Key=s3key, UploadId=upload_id,
                                                        MultipartUpload={"Parts": parts}, IfNoneMatch="*")
        except BaseException as e:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=s3key, UploadId=upload_id)
            except Exception:  # the original error matters more; lifecycle rules clean up the rest
                pass
            if isinstance(e, Exception):
                raise _translate(e, "multipart upload", key) from e
            raise
        reported = out.get("ChecksumSHA256")
        if reported is not None and reported.split("-")[0] != expected:
            raise IntegrityError(f"S3 reports checksum {reported} for {key!r}, expected {expected}-{len(parts)}",
                                 object_key=key, segment="upload")
        return size, out.get("VersionId"), reported is not None

    # --- reading -------------------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
        except Exception as e:
            raise _translate(e, "GetObject", key) from e

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        if length == 0:
            return b""
        try:
            out = self.client.get_object(Bucket=self.bucket, Key=self._k(key),
                                         Range=f"bytes={offset}-{offset + length - 1}")
            return out["Body"].read()
        except Exception as e:
            from botocore.exceptions import ClientError

            if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise _translate(e, "GetObject(range)", key) from e

    def head(self, key: str) -> ObjectInfo:
        try:
            out = self.client.head_object(Bucket=self.bucket, Key=self._k(key), ChecksumMode="ENABLED")
        except Exception as e:
            raise _translate(e, "HeadObject", key) from e
        until = out.get("ObjectLockRetainUntilDate")
        return ObjectInfo(key=key, size=int(out["ContentLength"]),
                          retain_until=until.astimezone(UTC) if until else None,
                          mode=LockMode(out["ObjectLockMode"]) if out.get("ObjectLockMode") else None,
                          legal_hold=out.get("ObjectLockLegalHoldStatus") == "ON",
                          created=out.get("LastModified"), version_id=out.get("VersionId"),
                          checksum_sha256=out.get("ChecksumSHA256"))

    # --- locks ---------------------------------------------------------------------------------------

    def set_legal_hold(self, key: str, on: bool) -> None:
        version = self.head(key).version_id
        try:
            self.client.put_object_legal_hold(Bucket=self.bucket, Key=self._k(key), LegalHold={
                "Status": "ON" if on else "OFF"}, **({"VersionId": version} if version else {}))
        except Exception as e:
            raise _translate(e, "PutObjectLegalHold", key) from e

    def extend_retention(self, key: str, retain_until: datetime, mode: LockMode | None = None) -> None:
        info = self.head(key)
        retain_until = _ceil_second(check_retain_until(retain_until))
        new_mode = check_extension(info, retain_until, mode)
        try:
            self.client.put_object_retention(
                Bucket=self.bucket, Key=self._k(key),
                Retention={"Mode": new_mode.value, "RetainUntilDate": retain_until},
                **({"VersionId": info.version_id} if info.version_id else {}))
        except Exception as e:
            err = _translate(e, "PutObjectRetention", key)
            if getattr(err, "details", {}).get("vendor_code") == "AccessDenied":
                raise RetentionError(f"S3 refused the retention change of {key!r}", **err.details) from e
            raise err from e

    def delete(self, key: str, *, bypass_governance: bool = False) -> None:
        """Delete every version of ``key`` (a plain DeleteObject would only hide it behind a delete marker)."""
        check_deletable(self.head(key), bypass_governance=bypass_governance)
        s3key = self._k(key)
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=s3key)
            versions = [v["VersionId"] for page in pages
                        for v in page.get("Versions", []) + page.get("DeleteMarkers", []) if v["Key"] == s3key]
        except Exception as e:
            raise _translate(e, "ListObjectVersions", key) from e
        for version in versions:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=s3key, VersionId=version,
                                          **({"BypassGovernanceRetention": True} if bypass_governance else {}))
            except Exception as e:
                raise _translate(e, "DeleteObject", key, locked_hint=True) from e

    def list(self, prefix: str = "") -> Iterator[str]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self.prefix + prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix):]
        except Exception as e:
            raise _translate(e, "ListObjectsV2", prefix) from e


def create_locked_bucket(client, bucket: str, region: str | None = None) -> None:
    """Create ``bucket`` with Object Lock (and so versioning) enabled; an existing locked bucket is fine."""
    args: dict = {"Bucket": bucket, "ObjectLockEnabledForBucket": True}
    if region and region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**args)
    except Exception as e:
        err = _translate(e, "CreateBucket")
        if getattr(err, "details", {}).get("vendor_code") not in ("BucketAlreadyOwnedByYou",):
            raise err from e
