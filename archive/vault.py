"""The vault: envelope encryption over a WORM object store — seal, open, rotate, lock.

The vault is where the object store, the key provider and the sealed format meet. For every object
name it keeps, in the store::

    objects/<name>                      the sealed bytes (format in archive/crypto/stream.py), locked
    objects/<name>.receipt-<seq:06d>    seal receipts: the wrapped data key plus the object's sizes, the
                                        plaintext SHA-256 and the sealed tag digest, locked like the
                                        object; the highest seq is current

Receipts sit in the object's own directory: on the filesystem store a new object then creates (and
fsyncs) one directory, not two.

The wrapped key lives beside the object, never inside it: ``rotate()`` writes a new receipt with the data
key rewrapped under the current KEK and leaves the locked object untouched. A KEK can be destroyed only
when no current receipt needs it (``destroy_kek`` checks). Deleting an object deletes its receipts too,
which destroys its data key (crypto-shredding) even where storage media keep remnants.

Write order: the sealed object first, then its receipt. A crash between them leaves a sealed object with
no key — unreadable, invisible to readers (they start from the receipt) and found by ``orphans()``.
``seal_many`` keeps that order for a group: every object of the group is written (and durable) before any
of their receipts is written, each step one group commit of the store (``ObjectStore.put_many``).
The encryption context bound to every wrapped key names the object, the record and the part, so a
receipt moved to another object does not open.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import lru_cache
from typing import BinaryIO

from archive.crypto.stream import Binding, Checked, Sealer, iter_unseal_range, unseal_range, unseal_stream
from archive.errors import (ArchiveError, IntegrityError, InvalidObjectKey, KeyInUse, ObjectNotFound,
                            StorageError)
from archive.keys.base import KeyProvider, WrappedKey
from archive.store.base import LockMode, ObjectInfo, ObjectStore, PutRequest, check_key
from archive.streams import remaining_size

RECEIPT_FORMAT = "archive-receipt/1"
_RECEIPT_KEY = re.compile(r"objects/(.+)\.receipt-(\d{6})")


def candidates(name: str, attempts: int = 9) -> Iterator[str]:
    """Names to try for one sealed object: ``name``, then ``name.retry-2`` … A writer that died between
    its object and its receipt leaves a receipt-less object under the name, and WORM keeps it there: the
    next attempt takes the next name instead of failing on it for ever."""
    yield name
    for attempt in range(2, attempts + 1):
        yield f"{name}.retry-{attempt}"


def _receipt_key(name: str, seq: int) -> str:
    return f"objects/{name}.receipt-{seq:06d}"


@dataclass(frozen=True)
class SealReceipt:
    """What sealing produced: where, bound to what, how big, which digests, and the wrapped data key."""

    name: str
    seq: int
    record_id: str
    part: str
    segment_size: int
    plaintext_size: int
    plaintext_sha256: str
    sealed_size: int
    tag_digest: str  # SHA-256(header ‖ every segment tag): identifies the sealed bytes
    sealed_at: str
    wrapped_key: WrappedKey
    format: str = RECEIPT_FORMAT

    @property
    def binding(self) -> Binding:
        return Binding(self.record_id, self.part)

    def to_bytes(self) -> bytes:
        return _receipt_bytes(self)

    @classmethod
    def from_bytes(cls, raw: bytes, key: str) -> SealReceipt:
        try:
            doc = json.loads(raw)
            if doc.get("format") != RECEIPT_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            doc["wrapped_key"] = WrappedKey.from_json(doc["wrapped_key"])
            return cls(**doc)
        except (ValueError, TypeError, KeyError) as e:
            raise IntegrityError(f"{key}: seal receipt is malformed ({e})", object_key=key,
                                 segment="receipt") from e


@lru_cache(maxsize=1024)  # a receipt is serialised when written and again to check what was stored;
def _receipt_bytes(receipt: SealReceipt) -> bytes:  # equal receipts serialise alike, so by value is safe
    doc = {f.name: getattr(receipt, f.name) for f in fields(receipt)}  # shallow: asdict deep-copies, slowly
    doc["wrapped_key"] = receipt.wrapped_key.to_json()
    # compact: the indenting encoder is pure Python, and a receipt is written for every object
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class SealRequest:
    """One object of a :meth:`Vault.seal_many` group: what ``seal`` takes, as a value."""

    name: str
    source: BinaryIO
    binding: Binding
    retain_until: datetime | None = None
    mode: LockMode | None = None
    legal_hold: bool = False


@dataclass
class RotationReport:
    """What ``rotate`` did."""

    current_kek: str
    scanned: int = 0
    rewrapped: int = 0
    already_current: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def _context(name: str, binding: Binding) -> dict[str, str]:
    return {"archive:object": name, "archive:record": binding.record_id, "archive:part": binding.part}


class Vault:
    """Seals objects into a store under envelope encryption, and opens them again."""

    def __init__(self, store: ObjectStore, keys: KeyProvider, *, segment_size: int = 1024 * 1024,
                 lock_mode: LockMode = LockMode.COMPLIANCE) -> None:
        self.store = store
        self.keys = keys
        self.segment_size = segment_size
        self.lock_mode = LockMode.parse(lock_mode)

    # --- writing -------------------------------------------------------------------------------------

    def seal(self, name: str, source: BinaryIO, binding: Binding, *, retain_until: datetime | None = None,
             mode: LockMode | None = None, legal_hold: bool = False, verify: bool = False) -> SealReceipt:
        """Encrypt ``source`` (read to its end, in constant memory) and store it under ``name`` with a
        fresh data key. ``verify``: return only once the object is known to open to what was read
        (:meth:`_verify`). Raises ObjectExists, InvalidObjectKey, RetentionError, StorageError,
        CryptoError, IntegrityError."""
        if _RECEIPT_KEY.fullmatch(f"objects/{check_key(name)}"):
            raise InvalidObjectKey(f"{name!r} is named like a seal receipt; choose another name")
        mode = LockMode.parse(mode or self.lock_mode)
        context = _context(name, binding)
        data_key, wrapped = self.keys.generate_data_key(context)
        sealer = Sealer(source, data_key, binding, segment_size=self.segment_size, size_hint=remaining_size(source))
        checked = Checked(sealer, data_key, binding, object_key=f"objects/{name}") if verify else None
        try:
            info = self.store.put(f"objects/{name}", checked or sealer, retain_until=retain_until, mode=mode,
                                  legal_hold=legal_hold)
            receipt = SealReceipt(
                name=name, seq=1, record_id=binding.record_id, part=binding.part,
                segment_size=self.segment_size, plaintext_size=sealer.plaintext_size,
                plaintext_sha256=sealer.plaintext_sha256, sealed_size=sealer.sealed_size,
                tag_digest=sealer.tag_digest, sealed_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                wrapped_key=wrapped)
        finally:
            sealer.close()
        stored = self._put_receipt(receipt, retain_until=retain_until, mode=mode, legal_hold=legal_hold)
        if verify:
            self._verify(receipt, binding, checked, info, stored)
        return receipt

    def _verify(self, receipt: SealReceipt, binding: Binding, checked: Checked | None, info: ObjectInfo,
                stored: ObjectInfo) -> None:
        """Prove a just-sealed object and its receipt are stored as written and open to the plaintext
        sealed. Where the store confirmed both writes by its own checksum over the bytes it stored
        (:attr:`ObjectInfo.verified`: S3), the sealed stream was checked as it went out (:class:`Checked`)
        and nothing is read back; otherwise both are read back (the receipt compared byte for byte, every
        segment authenticated, the plaintext digest compared). Raises IntegrityError."""
        if checked is not None and info.verified and stored.verified:
            checked.verify()
            return
        for _ in self.open(receipt.name, binding, verify_digest=True, receipt=receipt):
            pass

    def seal_many(self, requests: list[SealRequest], *, verify: bool = False) -> list[SealReceipt | ArchiveError]:
        """Seal a group of objects as :meth:`seal` does, with two group commits of the store for all of
        them (the objects, then their receipts) instead of two writes each. Returns, for each request,
        its receipt or the ArchiveError that refused it (ObjectExists, InvalidObjectKey, RetentionError,
        with ``verify`` IntegrityError …); everything returned as a receipt is durable (and, with
        ``verify``, proven as :meth:`_verify` says; read-backs of a group go out together on a remote
        store). Raises StorageError when a group commit failed."""
        results: list[SealReceipt | ArchiveError | None] = [None] * len(requests)
        sealing: list[tuple[int, SealRequest, LockMode, WrappedKey, Sealer]] = []
        checks: dict[int, Checked] = {}
        try:
            for i, r in enumerate(requests):
                try:
                    if _RECEIPT_KEY.fullmatch(f"objects/{check_key(r.name)}"):
                        raise InvalidObjectKey(f"{r.name!r} is named like a seal receipt; choose another name")
                    mode = LockMode.parse(r.mode or self.lock_mode)
                    data_key, wrapped = self.keys.generate_data_key(_context(r.name, r.binding))
                except ArchiveError as e:
                    results[i] = e
                    continue
                sealer = Sealer(r.source, data_key, r.binding, segment_size=self.segment_size,
                                size_hint=remaining_size(r.source))
                sealing.append((i, r, mode, wrapped, sealer))
                if verify:
                    checks[i] = Checked(sealer, data_key, r.binding, object_key=f"objects/{r.name}")
            stored = self.store.put_many([PutRequest(f"objects/{r.name}", checks.get(i, sealer), r.retain_until,
                                                     mode, r.legal_hold)
                                          for i, r, mode, _, sealer in sealing])
        finally:
            for *_, sealer in sealing:
                sealer.close()
        receipts: list[tuple[int, SealRequest, LockMode, SealReceipt]] = []
        sealed_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        infos: dict[int, ObjectInfo] = {}
        for (i, r, mode, wrapped, sealer), info in zip(sealing, stored):
            if isinstance(info, ArchiveError):
                results[i] = info
                continue
            infos[i] = info
            receipts.append((i, r, mode, SealReceipt(
                name=r.name, seq=1, record_id=r.binding.record_id, part=r.binding.part,
                segment_size=self.segment_size, plaintext_size=sealer.plaintext_size,
                plaintext_sha256=sealer.plaintext_sha256, sealed_size=sealer.sealed_size,
                tag_digest=sealer.tag_digest, sealed_at=sealed_at, wrapped_key=wrapped)))
        stored = self.store.put_many([PutRequest(_receipt_key(receipt.name, receipt.seq), io.BytesIO(receipt.to_bytes()),
                                                 r.retain_until, mode, r.legal_hold)
                                      for _, r, mode, receipt in receipts])
        done = []
        for (i, r, _, receipt), info in zip(receipts, stored):
            results[i] = info if isinstance(info, ArchiveError) else receipt
            if verify and not isinstance(info, ArchiveError):
                done.append((i, r, receipt, info))

        def check(item) -> None:
            i, r, receipt, info = item
            try:
                self._verify(receipt, r.binding, checks[i], infos[i], info)
            except ArchiveError as e:
                results[i] = e

        pool = getattr(self.store, "_pool", None)  # a remote store's request threads
        if len(done) > 1 and pool is not None:
            list(pool().map(check, done))
        else:
            for item in done:
                check(item)
        return results

    def _put_receipt(self, receipt: SealReceipt, *, retain_until: datetime | None, mode: LockMode | None,
                     legal_hold: bool) -> ObjectInfo:
        return self.store.put(_receipt_key(receipt.name, receipt.seq), io.BytesIO(receipt.to_bytes()),
                       retain_until=retain_until, mode=mode or self.lock_mode, legal_hold=legal_hold)

    # --- reading -------------------------------------------------------------------------------------

    def _receipt_keys(self, name: str) -> list[str]:
        prefix = f"objects/{check_key(name)}.receipt-"
        return [k for k in self.store.list(prefix) if k[len(prefix):].isdigit() and len(k) - len(prefix) == 6]

    def receipt(self, name: str) -> SealReceipt:
        """The current seal receipt of ``name``. Raises ObjectNotFound."""
        keys = self._receipt_keys(name)
        if not keys:
            raise ObjectNotFound(f"no sealed object {name!r} (no seal receipt)", key=name)
        return self._load_receipt(keys[-1], name)

    def _load_receipt(self, key: str, name: str) -> SealReceipt:
        with self.store.open(key) as f:
            receipt = SealReceipt.from_bytes(f.read(), key)
        if receipt.name != name:
            raise IntegrityError(f"{key}: receipt names {receipt.name!r}, not {name!r}", object_key=name,
                                 segment="receipt")
        return receipt

    def _data_key(self, receipt: SealReceipt, binding: Binding) -> bytes:
        # The context comes from the name and the caller's binding, so a receipt copied from another
        # object, or a caller asking for the wrong record or part, fails here or at the commitment check.
        return self.keys.unwrap(receipt.wrapped_key, _context(receipt.name, binding))

    def open(self, name: str, binding: Binding | None = None, *, verify_digest: bool = False,
             receipt: SealReceipt | None = None) -> Iterator[bytes]:
        """Yield the plaintext of ``name`` segment by segment, each verified before it is released.
        ``binding`` is what the caller expects (default: what the receipt says). With ``verify_digest``
        the plaintext SHA-256 is also checked against the receipt at the end. ``receipt``: the one a
        seal just returned — the stored copy is read back and must equal it (no listing to find the
        current one). Raises IntegrityError."""
        if receipt is None:
            receipt = self.receipt(name)
        else:
            key = _receipt_key(name, receipt.seq)
            with self.store.open(key) as f:
                stored = f.read()
            if stored != receipt.to_bytes():
                raise IntegrityError(f"{key}: the stored seal receipt differs from the one written",
                                     object_key=name, segment="receipt")
        binding = binding or receipt.binding
        data_key = self._data_key(receipt, binding)
        key = f"objects/{name}"
        digest = hashlib.sha256() if verify_digest else None
        size = 0
        with self.store.open(key) as f:
            for chunk in unseal_stream(f, data_key, binding, object_key=key):
                size += len(chunk)
                if digest is not None:
                    digest.update(chunk)
                yield chunk
        if size != receipt.plaintext_size:
            raise IntegrityError(f"{key}: {size} plaintext bytes, the receipt says {receipt.plaintext_size}",
                                 object_key=key, segment="end")
        if digest is not None and digest.hexdigest() != receipt.plaintext_sha256:
            raise IntegrityError(f"{key}: plaintext SHA-256 differs from the receipt", object_key=key,
                                 segment="end")

    def read(self, name: str, binding: Binding | None = None, *, receipt: SealReceipt | None = None) -> bytes:
        """The whole plaintext of a small object (a manifest, a decision, an event), verified as by
        :meth:`open` including the plaintext digest."""
        return b"".join(self.open(name, binding, verify_digest=True, receipt=receipt))

    def read_range(self, name: str, start: int, end: int, binding: Binding | None = None) -> bytes:
        """Plaintext bytes [start, end) of ``name``, reading only the header and the covering segments.
        Raises IntegrityError, ObjectNotFound."""
        receipt = self.receipt(name)
        binding = binding or receipt.binding
        key = f"objects/{name}"
        return unseal_range(lambda off, n: self.store.read_range(key, off, n), receipt.sealed_size,
                            self._data_key(receipt, binding), binding, start, end, object_key=key)

    def iter_range(self, name: str, start: int, end: int, binding: Binding | None = None, *,
                   window: int = 1) -> Iterator[bytes]:
        """Plaintext bytes [start, end) of ``name`` in chunks of ``window`` segments, as :meth:`read_range` but
        streamed (for serving playback from the middle of a long recording: a player that reads a little
        and seeks again costs about a segment of decryption, not the rest of the hour). The receipt, the
        data key and the header are checked before the first chunk; every chunk is authenticated."""
        receipt = self.receipt(name)
        binding = binding or receipt.binding
        key = f"objects/{name}"
        return iter_unseal_range(lambda off, n: self.store.read_range(key, off, n), receipt.sealed_size,
                                 self._data_key(receipt, binding), binding, start, end, object_key=key, window=window)

    def head(self, name: str) -> ObjectInfo:
        """Retention and hold state of the sealed object."""
        return self.store.head(f"objects/{check_key(name)}")

    def names(self, prefix: str = "", *, with_receipt: bool = False) -> Iterator[str]:
        """Names of sealed objects under ``prefix``; with ``with_receipt``, only those that have a seal
        receipt (not an object whose writer died before its receipt: it cannot be read)."""
        keys = list(self.store.list(f"objects/{prefix}"))
        receipted = {m.group(1) for m in map(_RECEIPT_KEY.fullmatch, keys) if m} if with_receipt else None
        for key in keys:
            if not _RECEIPT_KEY.fullmatch(key):
                name = key[len("objects/"):]
                if receipted is None or name in receipted:
                    yield name

    # --- locks ---------------------------------------------------------------------------------------

    def _all_keys(self, name: str) -> list[str]:
        return [f"objects/{check_key(name)}", *self._receipt_keys(name)]

    def set_legal_hold(self, name: str, on: bool) -> None:
        """Place or release a legal hold on the object and its receipts."""
        for key in self._all_keys(name):
            self.store.set_legal_hold(key, on)

    def extend_retention(self, name: str, retain_until: datetime, mode: LockMode | None = None) -> None:
        """Extend retention of the object and its receipts. Raises RetentionError when shortening."""
        for key in self._all_keys(name):
            self.store.extend_retention(key, retain_until, mode)

    def delete(self, name: str, *, bypass_governance: bool = False) -> None:
        """Delete the sealed object, then its receipts (which destroys its data key). Raises
        ObjectLocked while retention runs or a hold is on."""
        keys = self._all_keys(name)
        for key in keys:
            self.store.delete(key, bypass_governance=bypass_governance)

    # --- keys ----------------------------------------------------------------------------------------

    def current_receipts(self) -> Iterator[tuple[str, str]]:
        """(name, receipt key) of every object's current receipt."""
        latest: dict[str, tuple[int, str]] = {}
        for key in self.store.list("objects/"):
            m = _RECEIPT_KEY.fullmatch(key)
            if m and int(m.group(2)) > latest.get(m.group(1), (0, ""))[0]:
                latest[m.group(1)] = (int(m.group(2)), key)
        for name in sorted(latest):
            yield name, latest[name][1]

    def kek_usage(self) -> dict[str, int]:
        """How many objects' current receipts are wrapped under each KEK."""
        usage: dict[str, int] = {}
        for name, key in self.current_receipts():
            kek = self._load_receipt(key, name).wrapped_key.kek_id
            usage[kek] = usage.get(kek, 0) + 1
        return usage

    def rotate(self, *, new_kek: bool = True, workers: int = 8,
               progress: Callable[[int], None] | None = None) -> RotationReport:
        """Make a new KEK current (unless ``new_kek`` is false) and rewrap every data key not under it,
        writing a new receipt beside each object. Locked objects are never rewritten."""
        current = self.keys.rotate() if new_kek else self.keys.current_kek()
        report = RotationReport(current_kek=current)
        lock = threading.Lock()

        def one(item: tuple[str, str]) -> None:
            name, key = item
            try:
                receipt = self._load_receipt(key, name)
                if receipt.wrapped_key.kek_id == current:
                    with lock:
                        report.already_current += 1
                    return
                context = _context(name, receipt.binding)
                rewrapped = self.keys.rewrap(receipt.wrapped_key, context)
                head = self.store.head(f"objects/{name}")
                new = SealReceipt(**{**receipt.__dict__, "seq": receipt.seq + 1, "wrapped_key": rewrapped})
                self._put_receipt(new, retain_until=head.retain_until if head.locked() else None,
                                  mode=head.mode, legal_hold=head.legal_hold)
                with lock:
                    report.rewrapped += 1
            except (StorageError, IntegrityError, Exception) as e:  # report every object, stop on none
                with lock:
                    report.failed[name] = f"{type(e).__name__}: {e}"

        with ThreadPoolExecutor(workers, thread_name_prefix="rewrap") as pool:
            for item in pool.map(one, self.current_receipts()):
                report.scanned += 1
                if progress:
                    progress(report.scanned)
        return report

    def destroy_kek(self, kek_id: str) -> None:
        """Destroy a retired KEK after checking no object's current receipt needs it. Raises KeyInUse."""
        usage = self.kek_usage().get(kek_id, 0)
        if usage:
            raise KeyInUse(f"{usage} object(s) still have data keys wrapped under {kek_id}; run "
                           "'archive keys rotate' first", kek_id=kek_id, objects=usage)
        self.keys.destroy(kek_id)

    def orphans(self) -> Iterator[str]:
        """Sealed objects that have no receipt (a crash between writing object and receipt)."""
        with_receipt = {name for name, _ in self.current_receipts()}
        for name in self.names():
            if name not in with_receipt:
                yield name
