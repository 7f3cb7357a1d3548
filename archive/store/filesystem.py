"""Filesystem object store: the embedded default, with the same WORM rules as S3 Object Lock.

Layout under the root directory::

    objects/<key>#data    header ‖ the bytes; mode 0444, never rewritten
    objects/<key>#meta    the lock state after a change (hold placed or released, retention extended)
    tmp/                  writes in flight
    .lock                 a store-wide lock, held only while lock state changes or an object is deleted

``#data`` starts with ``b"ARCFSv1\n"``, a u32 (big-endian) length and that many bytes of JSON — the
object's id and its lock state at creation (created, retain_until, mode, legal_hold) — then the object's
bytes. Lock changes are written to ``#meta`` (atomically replaced) carrying the same object id, so a
``#meta`` left behind by a deleted object is never mistaken for a new object's. ``#`` cannot appear in a
key, so ``a/b`` and ``a/b/c`` never collide.

A put creates (and fsyncs) any missing directories, streams into a file with no name yet (Linux
``O_TMPFILE``; elsewhere a file in ``tmp/``), fsyncs it, then ``link()``s it into place — ``link`` refuses to replace, so two writers of one key cannot both win, with no lock —
and fsyncs the directory: a crash at any point leaves either no object or the whole object, never a
visible partial one. An object is visible exactly when its ``#data`` file exists.

``put_many`` is the same protocol for a group of objects with one flush per step instead of one per
object (group commit): (1) every object is written into its own nameless file, and missing directories
are made; (2) one ``syncfs(2)`` makes all of those bytes durable (and reports a write error on any of
them, since Linux 5.8; on an older kernel each file is then fsynced as well — by then a no-op that only
reports such an error); (3) each file is ``link()``ed under its name; (4) one more ``syncfs`` makes the
names (and the new directories) durable; only then does ``put_many`` return and the objects count as
written. A file is linked only after its bytes are on disk, so a crash at any point leaves each object
of the group either absent or whole, exactly as with ``put``; nameless files of a dead process vanish
with it. Where ``syncfs`` is missing (not Linux), step 2 fsyncs
each file and step 4 each changed directory. ``syncfs`` also flushes other writers' dirty data on the
same filesystem; that costs time, never safety.

The WORM rules are enforced by this library, against the store's own clock (``clock``, the system clock
unless a test injects one) — the archive's clock deciding that a record is due never unlocks an object.

**Tamper-evident, not tamper-proof.** Someone with shell access to the directory can still edit or delete
files. What they cannot do is do it unnoticed:

* every lock state — the header's and each ``#meta`` — carries ``mac_key`` and ``mac``, an HMAC-SHA256
  over the object's key and its state (object id included) under a key kept in the keyring, not in the
  store (:meth:`use_lock_keys`). The state in force (the ``#meta`` if there is one for this object, else
  the header) must pass the check; one that fails (edited retain-until, mode or legal hold; a MAC
  removed; an edited header brought back by deleting the ``#meta``) raises LockStateTampered from
  ``head``, ``delete``, ``set_legal_hold`` and ``extend_retention``: nothing is deleted or changed on the
  strength of an edited lock;
* a lock state rolled back to an earlier genuine one (a ``#meta`` deleted or replaced by an older one)
  passes that check, and deleted files leave nothing to check: those are found by comparing the store
  with the audit trail and the records' own decisions and holds (``archive fixity``, ``archive audit
  verify``; docs/stores.md).

So this store is for single-machine use and tests; for SEC 17a-4(f) compliant non-rewriteable,
non-erasable storage, use the S3 store on a bucket with Object Lock in COMPLIANCE mode, where the server
refuses the deletion itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import itertools
import json
import os
import struct
import threading
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from archive.errors import ArchiveError, LockStateTampered, ObjectExists, ObjectNotFound, StorageError
from archive.store.base import (LockMode, ObjectInfo, PutRequest, check_deletable, check_extension, check_key,
                                check_new_retention, check_retain_until)
from archive.streams import filler

_DATA = "#data"
_META = "#meta"
_MAGIC = b"ARCFSv1\n"
_LEN = struct.Struct(">I")
_CHUNK = 1024 * 1024 + 64  # one default sealed segment (1 MiB + 16-byte tag) and change
_READ_BUFFER = 64 * 1024
_MAC_LABEL = b"archive-fs-lock-state/1\n"
_MAC_FIELDS = ("mac", "mac_key")


def _makedirs_durably(path: str) -> None:
    """Create ``path`` and any missing parents, fsyncing each parent whose entries changed: a new
    object is only durable when every directory entry leading to it is."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            pass  # another writer made it, and may not have fsynced its parent yet: do it here too
        _fsync_dir(os.path.dirname(directory))


def _load_syncfs():
    """libc's ``syncfs(2)`` as a function raising OSError, or None where there is none (not Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes, call.restype = [ctypes.c_int], ctypes.c_int

    def syncfs(fd: int) -> None:
        if call(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")

    return syncfs


_syncfs = _load_syncfs()


def _syncfs_reports_errors() -> bool:
    """Since Linux 5.8 ``syncfs`` returns the write errors seen on the filesystem since the fd it is given
    was opened (the superblock's error sequence), so a group commit needs no per-file fsync to learn of
    one; before, it reported nothing."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return _syncfs is not None and (major, minor) >= (5, 8)


_SYNCFS_REPORTS_ERRORS = _syncfs_reports_errors()


def _fsync_dir(path: str | Path) -> None:
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
        self._wake: threading.Event | None = None  # made when first needed: most objects are small
        self._stopping = False
        self._thread: threading.Thread | None = None

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.every:
            self.pending = 0
            if self._thread is None:
                self._wake = threading.Event()
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


def _write_durably(fd: int, source: BinaryIO, header: bytes = b"", *, sync: bool = True) -> int:
    """Write ``header`` then stream ``source`` into the new file open at ``fd`` and fsync it (unless
    ``sync`` is false: a group commit flushes later); returns the size of what came from ``source``.
    Reads into one reused buffer (a sealer encrypts straight into it)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = memoryview(bytearray(_CHUNK))
    read = filler(source)
    size = 0
    writeback = _EarlyWriteback(fd)
    try:
        if header:
            os.write(fd, header)
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
        if sync:
            os.fsync(fd)
    finally:
        writeback.close()
    return size


def _open_unnamed(directory: str) -> int | None:
    """A new file with no name yet in ``directory`` (Linux O_TMPFILE), or None where that is unsupported:
    nothing to clean up after a crash, and no temporary name to create and remove. Its mode is already
    the object's (0444): the descriptor opened here is the only one that can write it."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o444)
    except OSError:
        return None


@dataclass
class _Staged:
    """An object of a group commit, written but not yet named."""

    index: int
    key: str
    final: str
    fd: int
    tmp: Path | None
    info: ObjectInfo  # its size still 0
    size: int


def _sized(info: ObjectInfo, size: int) -> ObjectInfo:
    return ObjectInfo(info.key, size, info.retain_until, info.mode, info.legal_hold, info.created, info.version_id)


class FilesystemStore:
    """Objects in a local directory, write-once, with retention and legal holds."""

    def __init__(self, root: Path, *, create: bool = False, clock=None) -> None:
        self.root = Path(root)
        from archive.clock import SYSTEM

        self.clock = clock or SYSTEM
        if create:
            for sub in ("objects", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not (self.root / "objects").is_dir():
            raise StorageError(f"no object store at {self.root} (objects/ missing); run 'archive init'",
                               path=str(self.root))
        (self.root / "tmp").mkdir(exist_ok=True)
        self._objects = str(self.root / "objects")  # paths are strings on the hot paths: pathlib costs more
        # Held open for the store's life: syncfs reports the write errors seen since its fd was opened, and
        # names are linked relative to objects/ (one descriptor, not one opened per link).
        self._root_fd = os.open(self.root, os.O_RDONLY)
        self._objects_fd = os.open(self._objects, os.O_RDONLY | os.O_DIRECTORY)
        weakref.finalize(self, os.close, self._root_fd)
        weakref.finalize(self, os.close, self._objects_fd)
        # Object ids only need to be unique: a random prefix per store instance and a counter, instead of
        # a call for fresh randomness per object.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()
        self._lock_key_id: str | None = None
        self._lock_keys: dict[str, bytes] = {}

    # --- lock-state authentication -------------------------------------------------------------------

    def use_lock_keys(self, current: str, keys: dict[str, bytes], *, seal_existing: bool = False) -> None:
        """Authenticate every lock state from now on with HMAC keys kept outside the store (the
        keyring's): new states are MACed under ``current``; a state that does not verify under one of
        ``keys`` is tampered. ``seal_existing``: MAC every existing state that has no valid MAC yet — only
        when the first key has just been made (an archive that predates lock-state MACs), never later,
        or an edit made meanwhile would be sealed as genuine."""
        if current not in keys:
            raise StorageError(f"lock-state key {current} is not among the keys given")
        self._lock_key_id, self._lock_keys = current, dict(keys)
        if seal_existing:
            for key in self.list():
                with self._locked():
                    try:
                        state, _, _ = self._state(key, verify=False)
                    except (ObjectNotFound, StorageError):
                        continue
                    if not self._authentic(key, state):
                        self._change(key, state)

    def _mac(self, key: str, state: dict, key_id: str) -> str:
        body = json.dumps({k: v for k, v in state.items() if k not in _MAC_FIELDS}, sort_keys=True,
                          separators=(",", ":")).encode()
        return hmac.new(self._lock_keys[key_id], _MAC_LABEL + key.encode() + b"\n" + body, hashlib.sha256).hexdigest()

    def _sealed(self, key: str, state: dict) -> dict:
        """``state`` with its MAC (as it is: without lock keys configured)."""
        if self._lock_key_id is None:
            return state
        state = {k: v for k, v in state.items() if k not in _MAC_FIELDS}
        return {**state, "mac_key": self._lock_key_id, "mac": self._mac(key, state, self._lock_key_id)}

    def _authentic(self, key: str, state: dict) -> bool:
        key_id, mac = state.get("mac_key"), state.get("mac")
        return (isinstance(key_id, str) and key_id in self._lock_keys and isinstance(mac, str)
                and hmac.compare_digest(mac, self._mac(key, state, key_id)))

    def _verify(self, key: str, state: dict, where: str) -> None:
        if self._lock_key_id is not None and not self._authentic(key, state):
            raise LockStateTampered(
                f"the lock state of {key!r} in its {where} (retain-until, mode, legal hold) fails its "
                "authentication check: it was edited outside the archive; nothing is changed or deleted on "
                "its strength", object_key=key, segment="lock-state")

    # --- paths and locking ---------------------------------------------------------------------------

    def _path(self, key: str, suffix: str) -> str:
        return f"{self._objects}/{check_key(key)}{suffix}"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _header(self, f, *, parse: bool = True) -> tuple[dict | None, int]:
        """(creation state, data offset) from an open ``#data`` file, leaving it at the data's first byte;
        without ``parse``, the state is skipped (None): reading an object needs only where its data starts."""
        head = f.read(len(_MAGIC) + _LEN.size)
        if len(head) < len(_MAGIC) + _LEN.size or not head.startswith(_MAGIC):
            raise StorageError(f"{f.name}: not an object file of this store")
        (length,) = _LEN.unpack_from(head, len(_MAGIC))
        if not parse:
            f.seek(len(head) + length)
            return None, len(head) + length
        try:
            return json.loads(f.read(length)), len(head) + length
        except ValueError as e:
            raise StorageError(f"{f.name}: object header is unreadable: {e}") from e

    def _state(self, key: str, *, verify: bool = True) -> tuple[dict, int, int]:
        """(lock state, data offset, data size) of ``key``: the creation state, or the latest change.
        Raises LockStateTampered when (``verify``, with lock keys) either fails its check."""
        try:
            with open(self._path(key, _DATA), "rb") as f:
                state, offset = self._header(f)
                size = os.fstat(f.fileno()).st_size - offset
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {key!r}", key=key) from None
        try:
            with open(self._path(key, _META), "rb") as f:
                changed = json.loads(f.read())
        except FileNotFoundError:
            changed = None
        except ValueError as e:
            if verify and self._lock_key_id is not None:
                raise LockStateTampered(f"the lock state of {key!r} in its #meta is unreadable ({e}): it was "
                                        "edited outside the archive", object_key=key, segment="lock-state") from e
            raise StorageError(f"lock state of {key!r} is unreadable: {e}", key=key) from e
        # The state in force must pass its check: the latest #meta, or the header when there is none. A
        # #meta naming another object id was left by a deleted object (a crash between the two unlinks)
        # and does not apply. (A header under a #meta is no longer in force: deleting the #meta to bring
        # an edited header back fails the header's check.)
        if changed is not None and changed.get("object_id") == state.get("object_id"):
            state, where = changed, "#meta"
        else:
            where = "header"
        if verify:
            self._verify(key, state, where)
        return state, offset, size

    def _change(self, key: str, state: dict) -> None:
        final = self._path(key, _META)
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.meta"
        state = self._sealed(key, state)
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(os.path.dirname(final))

    @staticmethod
    def _info(key: str, state: dict, size: int) -> ObjectInfo:
        until = state.get("retain_until")
        return ObjectInfo(
            key=key, size=size,
            retain_until=datetime.fromisoformat(until) if until else None,
            mode=LockMode(state["mode"]) if state.get("mode") else None,
            legal_hold=bool(state.get("legal_hold")),
            created=datetime.fromisoformat(state["created"]) if state.get("created") else None,
            version_id=state.get("object_id"))

    # --- ObjectStore ---------------------------------------------------------------------------------

    def _new(self, key: str, retain_until: datetime | None, mode: LockMode | str, legal_hold: bool,
             now: datetime | None = None) -> tuple[str, ObjectInfo, bytes]:
        """(path, what the store will know of it — size 0 for now, file header) for a new object created
        ``now`` (default: the store's clock now); raises what ``put`` raises up front."""
        final = self._path(key, _DATA)
        mode = LockMode.parse(mode)
        now = now or self.clock.now()
        retain_until = check_new_retention(key, retain_until, now)
        object_id = f"{self._id_prefix}{next(self._ids):016x}"
        state = self._sealed(key, {"object_id": object_id, "created": now.isoformat(), "legal_hold": bool(legal_hold),
                                   "retain_until": retain_until.isoformat() if retain_until else None,
                                   "mode": mode.value if retain_until else None})
        raw = json.dumps(state).encode()
        info = ObjectInfo(key, 0, retain_until, mode if retain_until else None, bool(legal_hold), now, object_id)
        return final, info, _MAGIC + _LEN.pack(len(raw)) + raw

    def put(self, key: str, source: BinaryIO, *, retain_until: datetime | None = None,
            mode: LockMode = LockMode.COMPLIANCE, legal_hold: bool = False) -> ObjectInfo:
        final, info, header = self._new(key, retain_until, mode, legal_hold)
        if os.path.exists(final):  # before writing what may be gigabytes (link would refuse it anyway)
            raise ObjectExists(f"object {key!r} already exists; sealed objects are written once", key=key)
        directory = os.path.dirname(final)
        try:
            _makedirs_durably(directory)
            fd = _open_unnamed(directory)
            if fd is not None:
                try:
                    size = _write_durably(fd, source, header)
                    self._link(f"/proc/self/fd/{fd}", final, key)
                finally:
                    os.close(fd)
            else:
                tmp = self.root / "tmp" / f"{info.version_id}.part"
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        size = _write_durably(fd, source, header)
                        os.fchmod(fd, 0o444)
                    finally:
                        os.close(fd)
                    self._link(tmp, final, key)
                finally:
                    tmp.unlink(missing_ok=True)
            _fsync_dir(directory)
        except NotADirectoryError as e:
            raise StorageError(f"object key {key!r} collides with an existing path: {e}", key=key) from e
        return _sized(info, size)

    def put_many(self, requests: Sequence[PutRequest]) -> list[ObjectInfo | ArchiveError]:
        """Write a group of objects with one flush per step (the group commit in the module docstring)."""
        results: list[ObjectInfo | ArchiveError | None] = [None] * len(requests)
        staged: list[_Staged] = []
        changed: set[str] = set()  # directories whose entries changed: new subdirectories, new names
        present: set[str] = set()  # directories known to exist
        now = self.clock.now()  # the group's objects are created together
        try:
            for i, r in enumerate(requests):  # (1) every object into a nameless file, no flush yet
                try:
                    staged.append(self._stage(i, r, changed, present, now))
                except ArchiveError as e:
                    results[i] = e
            if not staged:
                return results
            self._flush_files([s.fd for s in staged])  # (2) their bytes durable
            for s in staged:  # (3) names
                try:
                    if s.tmp is None:
                        self._link(f"/proc/self/fd/{s.fd}", s.final, s.key)
                    else:
                        self._link(s.tmp, s.final, s.key)
                except ObjectExists as e:
                    results[s.index] = e
                    continue
                changed.add(os.path.dirname(s.final))
                results[s.index] = _sized(s.info, s.size)
            self._flush_names(changed)  # (4) names durable: only now is any of it acknowledged
        finally:
            for s in staged:
                os.close(s.fd)
                if s.tmp is not None:
                    s.tmp.unlink(missing_ok=True)
        return results

    def _stage(self, index: int, r: PutRequest, changed: set[str], present: set[str], now: datetime) -> _Staged:
        # No check for an existing object first: the objects of a group are small, and link() refuses.
        final, info, header = self._new(r.key, r.retain_until, r.mode, r.legal_hold, now)
        directory = os.path.dirname(final)
        if directory not in present:
            try:
                self._makedirs(directory, changed)
            except NotADirectoryError as e:
                raise StorageError(f"object key {r.key!r} collides with an existing path: {e}", key=r.key) from e
            present.add(directory)
        tmp = None
        fd = _open_unnamed(directory)
        if fd is None:
            tmp = self.root / "tmp" / f"{info.version_id}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = _write_durably(fd, r.source, header, sync=False)
            if tmp is not None:
                os.fchmod(fd, 0o444)
        except BaseException:
            os.close(fd)
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
        return _Staged(index, r.key, final, fd, tmp, info, size)

    @staticmethod
    def _makedirs(path: str, changed: set[str]) -> None:
        """Create ``path`` and missing parents, noting each parent whose entries changed (flushed later)."""
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            try:
                os.mkdir(directory)
            except FileExistsError:
                pass  # another writer made it and may not have flushed its parent yet: we flush it too
            changed.add(os.path.dirname(directory))

    def _syncfs(self) -> None:
        try:
            _syncfs(self._root_fd)
        except OSError as e:
            raise StorageError(f"{self.root}: could not flush the store to disk: {e}", path=str(self.root)) from e

    def _flush_files(self, fds: list[int]) -> None:
        if _syncfs is not None:
            self._syncfs()  # one journal commit for every file of the group
            if _SYNCFS_REPORTS_ERRORS:
                return
        try:
            for fd in fds:  # after syncfs: nothing left to write; reports a write error the kernel saw
                os.fsync(fd)
        except OSError as e:
            raise StorageError(f"{self.root}: could not flush an object to disk: {e}", path=str(self.root)) from e

    def _flush_names(self, directories: set[str]) -> None:
        if _syncfs is not None:
            self._syncfs()
            return
        try:
            for directory in sorted(directories):
                _fsync_dir(directory)
        except OSError as e:
            raise StorageError(f"{self.root}: could not flush a directory to disk: {e}", path=str(self.root)) from e

    def _link(self, source: str | Path, final: str, key: str) -> None:
        # linkat() with AT_SYMLINK_FOLLOW (which /proc/self/fd needs) is only used by os.link when a
        # directory fd is given: the name is linked relative to objects/. link is atomic and never
        # replaces: the first writer of a key wins.
        try:
            os.link(source, final[len(self._objects) + 1:], dst_dir_fd=self._objects_fd, follow_symlinks=True)
        except FileExistsError:
            raise ObjectExists(f"object {key!r} already exists; sealed objects are written once", key=key) from None

    def open(self, key: str) -> BinaryIO:
        try:
            f = open(self._path(key, _DATA), "rb", buffering=_READ_BUFFER)  # (a size given: no isatty() call)
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {key!r}", key=key) from None
        try:
            self._header(f, parse=False)  # leaves the file positioned at the object's first byte
        except BaseException:
            f.close()
            raise
        return f

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        with self.open(key) as f:
            return os.pread(f.fileno(), length, f.tell() + offset)

    def head(self, key: str) -> ObjectInfo:
        state, _, size = self._state(key)
        return self._info(key, state, size)

    def set_legal_hold(self, key: str, on: bool) -> None:
        with self._locked():
            state, _, _ = self._state(key)
            self._change(key, {**state, "legal_hold": bool(on)})

    def extend_retention(self, key: str, retain_until: datetime, mode: LockMode | None = None) -> None:
        retain_until = check_retain_until(retain_until)
        with self._locked():
            state, _, size = self._state(key)
            new_mode = check_extension(self._info(key, state, size), retain_until, mode, self.clock.now())
            self._change(key, {**state, "retain_until": retain_until.isoformat(), "mode": new_mode.value})

    def delete(self, key: str, *, bypass_governance: bool = False) -> None:
        with self._locked():
            state, _, size = self._state(key)
            check_deletable(self._info(key, state, size), bypass_governance=bypass_governance, now=self.clock.now())
            data = self._path(key, _DATA)
            os.unlink(data)
            try:
                os.unlink(self._path(key, _META))
            except FileNotFoundError:
                pass
            _fsync_dir(os.path.dirname(data))

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._objects
        start = f"{base}/{check_key(prefix.rsplit('/', 1)[0])}" if "/" in prefix else base  # only under the prefix
        if not os.path.isdir(start):  # (asked for every new record: is it there already?)
            return
        found = []
        for dirpath, _dirs, files in os.walk(start):
            rel = os.path.relpath(dirpath, base)
            for name in files:
                if name.endswith(_DATA):
                    key = name[: -len(_DATA)] if rel == "." else f"{rel}/{name[: -len(_DATA)]}"
                    if key.startswith(prefix):
                        found.append(key)
        yield from sorted(found)
