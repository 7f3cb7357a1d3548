"""The object-store contract: write-once objects under retention locks and legal holds.

Semantics every backend gives (the contract suite in ``tests/store_contract.py`` checks them):

* ``put`` writes an object once. A second put under the same key raises ObjectExists. A crash mid-put
  leaves nothing visible.
* Retention: an object may carry ``retain_until`` and a lock ``mode`` — COMPLIANCE (nobody can shorten
  or delete before the date: SEC 17a-4(f)(2)(i) non-rewriteable, non-erasable) or GOVERNANCE (the same,
  except for a caller allowed to bypass it). Retention can be extended, never shortened.
* A legal hold blocks deletion regardless of dates until it is released.
* ``delete`` is refused (ObjectLocked) while retention runs or a hold is on.

Keys are ``/``-separated paths of safe components (letters, digits, ``. _ - = + @ , :``); anything that
could escape a namespace (``..``, absolute paths, empty components, control characters) raises
InvalidObjectKey.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import BinaryIO, Protocol

from archive.errors import ArchiveError, InvalidObjectKey, ObjectLocked, RetentionError

MAX_KEY_BYTES = 1024
_COMPONENT = re.compile(r"[A-Za-z0-9._=+@,:-]{1,255}")


class LockMode(str, Enum):
    """S3 Object Lock retention modes."""

    COMPLIANCE = "COMPLIANCE"
    GOVERNANCE = "GOVERNANCE"

    @classmethod
    def parse(cls, value: str | LockMode) -> LockMode:
        if type(value) is cls:
            return value
        try:
            return cls(str(value.value if isinstance(value, LockMode) else value).upper())
        except ValueError:
            raise RetentionError(f"unknown lock mode {value!r}; use compliance or governance") from None


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    retain_until: datetime | None = None
    mode: LockMode | None = None
    legal_hold: bool = False
    created: datetime | None = None
    version_id: str | None = None
    checksum_sha256: str | None = None  # as the store reports it (S3: base64, may be composite "…-N")
    # put only: the store computed its own SHA-256 over the bytes it stored, and it equals the writer's
    # (S3 ChecksumSHA256 echoed back): the object holds exactly the bytes sent, no read-back needed
    verified: bool = False

    def locked(self, now: datetime | None = None) -> bool:
        """True while retention runs or a legal hold is on."""
        now = now or datetime.now(UTC)
        return self.legal_hold or (self.retain_until is not None and self.retain_until > now)


_SAFE_KEY = re.compile(r"[A-Za-z0-9._=+@,:-]{1,255}(?:/[A-Za-z0-9._=+@,:-]{1,255})*")
_DOT_COMPONENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise InvalidObjectKey saying why."""
    # every object access checks its key: one match for a good key (ASCII, so characters are bytes)
    if (isinstance(key, str) and len(key) <= MAX_KEY_BYTES and _SAFE_KEY.fullmatch(key)
            and not _DOT_COMPONENT.search(key)):
        return key
    if not isinstance(key, str) or not key:
        raise InvalidObjectKey("object key is empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidObjectKey(f"object key is longer than {MAX_KEY_BYTES} bytes: {key[:60]!r}…")
    for part in key.split("/"):
        if part in (".", "..") or not _COMPONENT.fullmatch(part):
            raise InvalidObjectKey(f"object key {key!r} has an unsafe component {part!r} (allowed: letters, "
                                   "digits and . _ - = + @ , : between single slashes; no '.' or '..')")
    return key


def check_retain_until(retain_until: datetime | None) -> datetime | None:
    """Normalise a retain-until date to aware UTC; naive datetimes are refused, not guessed."""
    if retain_until is None:
        return None
    if retain_until.tzinfo is None:
        raise ValueError("retain_until must be timezone-aware")
    return retain_until.astimezone(UTC)


# --- the WORM rules, in one place for every backend (S3 enforces them again server-side) -----------


def check_new_retention(key: str, retain_until: datetime | None, now: datetime | None = None) -> datetime | None:
    """The retain-until for a new object, in UTC; raises RetentionError when it is already past."""
    retain_until = check_retain_until(retain_until)
    if retain_until is not None and retain_until <= (now or datetime.now(UTC)):
        raise RetentionError(f"retain-until {retain_until.isoformat()} for {key!r} is in the past", key=key)
    return retain_until


def check_extension(info: ObjectInfo, retain_until: datetime, mode: LockMode | str | None,
                    now: datetime | None = None) -> LockMode:
    """The lock mode after moving ``info``'s retention to ``retain_until``. Raises RetentionError when that
    would shorten retention or weaken COMPLIANCE to GOVERNANCE while locked (SEC 17a-4(f)(2)(i))."""
    if info.retain_until is not None and retain_until < info.retain_until:
        raise RetentionError(f"refusing to shorten retention of {info.key!r} from {info.retain_until.isoformat()} "
                             f"to {retain_until.isoformat()}", key=info.key)
    if info.retain_until is None:
        check_new_retention(info.key, retain_until, now)
    new_mode = LockMode.parse(mode) if mode else (info.mode or LockMode.COMPLIANCE)
    if info.mode is LockMode.COMPLIANCE and new_mode is LockMode.GOVERNANCE and info.locked(now):
        raise RetentionError(f"refusing to weaken {info.key!r} from COMPLIANCE to GOVERNANCE", key=info.key)
    return new_mode


def check_deletable(info: ObjectInfo, *, bypass_governance: bool = False, now: datetime | None = None) -> None:
    """Raise ObjectLocked unless ``info`` may be deleted now: no legal hold, and retention has passed
    (or is GOVERNANCE and the caller bypasses it)."""
    if info.legal_hold:
        raise ObjectLocked(f"object {info.key!r} is under legal hold", key=info.key)
    if info.retain_until and info.retain_until > (now or datetime.now(UTC)) and not (
            bypass_governance and info.mode is LockMode.GOVERNANCE):
        raise ObjectLocked(f"object {info.key!r} is retained in {info.mode.value if info.mode else '?'} mode until "
                           f"{info.retain_until.isoformat()}", key=info.key)


@dataclass
class PutRequest:
    """One object of a :meth:`ObjectStore.put_many` group: what ``put`` takes, as a value."""

    key: str
    source: BinaryIO
    retain_until: datetime | None = None
    mode: LockMode = LockMode.COMPLIANCE
    legal_hold: bool = False


def put_each(store, requests: Sequence[PutRequest]) -> list[ObjectInfo | ArchiveError]:
    """``put_many`` for a backend with no cheaper way to write a group: one ``put`` after another, each
    durable when it returns, each refusal kept as that object's result."""
    results: list[ObjectInfo | ArchiveError] = []
    for r in requests:
        try:
            results.append(store.put(r.key, r.source, retain_until=r.retain_until, mode=r.mode,
                                     legal_hold=r.legal_hold))
        except ArchiveError as e:
            results.append(e)
    return results


class ObjectStore(Protocol):
    """Write-once object storage with retention locks and legal holds."""

    def put(self, key: str, source: BinaryIO, *, retain_until: datetime | None = None,
            mode: LockMode = LockMode.COMPLIANCE, legal_hold: bool = False) -> ObjectInfo:
        """Write ``source`` (read to its end) under ``key``. Raises ObjectExists, InvalidObjectKey,
        RetentionError (retain_until in the past), StoreUnavailable."""
        ...

    def put_many(self, requests: Sequence[PutRequest]) -> list[ObjectInfo | ArchiveError]:
        """Write a group of objects, each under ``put``'s rules, and return for each its ObjectInfo or the
        ArchiveError that refused it (ObjectExists, InvalidObjectKey, RetentionError, StorageError …).
        Every object returned as written is durable when this returns; a backend may make the group
        durable together (group commit). Raises StorageError when the group as a whole could not be made
        durable: then no object of it is acknowledged, though some may exist."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A streaming reader over the whole object. Raises ObjectNotFound."""
        ...

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) (fewer at the end of the object). Raises ObjectNotFound."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size, retention and hold of an object. Raises ObjectNotFound."""
        ...

    def set_legal_hold(self, key: str, on: bool) -> None:
        """Place or release a legal hold."""
        ...

    def extend_retention(self, key: str, retain_until: datetime, mode: LockMode | None = None) -> None:
        """Move retain-until later. Raises RetentionError when that would shorten it."""
        ...

    def delete(self, key: str, *, bypass_governance: bool = False) -> None:
        """Delete the object for good. Raises ObjectLocked while retention runs or a hold is on
        (GOVERNANCE retention yields to ``bypass_governance``; COMPLIANCE and holds never do)."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, in lexicographic order."""
        ...
