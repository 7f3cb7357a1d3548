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

**Signed batches.** Each batch also carries the Merkle tree's compact range after its last event
(``peaks``: the roots of its perfect subtrees, from which the tree head follows), the newest checkpoint
its writer knew (``known_checkpoint``), and an Ed25519 signature by the current signing key over the
batch number, its first sequence number, its event count, its last event's leaf hash (which, through the
``prev`` chain, commits to every event before it) and the peaks. So the newest events — those after the
newest checkpoint — cannot be rewritten or cut short inside a batch without the signing key, and a
writer resumes the tree from the head batch without re-reading the log.

**Checkpoints** are RFC 6962 tree heads (leaf = SHA-256(0x00 ‖ event), node = SHA-256(0x01 ‖ l ‖ r)) over
all events so far, signed with Ed25519 by the current signing key (:class:`archive.audit.signing`). The
verifier recomputes every root from the events and checks each signature against *trusted* public keys
(the keyring's, not only the store's), so a forged, rolled-back or inconsistent checkpoint is named.

**Automatic checkpoints.** After writing a batch, the writer checkpoints when the batch crossed a multiple
of ``checkpoint_every`` events (exactly one batch crosses each multiple, so exactly one writer of many
checkpoints it), or when the newest checkpoint it knows is older than ``checkpoint_interval`` — it costs
one signature and one small write, since the root comes from the peaks the writer already holds.
Checkpoints are write-once under their size, so racing writers never fork: the same size has one root.
Each checkpoint is also published to the **witness** outside the archive (:mod:`archive.audit.witness`).

What stays unprovable: whole batches after the newest witnessed checkpoint can be deleted, together with
their checkpoints, by someone with delete rights in the store — at most ``checkpoint_every`` events or
``checkpoint_interval`` of them, the bound the two settings give (see docs/audit.md).
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from archive.audit.merkle import MerkleAccumulator, leaf_hash
from archive.dates import Duration
from archive.errors import ArchiveError, AuditError, ObjectExists, ObjectNotFound
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
    """Append events; read them back in order; write signed checkpoints (on demand and automatically)."""

    def __init__(self, store: ObjectStore, *, retention: Duration, signer=None,
                 lock_mode: LockMode = LockMode.COMPLIANCE, checkpoint_every: int = 1000,
                 checkpoint_interval: float = 300.0, witness=None) -> None:
        if checkpoint_every < 1 or checkpoint_interval <= 0:
            raise AuditError("automatic checkpoints need checkpoint_every >= 1 and checkpoint_interval > 0")
        self.store = store
        self.signer = signer
        self.retention = retention
        self.lock_mode = lock_mode
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.witness = witness
        self.witness_error: str | None = None  # why the last publication to the witness failed, if it did
        self._lock = threading.Lock()  # the writer's: one batch at a time from this process
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []  # events waiting for the next batch (group commit)
        self._head: tuple[int, int, str] | None = None  # (batch number, next seq, last leaf hash hex)
        self._acc: MerkleAccumulator | None = None  # the tree of every event before the head's next seq
        self._known: tuple[int, float] | None = None  # newest checkpoint known: (size, epoch seconds)
        self._checkpoint_due = False  # an automatic checkpoint failed: try again after the next batch
        self._key_published: str | None = None
        self._unrebuildable = False  # the tree could not be rebuilt from a damaged log: batches go without peaks

    # --- appending -------------------------------------------------------------------------------------

    def append(self, event: Event) -> int:
        """Append one event; returns its sequence number."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Event]) -> list[int]:
        """Append events as one batch, in order; returns their sequence numbers (once they are stored).

        Group commit: threads appending at the same time share one batch. A thread queues its events, then
        whoever holds the writer's lock next writes every queued event as one batch, in queue order, so
        an API under load makes one store write for many requests instead of one each. The writer then
        checkpoints when one is due (see the module docstring); a checkpoint that fails does not fail the
        append (the events are stored) and is tried again after the next batch."""
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
                    end = first
                    for p in group:
                        p.seqs = list(range(end, end + len(p.docs)))
                        end += len(p.docs)
                    self._checkpoint_if_due(first, end)
        if mine.error is not None:
            raise mine.error
        return mine.seqs

    def _write_batch(self, docs: list[dict]) -> int:
        """Write ``docs`` as the next batch (the writer's lock held); returns the first sequence number."""
        for _ in range(1000):
            if self._head is None:
                self._find_head()
            batch, seq, prev = self._head
            if self._acc is None and not self._unrebuildable and self.signer is not None:
                try:
                    self._acc = self._rebuild(seq)
                except AuditError:  # a damaged log (verification names where): still record the events
                    self._unrebuildable = True
            raws, leaves = [], []
            for i, doc in enumerate(docs):
                raw = _canonical({**doc, "seq": seq + i, "prev": prev})
                leaf = leaf_hash(raw)
                leaves.append(leaf)
                prev = leaf.hex()
                raws.append(raw)
            acc = self._acc.copy() if self._acc is not None else None
            if acc is not None:
                acc.extend(leaves)
            peaks = [p.hex() for p in acc.peaks] if acc is not None else []
            tail: dict[str, Any] = {"peaks": peaks} if acc is not None else {}
            if self._known is not None:
                tail["known_checkpoint"] = {"size": self._known[0], "time": _iso(self._known[1])}
            if self.signer is not None:
                tail["key_id"] = self.signer.key_id
                tail["signature"] = self.signer.sign(batch_signed_bytes(
                    batch + 1, seq, len(raws), prev, peaks, self.signer.key_id)).hex()
            body = b"".join([b'{"format":"', BATCH_FORMAT.encode(), b'","batch":', str(batch + 1).encode(),
                             b',"first_seq":', str(seq).encode(), b',"events":[', b",".join(raws), b"],",
                             _canonical(tail)[1:]])
            try:
                self.store.put(_batch_key(batch + 1), io.BytesIO(body), retain_until=self._retain_until(),
                               mode=self.lock_mode)
            except ObjectExists:  # another writer took this number: read its batch, append after it
                # (one read per batch written meanwhile, not a new search for the head)
                try:
                    self._absorb(batch + 1, self._read_batch(batch + 1))
                except (ObjectNotFound, AuditError, KeyError, IndexError, TypeError):
                    self._head = self._acc = None
                continue
            except BaseException:
                self._head = self._acc = None  # whatever happened to the write, find the head again next time
                raise
            self._head, self._acc = (batch + 1, seq + len(raws), prev), acc
            return seq
        raise AuditError("could not append to the audit log: too many concurrent writers")

    def _absorb(self, number: int, doc: dict) -> None:
        """Move the head past batch ``number`` that another writer wrote: its events extend the tree."""
        events = doc["events"]
        if self._acc is not None:
            for event in events:
                self._acc.append(leaf_hash(_canonical(event)))
        last = events[-1]
        self._head = (number, last["seq"] + 1, leaf_hash(_canonical(last)).hex())
        self._learn(doc.get("known_checkpoint"))

    def _learn(self, known) -> None:
        """Take note of a checkpoint another writer knew of, when it is newer than ours."""
        try:
            size, when = int(known["size"]), datetime.fromisoformat(known["time"]).timestamp()
        except (TypeError, KeyError, ValueError):
            return
        if self._known is None or size > self._known[0]:
            self._known = (size, when)

    def _retain_until(self) -> datetime:
        return self.retention.after(datetime.now(UTC))

    def _exists(self, number: int) -> bool:
        try:
            self.store.head(_batch_key(number))
            return True
        except ObjectNotFound:
            return False

    def _find_head(self) -> tuple[int, int, str]:
        """Find the newest batch and resume from it: (number, next sequence number, leaf hash of the last
        event), and the tree up to there from its peaks when its signature shows this archive's signing
        key wrote them (otherwise the tree is rebuilt from the events when it is first needed).

        Batches are numbered 1…n without gaps, so n is found with O(log n) existence checks (doubling,
        then bisecting) instead of listing the whole log on every command. A gap made by tampering only
        makes a writer append into it, where verification still reports the break."""
        self._acc = None
        if not self._exists(1):
            self._head, self._acc = (0, 0, ZERO), MerkleAccumulator()
            return self._head
        low, high = 1, 2  # batch ``low`` exists; find a ``high`` that does not
        while self._exists(high):
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self._exists(middle) else (low, middle)
        doc = self._read_batch(low)
        last = doc["events"][-1]
        self._head = (low, last["seq"] + 1, leaf_hash(_canonical(last)).hex())
        self._acc = self._trusted_peaks(low, doc)
        self._learn(doc.get("known_checkpoint"))
        try:  # its writer may have checkpointed right after it (then the batch could not say so)
            info = self.store.head(f"audit/checkpoints/{self._head[1]:012d}.json")
            if info.created is not None:
                self._learn({"size": self._head[1], "time": info.created.isoformat()})
        except ObjectNotFound:
            pass
        return self._head

    def _trusted_peaks(self, number: int, doc: dict) -> MerkleAccumulator | None:
        """The tree after batch ``number`` from its peaks, if the current signing key signed them. (A
        writer without a signing key signs nothing and checkpoints nothing: it carries the peaks forward
        as they are, and verification checks them only in signed batches.)"""
        try:
            events, peaks = doc["events"], doc["peaks"]
            if self.signer is not None:
                if doc.get("key_id") != self.signer.key_id:
                    return None
                last = leaf_hash(_canonical(events[-1])).hex()
                signed = batch_signed_bytes(number, doc["first_seq"], len(events), last, peaks, doc["key_id"])
                Ed25519PublicKey.from_public_bytes(self.signer.public_key).verify(bytes.fromhex(doc["signature"]),
                                                                                  signed)
            return MerkleAccumulator.from_peaks(events[-1]["seq"] + 1, [bytes.fromhex(p) for p in peaks])
        except (InvalidSignature, KeyError, TypeError, ValueError, IndexError):
            return None

    def _rebuild(self, size: int) -> MerkleAccumulator:
        """The tree of the first ``size`` events, from the events themselves (a log written before batches
        carried their peaks, or whose head batch is not signed by the current key)."""
        acc = MerkleAccumulator()
        for logged in self.events():
            if acc.size == size:
                break
            acc.append(logged.leaf)
        if acc.size != size:
            raise AuditError(f"the audit log holds {acc.size} events, fewer than its head batch says ({size})")
        return acc

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
        with self._lock:
            self._find_head()
            _, size, _ = self._head
            if self._acc is None:
                self._acc = self._rebuild(size)
            return self._write_checkpoint(size, self._acc.root())

    def checkpoint_at(self, size: int, root: bytes) -> dict:
        """Sign and store the tree head (``size``, ``root``) that the caller computed from the events —
        the verifier, for the log it has just verified. Idempotent."""
        if self.signer is None:
            raise AuditError("no signing key: checkpoints need the key provider's signing key")
        return self._write_checkpoint(size, root)

    def _checkpoint_if_due(self, first: int, size: int) -> None:
        """After a batch of the events ``first``…``size - 1`` (the writer's lock held): checkpoint at
        ``size`` when the batch crossed a multiple of ``checkpoint_every``, or the newest checkpoint known
        is older than ``checkpoint_interval`` (or none is known)."""
        if self.signer is None or self._acc is None:
            return
        due = self._checkpoint_due or size // self.checkpoint_every > first // self.checkpoint_every
        if not due:
            known = self._known
            due = known is None or (size > known[0] and time.time() - known[1] >= self.checkpoint_interval)
        if not due:
            return
        try:
            self._write_checkpoint(size, self._acc.root())
            self._checkpoint_due = False
        except (ArchiveError, OSError):
            self._checkpoint_due = True  # the events are stored; the checkpoint comes after the next batch

    def _write_checkpoint(self, size: int, root: bytes) -> dict:
        head = {"format": CHECKPOINT_FORMAT, "size": size, "root": root.hex(),
                "time": datetime.now(UTC).isoformat(timespec="seconds"), "key_id": self.signer.key_id}
        head["signature"] = self.signer.sign(signed_bytes(head)).hex()
        if self._key_published != self.signer.key_id:
            self.publish_key()
            self._key_published = self.signer.key_id
        key = f"audit/checkpoints/{size:012d}.json"
        try:
            self.store.put(key, io.BytesIO(_canonical(head)), retain_until=self._retain_until(), mode=self.lock_mode)
        except ObjectExists:  # written before, or by a racing writer: the same size has the same root
            with self.store.open(key) as f:
                head = json.loads(f.read())
        if self._known is None or size >= self._known[0]:
            self._known = (size, time.time())
        self.publish(head)
        return head

    def publish(self, head: dict) -> None:
        """Give ``head`` to the witness outside the archive (when there is one). A witness that cannot be
        reached fails nothing here — ``audit verify`` reports it — and is tried again at the next one."""
        if self.witness is None:
            return
        try:
            self.witness.publish(head)
            self.witness_error = None
        except (ArchiveError, OSError) as e:
            self.witness_error = str(e)

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


def batch_signed_bytes(number: int, first_seq: int, count: int, last_leaf: str, peaks: list[str],
                       key_id: str) -> bytes:
    """What a batch signature covers: batch number, first sequence number, event count, the last event's
    leaf hash (hex) and the tree's peaks after it (hex, comma-separated), one per line."""
    return "\n".join([BATCH_FORMAT, str(number), str(first_seq), str(count), last_leaf, ",".join(peaks),
                      key_id]).encode()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def signed_bytes(head: dict) -> bytes:
    """What a checkpoint signature covers: format, size, root, time and key id, one per line."""
    return "\n".join([CHECKPOINT_FORMAT, str(head["size"]), head["root"], head["time"], head["key_id"]]).encode()


def _batch_key(number: int) -> str:
    return f"audit/log/{number:012d}.json"
