"""The audit log: append-only, totally ordered events in the object store, Merkle-checkpointed and signed.

Layout in the store (every object written once, under retention lock)::

    audit/log/<batch:012d>.json         a batch of events, numbered from 1 without gaps
    audit/checkpoints/<size:012d>.json  a signed tree head: tree size, RFC 6962 root, time, key id
    audit/keys/<key id>.json            the public half of each checkpoint signing key

**Events** carry metadata and hashes, never content (actor, role, action, target record ids or query,
reason or case, time, origin, outcome), so disposing of a record never breaks the trail. Each event's
canonical JSON holds its sequence number and ``prev``, the leaf hash of the event before it: a deleted,
inserted, reordered or modified event breaks the sequence or the chain at its position.

**Order without forks.** A writer reads the newest batch, then writes batch n + 1 with the store's
write-once put (``link()`` on the filesystem, ``If-None-Match`` on S3). Two writers racing for the same
number: one wins, the other re-reads and appends after it. So any number of workers produce one linear
log. Batches of many events make appends cheap (one store write per batch).

**Checkpoints** are RFC 6962 tree heads (leaf = SHA-256(0x00 ‖ event), node = SHA-256(0x01 ‖ l ‖ r)) over
all events so far, signed with Ed25519 by the current signing key (:class:`archive.audit.signing`). The
verifier recomputes every root from the events and checks each signature against *trusted* public keys
(the keyring's, not only the store's), so a forged, rolled-back or inconsistent checkpoint is named.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from archive.audit.merkle import MerkleAccumulator, leaf_hash
from archive.dates import Duration
from archive.errors import AuditError, ObjectExists, ObjectNotFound
from archive.store.base import LockMode, ObjectStore

BATCH_FORMAT = "archive-audit-batch/1"
CHECKPOINT_FORMAT = "archive-checkpoint/1"
ZERO = "0" * 64
OUTCOMES = ("ok", "denied", "error")
_HOST = socket.gethostname()  # (an event's origin: read once, not per event)


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Event:
    """One attributable action. ``target`` names record ids (``records``), a ``query`` or an ``object``."""

    actor: str
    role: str
    action: str
    outcome: str = "ok"
    target: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    case: str | None = None
    origin: str = ""
    time: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        doc = {"actor": self.actor, "role": self.role, "action": self.action, "outcome": self.outcome,
               "target": self.target, "time": self.time or datetime.now(UTC).isoformat(timespec="milliseconds"),
               "origin": self.origin or f"{_HOST}:{os.getpid()}"}
        for key in ("reason", "case"):
            if getattr(self, key):
                doc[key] = getattr(self, key)
        if self.details:
            doc["details"] = self.details
        return doc


@dataclass(frozen=True)
class Logged:
    """An event as the log holds it: its position, its exact bytes and its leaf hash."""

    seq: int
    raw: bytes
    leaf: bytes

    @property
    def event(self) -> dict:
        return json.loads(self.raw)


@dataclass
class _Pending:
    docs: list[dict]
    seqs: list[int] | None = None
    error: BaseException | None = None


class AuditLog:
    """Append events; read them back in order; write signed checkpoints."""

    def __init__(self, store: ObjectStore, *, retention: Duration, signer=None,
                 lock_mode: LockMode = LockMode.COMPLIANCE) -> None:
        self.store = store
        self.signer = signer
        self.retention = retention
        self.lock_mode = lock_mode
        self._lock = threading.Lock()  # the writer's: one batch at a time from this process
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []  # events waiting for the next batch (group commit)
        self._head: tuple[int, int, str] | None = None  # (batch number, next seq, last leaf hash hex)

    # --- appending -------------------------------------------------------------------------------------

    def append(self, event: Event) -> int:
        """Append one event; returns its sequence number."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Event]) -> list[int]:
        """Append events as one batch, in order; returns their sequence numbers (once they are stored).

        Group commit: threads appending at the same time share one batch. A thread queues its events, then
        whoever holds the writer's lock next writes every queued event as one batch, in queue order, so
        an API under load makes one store write for many requests instead of one each."""
        docs = [e.as_dict() for e in events]
        for doc in docs:
            if doc["outcome"] not in OUTCOMES:
                raise AuditError(f"event outcome must be one of {OUTCOMES}, not {doc['outcome']!r}")
        if not docs:
            return []
        mine = _Pending(docs)
        with self._queue_lock:
            self._queue.append(mine)
        with self._lock:
            if mine.seqs is None and mine.error is None:  # no one wrote it meanwhile: write all that waits
                with self._queue_lock:
                    group, self._queue = self._queue, []
                try:
                    first = self._write_batch([d for p in group for d in p.docs])
                except BaseException as e:  # every waiting event fails with it
                    for p in group:
                        p.error = e
                else:
                    for p in group:
                        p.seqs = list(range(first, first + len(p.docs)))
                        first += len(p.docs)
        if mine.error is not None:
            raise mine.error
        return mine.seqs

    def _write_batch(self, docs: list[dict]) -> int:
        """Write ``docs`` as the next batch (the writer's lock held); returns the first sequence number."""
        for _ in range(1000):
            batch, seq, prev = self._head or self._find_head()
            raws = []
            for i, doc in enumerate(docs):
                raw = _canonical({**doc, "seq": seq + i, "prev": prev})
                prev = leaf_hash(raw).hex()
                raws.append(raw)
            body = b"".join([b'{"format":"', BATCH_FORMAT.encode(), b'","batch":', str(batch + 1).encode(),
                             b',"first_seq":', str(seq).encode(), b',"events":[', b",".join(raws), b"]}"])
            try:
                self.store.put(_batch_key(batch + 1), io.BytesIO(body), retain_until=self._retain_until(),
                               mode=self.lock_mode)
            except ObjectExists:  # another writer took this number: read its batch, append after it
                # (one read per batch written meanwhile, not a new search for the head)
                try:
                    last = self._read_batch(batch + 1)["events"][-1]
                    self._head = (batch + 1, last["seq"] + 1, leaf_hash(_canonical(last)).hex())
                except (ObjectNotFound, AuditError, KeyError, IndexError):
                    self._head = None
                continue
            except BaseException:
                self._head = None  # whatever happened to the write, find the head again next time
                raise
            self._head = (batch + 1, seq + len(raws), prev)
            return seq
        raise AuditError("could not append to the audit log: too many concurrent writers")

    def _retain_until(self) -> datetime:
        return self.retention.after(datetime.now(UTC))

    def _exists(self, number: int) -> bool:
        try:
            self.store.head(_batch_key(number))
            return True
        except ObjectNotFound:
            return False

    def _find_head(self) -> tuple[int, int, str]:
        """The newest batch: (number, next sequence number, leaf hash of the last event).

        Batches are numbered 1…n without gaps, so n is found with O(log n) existence checks (doubling,
        then bisecting) instead of listing the whole log on every command. A gap made by tampering only
        makes a writer append into it, where verification still reports the break."""
        if not self._exists(1):
            return 0, 0, ZERO
        low, high = 1, 2  # batch ``low`` exists; find a ``high`` that does not
        while self._exists(high):
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self._exists(middle) else (low, middle)
        last = self._read_batch(low)["events"][-1]
        return low, last["seq"] + 1, leaf_hash(_canonical(last)).hex()

    def _read_batch(self, number: int) -> dict:
        with self.store.open(_batch_key(number)) as f:
            raw = f.read()
        try:
            return json.loads(raw)
        except ValueError as e:
            raise AuditError(f"{_batch_key(number)} is not valid JSON: {e}") from e

    # --- reading ---------------------------------------------------------------------------------------

    def batches(self) -> Iterator[tuple[int, bytes]]:
        """(number, raw bytes) of every batch in the store, in key order."""
        for key in self.store.list("audit/log/"):
            number = int(key.rsplit("/", 1)[1].split(".")[0])
            with self.store.open(key) as f:
                yield number, f.read()

    def events(self) -> Iterator[Logged]:
        """Every event in log order, as stored (no verification: see :mod:`archive.audit.verify`)."""
        for _number, raw in self.batches():
            for doc in json.loads(raw)["events"]:
                event_raw = _canonical(doc)
                yield Logged(doc["seq"], event_raw, leaf_hash(event_raw))

    # --- checkpoints -----------------------------------------------------------------------------------

    def checkpoint(self) -> dict:
        """Sign and store a tree head over every event so far. Idempotent for an unchanged log."""
        if self.signer is None:
            raise AuditError("no signing key: checkpoints need the key provider's signing key")
        acc = MerkleAccumulator()
        for logged in self.events():
            acc.append(logged.leaf)
        head = {"format": CHECKPOINT_FORMAT, "size": acc.size, "root": acc.root().hex(),
                "time": datetime.now(UTC).isoformat(timespec="seconds"), "key_id": self.signer.key_id}
        head["signature"] = self.signer.sign(signed_bytes(head)).hex()
        self.publish_key()
        try:
            self.store.put(f"audit/checkpoints/{acc.size:012d}.json", io.BytesIO(_canonical(head)),
                           retain_until=self._retain_until(), mode=self.lock_mode)
        except ObjectExists:
            with self.store.open(f"audit/checkpoints/{acc.size:012d}.json") as f:
                return json.loads(f.read())
        return head

    def publish_key(self) -> None:
        """Store the current signing key's public half (once), so bundles and verifiers can find it."""
        key = f"audit/keys/{self.signer.key_id}.json"
        doc = {"key_id": self.signer.key_id, "algorithm": "Ed25519", "public_key": self.signer.public_key.hex()}
        try:
            self.store.put(key, io.BytesIO(_canonical(doc)), retain_until=self._retain_until(), mode=self.lock_mode)
        except ObjectExists:
            pass

    def checkpoints(self) -> Iterator[tuple[str, dict]]:
        for key in self.store.list("audit/checkpoints/"):
            with self.store.open(key) as f:
                yield key, json.loads(f.read())


def signed_bytes(head: dict) -> bytes:
    """What a checkpoint signature covers: format, size, root, time and key id, one per line."""
    return "\n".join([CHECKPOINT_FORMAT, str(head["size"]), head["root"], head["time"], head["key_id"]]).encode()


def _batch_key(number: int) -> str:
    return f"audit/log/{number:012d}.json"
