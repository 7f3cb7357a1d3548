"""Filesystem object store: the embedded default, with the same WORM rules as S3 Object Lock.

Layout under the root directory::

    objects/<key>#data    the bytes, mode 0444, never rewritten
    objects/<key>#meta    JSON: size, created, retain_until, mode, legal_hold (replaced atomically)
    tmp/                  writes in flight
    .lock                 a store-wide lock held only while an object is committed or its lock changed

``#`` cannot appear in a key, so ``a/b`` and ``a/b/c`` never collide. A put streams into ``tmp/``, fsyncs,
then under the lock writes the metadata and ``link()``s the data into place (``link`` refuses to replace)
and fsyncs the directory: a crash at any point leaves either no object or the whole object, never a
visible partial one. An object is visible exactly when its ``#data`` file exists.

The WORM rules are enforced by this library. A user with shell access to the directory can still delete
files, so this store is for single-machine use and tests; for SEC 17a-4(f) compliant non-rewriteable,
non-erasable storage, use the S3 store on a bucket with Object Lock in COMPLIANCE mode.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from archive.errors import ObjectExists, ObjectNotFound, StorageError
from archive.store.base import (LockMode, ObjectInfo, check_deletable, check_extension, check_key,
                                check_new_retention, check_retain_until)
from archive.streams import filler

_DATA = "#data"
_META = "#meta"
_CHUNK = 1024 * 1024 + 64  # one default sealed segment (1 MiB + 16-byte tag) and change


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _EarlyWriteback:
    """Starts writeback while a large object is still being written: every ``every`` bytes a helper
    thread calls fdatasync, so disk I/O overlaps the work of producing the bytes and the final fsync
    waits only for the tail (the kernel would otherwise hold a whole gigabyte dirty until then)."""

    def __init__(self, fd: int, every: int = 64 * 1024 * 1024) -> None:
        self.fd, self.every, self.pending = fd, every, 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.every:
            self.pending = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
                self._thread.start()
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            os.fdatasync(self.fd)

    def close(self) -> None:
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()


_buffers = threading.local()  # one write buffer per thread, reused: allocating 1 MiB per put costs more than small puts


def _write_durably(path: Path, source: BinaryIO) -> int:
    """Stream ``source`` into a new file at ``path`` and fsync it; returns the size. Reads into one
    reused buffer (a sealer encrypts straight into it)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = memoryview(bytearray(_CHUNK))
    read = filler(source)
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    writeback = _EarlyWriteback(fd)
    try:
        while True:
            n = read(buf)
            if not n:
                break
            chunk = buf[:n]
            while chunk:
                chunk = chunk[os.write(fd, chunk):]
            size += n
            writeback.wrote(n)
        writeback.close()
        os.fsync(fd)
    finally:
        writeback.close()
        os.close(fd)
    return size


class FilesystemStore:
    """Objects in a local directory, write-once, with retention and legal holds."""

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = Path(root)
        if create:
            for sub in ("objects", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not (self.root / "objects").is_dir():
            raise StorageError(f"no object store at {self.root} (objects/ missing); run 'archive init'",
                               path=str(self.root))
        (self.root / "tmp").mkdir(exist_ok=True)

    # --- paths and locking ---------------------------------------------------------------------------

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / "objects" / (check_key(key) + suffix)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_meta(self, key: str) -> dict:
        if not self._path(key, _DATA).exists():
            raise ObjectNotFound(f"no object {key!r}", key=key)
        try:
            return json.loads(self._path(key, _META).read_text())
        except (OSError, ValueError) as e:
            raise StorageError(f"metadata of {key!r} is unreadable: {e}", key=key) from e

    def _write_meta(self, key: str, meta: dict) -> None:
        final = self._path(key, _META)
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.meta"
        with open(tmp, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    @staticmethod
    def _info(key: str, meta: dict) -> ObjectInfo:
        until = meta.get("retain_until")
        return ObjectInfo(
            key=key, size=int(meta["size"]),
            retain_until=datetime.fromisoformat(until) if until else None,
            mode=LockMode(meta["mode"]) if meta.get("mode") else None,
            legal_hold=bool(meta.get("legal_hold")),
            created=datetime.fromisoformat(meta["created"]) if meta.get("created") else None)

    # --- ObjectStore ---------------------------------------------------------------------------------

    def put(self, key: str, source: BinaryIO, *, retain_until: datetime | None = None,
            mode: LockMode = LockMode.COMPLIANCE, legal_hold: bool = False) -> ObjectInfo:
        final = self._path(key, _DATA)
        mode = LockMode.parse(mode)
        retain_until = check_new_retention(key, retain_until)
        now = datetime.now(UTC)
        if final.exists():
            raise ObjectExists(f"object {key!r} already exists; sealed objects are written once", key=key)
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.part"
        try:
            size = _write_durably(tmp, source)
            os.chmod(tmp, 0o444)
            meta = {"size": size, "created": now.isoformat(), "legal_hold": bool(legal_hold),
                    "retain_until": retain_until.isoformat() if retain_until else None,
                    "mode": mode.value if retain_until else None}
            final.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if final.exists():
                    raise ObjectExists(f"object {key!r} already exists; sealed objects are written once", key=key)
                self._write_meta(key, meta)
                os.link(tmp, final)
                _fsync_dir(final.parent)
        except NotADirectoryError as e:
            raise StorageError(f"object key {key!r} collides with an existing path: {e}", key=key) from e
        finally:
            tmp.unlink(missing_ok=True)
        return self._info(key, meta)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key, _DATA), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {key!r}", key=key) from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        with self.open(key) as f:
            return os.pread(f.fileno(), length, offset)

    def head(self, key: str) -> ObjectInfo:
        return self._info(key, self._read_meta(key))

    def set_legal_hold(self, key: str, on: bool) -> None:
        with self._locked():
            meta = self._read_meta(key)
            meta["legal_hold"] = bool(on)
            self._write_meta(key, meta)

    def extend_retention(self, key: str, retain_until: datetime, mode: LockMode | None = None) -> None:
        retain_until = check_retain_until(retain_until)
        with self._locked():
            meta = self._read_meta(key)
            new_mode = check_extension(self._info(key, meta), retain_until, mode)
            meta["retain_until"] = retain_until.isoformat()
            meta["mode"] = new_mode.value
            self._write_meta(key, meta)

    def delete(self, key: str, *, bypass_governance: bool = False) -> None:
        with self._locked():
            check_deletable(self._info(key, self._read_meta(key)), bypass_governance=bypass_governance)
            data = self._path(key, _DATA)
            data.unlink()
            self._path(key, _META).unlink(missing_ok=True)
            _fsync_dir(data.parent)

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / "objects"
        start = base / check_key(prefix.rsplit("/", 1)[0]) if "/" in prefix else base  # only under the prefix
        found = []
        for dirpath, _dirs, files in os.walk(start):
            rel = os.path.relpath(dirpath, base)
            for name in files:
                if name.endswith(_DATA):
                    key = name[: -len(_DATA)] if rel == "." else f"{rel}/{name[: -len(_DATA)]}"
                    if key.startswith(prefix):
                        found.append(key)
        yield from sorted(found)
