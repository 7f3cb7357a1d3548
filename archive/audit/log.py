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

**Staged events (the workers' path).** Writers that must not wait on the head — Celery workers, many
at a time on many machines — do not append: :meth:`AuditLog.stage_many` writes their events, signed, as
one write-once object ``audit/staged/<ms>-<random>.json`` under a name no one else uses, so stagers never
contend. An *integrator* (:meth:`AuditLog.integrate`; one at a time in a deployment, elected by a Redis
lease, though racing integrators are safe) lists what is staged, checks each staged object's signature,
appends all of their events as one batch, and only then deletes the staged objects. Queueing apart from
sequencing, as Trillian does. Each batch names, in ``staged``, the staged objects integrated but perhaps
not yet deleted — the ones its writer integrated and every one named by the batch before it that still
exists — so an integrator killed between its batch and its deletes leaves nothing a successor integrates
twice: the head batch says what is in the log already. A staged object whose signature does not hold is
not integrated: an ``audit-staged-invalid`` event naming it and its SHA-256 is, and the object is kept,
locked, under ``audit/staged-invalid/``.

What stays unprovable: whole batches after the newest witnessed checkpoint can be deleted, together with
their checkpoints, by someone with delete rights in the store — at most ``checkpoint_every`` events or
``checkpoint_interval`` of them, the bound the two settings give (see docs/audit.md); and staged objects
not integrated yet (unlocked, so that the integrator can delete them), by the same person, for as long as
they wait — the integration interval.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
import time
import uuid
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
STAGED_FORMAT = "archive-audit-staged/1"
STAGED = "audit/staged/"
STAGED_INVALID = "audit/staged-invalid/"  # staged objects that failed their checks, kept as found
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
        self._staged: set[str] = set()  # staged objects in the log already (the head batch's ``staged``)
        self._stager, self._stage_ms, self._stage_count = uuid.uuid4().hex[:16], 0, 0

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
        docs = _docs(events)
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
                    first = self._write_batch([(None, [d for p in group for d in p.docs])])
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

    def _write_batch(self, items: list[tuple[str | None, list[dict]]]) -> int:
        """Write the events of ``items`` — (staged object or None, its events) — as the next batch (the
        writer's lock held); returns the first sequence number. Events of a staged object that a batch
        written meanwhile integrated are left out (another integrator was first)."""
        for _ in range(1000):
            if self._head is None:
                self._find_head()
            items = [(key, docs) for key, docs in items if key is None or key not in self._staged]
            docs = [d for _, ds in items for d in ds]
            if not docs:
                return self._head[1]
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
            staged = self._staged | {key for key, _ in items if key is not None}
            if staged:
                tail["staged"] = sorted(staged)
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
            self._head, self._acc, self._staged = (batch + 1, seq + len(raws), prev), acc, staged
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
        # its writer carried every staged object integrated before it that still existed when it listed
        self._staged = _staged_of(doc)
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
        self._acc, self._staged = None, set()
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
        self._staged = _staged_of(doc)
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

    # --- staging and integrating (the workers' path: see the module docstring) ----------------------

    def stage_many(self, events: Iterable[Event]) -> str | None:
        """Record events without waiting on the log's head: one write-once object of their own, signed,
        that :meth:`integrate` appends later. Durable when this returns. Returns its key (None: no events).
        """
        docs = _docs(events)
        if not docs:
            return None
        with self._queue_lock:  # names sort in staging order: time, then this stager's own count
            self._stage_ms = max(self._stage_ms, time.time_ns() // 1_000_000)
            self._stage_count += 1
            key = f"{STAGED}{self._stage_ms:013d}-{self._stager}-{self._stage_count:010d}.json"
        body: dict[str, Any] = {"format": STAGED_FORMAT, "key": key, "events": docs}
        if self.signer is not None:
            body["key_id"] = self.signer.key_id
            body["signature"] = self.signer.sign(staged_signed_bytes(key, docs, self.signer.key_id)).hex()
        # Not locked: the integrator deletes it once its events are in a (locked) batch.
        self.store.put(key, io.BytesIO(_canonical(body)))
        return key

    def staged(self) -> list[str]:
        """The staged objects waiting for :meth:`integrate`, oldest first."""
        return sorted(self.store.list(STAGED))

    def integrate(self, *, limit: int = 2000, trusted_keys: dict[str, bytes] | None = None, pool=None) -> int:
        """Append every staged object's events (at most ``limit`` objects) as one batch, in staging order,
        then delete the staged objects; returns how many events were integrated. Safe to run in several
        processes at once (each staged object is integrated once: see the module docstring), cheap when
        nothing is staged (one listing). ``trusted_keys`` (default: this log's signing key) are the keys a
        staged object may be signed by; ``pool`` an executor for the reads and deletes. A process without
        the signing key integrates nothing (its batches could not be signed)."""
        if self.signer is None:
            return 0
        trusted_keys = {**(trusted_keys or {}), self.signer.key_id: self.signer.public_key}
        listed = self.staged()
        if not listed:
            return 0
        with self._lock:
            if self._head is None:
                self._find_head()
            self._staged &= set(listed)  # deleted ones are gone for good (names are never reused)
            leftover = sorted(self._staged)  # in the log already: an integrator stopped before deleting them
            todo = [k for k in listed if k not in self._staged][:limit]
            items = []
            if todo:
                read = list((pool.map if pool is not None else map)(self._read_staged, todo))
                items = [(key, self._staged_events(key, raw, trusted_keys)) for key, raw in zip(todo, read)]
                items = [(key, docs) for key, docs in items if docs is not None]
                before = self._head[1]
                first = self._write_batch(items)
                end = self._head[1]
                self._checkpoint_if_due(first, end)
            else:
                before = end = 0

        def delete(key: str) -> None:
            try:
                self.store.delete(key)
            except ObjectNotFound:
                pass
        list((pool.map if pool is not None else map)(delete, leftover + [key for key, _ in items]))
        return end - before

    def integrate_all(self, *, trusted_keys: dict[str, bytes] | None = None, pool=None) -> int:
        """:meth:`integrate` until nothing is left (readers of the whole trail first do this, when this
        process can sign): returns the events integrated."""
        total = 0
        while n := self.integrate(trusted_keys=trusted_keys, pool=pool):
            total += n
        return total

    def _read_staged(self, key: str) -> bytes | None:
        try:
            with self.store.open(key) as f:
                return f.read()
        except ObjectNotFound:  # integrated and deleted by another integrator meanwhile
            return None

    def _staged_events(self, key: str, raw: bytes | None, trusted_keys: dict[str, bytes]) -> list[dict] | None:
        """The events of staged object ``key`` as read (``raw``), or one ``audit-staged-invalid`` event
        when it is not what a stager wrote (altered, renamed, unsigned where signatures are required)."""
        if raw is None:
            return None
        problem = None
        try:
            doc = json.loads(raw)
            docs = doc["events"]
            if doc.get("format") != STAGED_FORMAT or doc.get("key") != key or not docs:
                problem = "not a staged batch of events under its own name"
            elif trusted_keys or "signature" in doc:
                public = trusted_keys.get(doc.get("key_id"))
                if public is None:
                    problem = f"signed by {doc.get('key_id')!r}, not a trusted key"
                else:
                    Ed25519PublicKey.from_public_bytes(public).verify(
                        bytes.fromhex(doc["signature"]), staged_signed_bytes(key, docs, doc["key_id"]))
            if problem is None and not all(isinstance(d, dict) and d.get("outcome") in OUTCOMES for d in docs):
                problem = "holds events that are not events"
        except (ValueError, KeyError, TypeError, InvalidSignature) as e:
            problem = f"unreadable or its signature does not match ({type(e).__name__})"
        if problem is None:
            return docs
        # kept as found, locked like the log, before the event that names it is written
        kept = f"{STAGED_INVALID}{key[len(STAGED):]}"
        try:
            self.store.put(kept, io.BytesIO(raw), retain_until=self._retain_until(), mode=self.lock_mode)
        except ObjectExists:
            pass
        return [Event(actor="(archive)", role="system", action="audit-staged-invalid", outcome="error",
                      target={"object": key, "kept": kept},
                      details={"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw),
                               "problem": problem}).as_dict()]

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


def staged_signed_bytes(key: str, docs: list[dict], key_id: str) -> bytes:
    """What a staged object's signature covers: its own key (so it cannot be replayed under another) and
    the SHA-256 of its events' canonical JSON, one per line."""
    return "\n".join([STAGED_FORMAT, key, hashlib.sha256(_canonical(docs)).hexdigest(), key_id]).encode()


def _docs(events: Iterable[Event]) -> list[dict]:
    docs = [e.as_dict() for e in events]
    for doc in docs:
        if doc["outcome"] not in OUTCOMES:
            raise AuditError(f"event outcome must be one of {OUTCOMES}, not {doc['outcome']!r}")
    return docs


def _staged_of(doc: dict) -> set[str]:
    staged = doc.get("staged")
    return {k for k in staged if isinstance(k, str)} if isinstance(staged, list) else set()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def signed_bytes(head: dict) -> bytes:
    """What a checkpoint signature covers: format, size, root, time and key id, one per line."""
    return "\n".join([CHECKPOINT_FORMAT, str(head["size"]), head["root"], head["time"], head["key_id"]]).encode()


def _batch_key(number: int) -> str:
    return f"audit/log/{number:012d}.json"
