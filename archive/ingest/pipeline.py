"""The ingest pipeline: detect → validate → hash → dedupe → seal parts and manifest → verify → index.

One library function (:func:`ingest`) that the CLI calls now and the Celery workers later. Inputs are
found on disk (:mod:`archive.ingest.discover`) and each becomes zero or more records:

* a **record id** is derived from what the record is — its source system and interaction id and the
  SHA-256 of every part — so the same input always maps to the same id, and a second delivery is
  reported as a duplicate of that record instead of being stored again;
* parts are sealed under ``records/<id>/part.<name>`` and verified (every segment authenticated,
  plaintext SHA-256 compared: read back, or on S3 checked as it goes out while the store confirms by its
  own checksum that it holds exactly the bytes sent, see ``Vault._verify``) — parts up to 64 KiB are carried inside the manifest
  instead — then the **manifest** — metadata, parts, digests — is
  sealed under ``records/<id>/manifest`` and verified. The manifest is the commit: a record exists once
  its manifest does, and never before all of its parts are stored and verified;
* records are committed in groups (``Ingestor.run``: up to ``Ingestor.BATCH`` records): the manifests
  of a group are sealed together with ``Vault.seal_many`` — every manifest object written and made
  durable, then every receipt, each step one group commit of the store — then each is
  verified, and only then indexed and reported. Large parts are sealed (and verified) one by one before
  their record joins a group, so a manifest never names a part that is not durable;
* a crash at any point leaves either nothing visible or the whole record. Running again finds the parts a
  dead run already sealed (same names, same digests) and finishes the record; a part or manifest sealed
  without its receipt (a crash between the two writes, or between the two steps of a group) cannot be
  overwritten — WORM — so it is sealed again under a new name and the orphan is left to
  ``Vault.orphans()``;
* the source is only ever read: never moved, renamed, modified or deleted. It is hashed before sealing
  and the sealer hashes it again while sealing: a file that changed in between is refused
  (``source_changed``) — that input only: the run goes on, and the next run, once the file has stopped
  changing, archives it. What the changing file left sealed is never reused: a name whose receipt
  holds other bytes is passed over for the next (``part.audio.retry-2``), so it cannot block the input;
* a run that passes a ``journal`` (:mod:`archive.ingest.journal`; ``archive ingest`` does) lists each
  group's record ids there before committing them, so that a run killed before it indexed and audited
  what it committed is finished by the next (:meth:`Ingestor.recover`).

Each record is locked as its retention policies decide (:mod:`archive.retention`): the decision and the
dual-recording findings are computed before anything is sealed, every object of the record is locked
until the decided date in the decided mode, and both are kept in the manifest. An invalid policy set stops
the run before the first input: nothing is archived under rules that could be wrong.

Every input is judged alone. Whatever goes wrong while one input is read or prepared — an
:class:`ArchiveError`, or any other exception (a recursion limit, a number Python will not convert, an
unknown text encoding, a date whose retention overflows the calendar, memory) — rejects that input with
a reason naming it, records it in the quarantine log (``quarantine/`` in the store, sealed like
everything else; ``archive quarantine list``), and the run goes on; the other inputs of the run are
committed. Only transient errors of the archive's own services (the store or the KMS not answering)
stop the run, as do failures of the store itself (an ``OSError`` that is not the input's: reads of an
input raise ``RejectedInput`` naming it, :mod:`archive.ingest.files`).

The same content delivered again with other metadata is a **conflict**, not a duplicate: the record
stays as it was, the new delivery is kept sealed as evidence and quarantined with both digests
(:mod:`archive.ingest.conflicts`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath

from archive.crypto.stream import Binding
from archive.dates import parse_datetime, parse_duration
from archive.errors import (ArchiveError, InvalidMetadata, ObjectExists, ObjectNotFound, RejectedInput,
                            SourceChanged)
from archive.ingest import conflicts
from archive.ingest.discover import Found, discover
from archive.ingest.record import validate
from archive.retention.decide import capture_findings, decide, findings
from archive.retention.policy import PolicySet
from archive.retention.service import Retention
from archive.services import Archive
from archive.vault import SealRequest, candidates

MANIFEST_FORMAT = "archive-manifest/1"
# Parts up to this size (chat transcripts, email bodies) are sealed inside the manifest instead of as
# objects of their own: half the writes for a typical chat, and the record is still one sealed commit.
INLINE_LIMIT = 64 * 1024


@dataclass
class PartInput:
    """A part before sealing: where its bytes come from and what is known of them."""

    name: str
    media_type: str
    open: Callable[[], io.BufferedIOBase]
    filename: str | None = None
    media: dict | None = None
    sha256: str = ""
    size: int = 0
    data: bytes | None = None  # the bytes, when the loader holds them already (a chat file read once)

    @classmethod
    def of_bytes(cls, name: str, media_type: str, data: bytes, *, filename: str | None = None) -> PartInput:
        """A part whose bytes are in memory: hashed and sealed from that one snapshot of its source."""
        return cls(name, media_type, lambda: io.BytesIO(data), filename=filename, data=data)


@dataclass
class Outcome:
    """What happened to one input (a file or a group of files)."""

    origin: str
    status: str  # "archived" | "duplicate" | "conflict" | "rejected"
    record_ids: list[str] = field(default_factory=list)
    code: str | None = None
    reason: str | None = None


@dataclass
class Summary:
    """The result of an ingest run."""

    archived: int = 0
    duplicate: int = 0
    conflict: int = 0  # the same content as a record, delivered with other metadata (kept as evidence)
    rejected: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)


_buffers = threading.local()  # one hashing buffer per thread: zeroing 1 MiB per chat costs more than hashing it


def _hash_stream(opener: Callable[[], io.BufferedIOBase]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = memoryview(bytearray(1024 * 1024))
    with opener() as f:
        while n := f.readinto(buf):
            digest.update(buf[:n])
            size += n
    return digest.hexdigest(), size


def _as_if_started(metadata: dict, at: datetime) -> dict:
    """The metadata with the interaction moved to begin at ``at`` (its length kept): what a lock counts
    from when the record's own capture time is implausible."""
    moved = {**metadata, "started_at": at.isoformat()}
    if metadata.get("ended_at"):
        moved["ended_at"] = (at + (parse_datetime(metadata["ended_at"]) - parse_datetime(metadata["started_at"]))
                             ).isoformat()
    return moved


def record_id(metadata: dict, parts: Iterable[PartInput]) -> str:
    """``r`` + 32 base32 characters of SHA-256 over the source identity and every part's digest."""
    h = hashlib.sha256(b"archive-record-id/1\n")
    h.update(json.dumps([metadata["source"]["system"], metadata["source"]["interaction_id"]]).encode())
    for part in sorted(parts, key=lambda p: p.name):
        h.update(f"\n{part.name}={part.sha256}".encode())
    return "r" + base64.b32encode(h.digest()[:20]).decode().lower()


class _RecordLocks:
    """One lock per record id, shared by every thread preparing that record, dropped when the last of
    them is done. (Dropping it as soon as its holder finished, while another thread still waited on it,
    let a third thread make a new lock and prepare the same record beside the waiter: issue 24.)"""

    def __init__(self, guard: threading.Lock) -> None:
        self._guard = guard
        self._locks: dict[str, list] = {}  # record id -> [lock, threads holding or waiting for it]

    @contextmanager
    def hold(self, rid: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(rid, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[rid]

    def __len__(self) -> int:
        return len(self._locks)


class Ingestor:
    """Runs the pipeline against one archive and its index."""

    def __init__(self, archive: Archive, index, *, retention: Retention | None = None) -> None:
        self.archive = archive
        self.vault = archive.vault
        self.index = index
        self.retention = retention or Retention(archive, index, policies_dir=archive.settings.policies_dir,
                                                min_lock=archive.settings.min_lock)
        self.max_metadata_bytes = getattr(archive.settings, "max_metadata_bytes", 16 * 1024**2)
        self.capture_earliest = parse_datetime(getattr(archive.settings, "capture_earliest", "2000-01-01T00:00:00Z"))
        self.capture_ahead = parse_duration(getattr(archive.settings, "capture_ahead", "P1D"))
        self._lock = threading.Lock()
        self._record_locks = _RecordLocks(self._lock)

    # --- one record ------------------------------------------------------------------------------------

    def commit(self, metadata: dict, parts: list[PartInput], *, origin: str, fmt: str) -> tuple[str, bool]:
        """Archive one record; returns (record id, True if new / False if it already existed). The same
        parts committed before with other metadata raise RejectedInput ``metadata_conflict`` (the new
        metadata kept as evidence, see :mod:`archive.ingest.conflicts`)."""
        evidence = [("metadata.json", json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode())]
        prepared = self._prepare(metadata, parts, origin=origin, fmt=fmt, evidence=evidence)
        (result,) = self._commit_many([prepared])
        if isinstance(result, ArchiveError):
            raise result
        if isinstance(result, _Conflict):
            outcome = self._keep_conflict(prepared, result.archived)
            raise RejectedInput(outcome.code, outcome.reason, record_id=prepared.rid)
        return result

    def _prepare(self, metadata: dict, parts: list[PartInput], *, origin: str, fmt: str,
                 policies: PolicySet | None = None, evidence: Iterable[tuple[str, bytes]] = ()) -> _Prepared:
        """Everything before a record's commit: validate, hash, name it, and — unless it is already
        committed — decide its retention, seal its large parts (each verified) and build its
        manifest. ``policies``: the run's policy set (default: the current one). ``evidence``: the bytes
        the metadata came from when they are not among the parts (sidecars), kept if it conflicts."""
        metadata = validate(metadata)
        for part in parts:
            if part.data is not None:
                part.sha256, part.size = hashlib.sha256(part.data).hexdigest(), len(part.data)
            else:
                part.sha256, part.size = _hash_stream(part.open)
        rid = record_id(metadata, parts)
        known = {"metadata": metadata, "evidence": list(evidence), "origin": origin, "fmt": fmt}
        # one record id at a time in this process: a duplicate waits, then reuses its parts
        with self._record_locks.hold(rid):
            # Already committed? Asked first where asking is cheap (a local store) or where the answer
            # saves sealing large parts. A small record on a remote store is sealed straight away: its
            # write-once manifest is refused if the record exists, and the commit then reads the record
            # as committed (a duplicate or a conflict) — one request saved per new record.
            ask = not getattr(self.vault.store, "remote", False) or any(p.size > INLINE_LIMIT for p in parts)
            existing = self.committed(rid) if ask else None
            if existing is not None:
                return _Prepared(rid, existing=existing, **known)
            policies = policies or self.retention.policy_set()
            now = self.retention.clock.now()
            decision = decide(rid, metadata, self.retention.events(), policies, now)
            retain_until, mode = self.retention.lock_date(decision), decision["lock_mode"]
            odd = capture_findings(metadata, now, earliest=self.capture_earliest, ahead=self.capture_ahead)
            if odd:  # its own time cannot be trusted: the store keeps it at least as if it began at ingest
                retain_until = max(retain_until, self.retention.lock_date(
                    decide(rid, _as_if_started(metadata, now), self.retention.events(), policies, now)))
            sealed = [self._inline_part(part) if part.size <= INLINE_LIMIT
                      else self._seal_part(rid, part, retain_until, mode) for part in parts]
            matched = [policies.get(p["id"]) for p in decision["policies"]]
            found, checks = findings(metadata, sealed, matched, _transcript_text(metadata, parts))
            found += odd
            manifest = {
                "format": MANIFEST_FORMAT, "record_id": rid,
                "ingested_at": now.isoformat(timespec="milliseconds"),
                "input": {"origin": origin, "format": fmt},
                "retention": decision, "findings": found, **({"checks": checks} if checks else {}),
                "metadata": metadata, "parts": sealed,
            }
            raw = self._manifest_bytes(manifest)
            return _Prepared(rid, manifest, raw, decision, retain_until, mode, **known)

    def _manifest_bytes(self, manifest: dict) -> bytes:
        """The manifest as sealed: JSON that every reader can parse back (finite numbers, valid Unicode),
        its metadata within ARCHIVE_MAX_METADATA_BYTES. Raises InvalidMetadata / RejectedInput."""
        try:
            raw = json.dumps(manifest, ensure_ascii=False, sort_keys=True, allow_nan=False).encode()
        except ValueError as e:  # NaN or Infinity: not JSON, and a search page holding it could not be served
            if isinstance(e, UnicodeEncodeError):
                raise InvalidMetadata(_first(manifest["metadata"], _is_surrogate) or "(record)",
                                      "holds an unpaired surrogate: not Unicode text") from None
            raise InvalidMetadata(_first(manifest["metadata"], _is_not_finite) or "(record)",
                                  "holds a number that is not finite (NaN or Infinity)") from None
        inline = sum(len(p.get("inline", "")) for p in manifest["parts"])
        if len(raw) - inline > self.max_metadata_bytes:
            raise RejectedInput("too_large", f"the record's metadata is {len(raw) - inline:,} bytes as JSON, over the "
                                             f"limit of {self.max_metadata_bytes:,} (ARCHIVE_MAX_METADATA_BYTES)")
        return raw

    def _commit_many(self, prepared: list[_Prepared], index: Callable[[list[dict]], None] | None = None
                     ) -> list[tuple[str, bool] | _Conflict | ArchiveError]:
        """Commit prepared records together: their manifests are sealed as one group (two group commits
        of the store for all of them), each verified, then indexed. Returns, per record,
        (record id, True if new / False if it already existed), a :class:`_Conflict` when it existed with
        other metadata, or the error that refused it. A record already committed — before, by another
        writer, or earlier in this group — comes back as existing. ``index`` takes the group's index
        entries (default: upserted here, before returning)."""
        views: list[dict] = []
        results: list[tuple[str, bool] | _Conflict | ArchiveError | None] = [None] * len(prepared)
        archived: dict[int, dict] = {}  # the committed manifest, for the first of a record in the group
        todo, first, again = [], {}, []
        for i, p in enumerate(prepared):
            if p.existing is not None:
                views.append(self.retention.view(p.existing))  # a run that died after the commit, before indexing
                results[i] = _existing(p, p.existing)
            elif p.rid in first:
                again.append(i)  # the same record twice in one group: the first one commits it
            else:
                first[p.rid] = i
                todo.append((i, candidates(f"records/{p.rid}/manifest")))
        while todo:
            requests, retry = [], []
            for i, names in todo:
                p = prepared[i]
                name = next(names, None)
                if name is None:
                    results[i] = ArchiveError(f"records/{p.rid}/manifest: too many interrupted attempts")
                    continue
                requests.append((i, SealRequest(name, io.BytesIO(p.raw), Binding(p.rid, "manifest"),
                                                retain_until=p.retain_until, mode=p.mode)))
            # verified: the stored receipt, every segment authenticated, the very bytes sealed (read back,
            # or checked on the way out where the store confirms what it stored: Vault._verify)
            sealed = self.vault.seal_many([r for _, r in requests], verify=True)
            for (i, request), receipt in zip(requests, sealed):
                p = prepared[i]
                if isinstance(receipt, ObjectExists):
                    existing = self.committed(p.rid)
                    if existing is not None:  # a concurrent run committed it first
                        views.append(self.retention.view(existing))
                        results[i], archived[i] = _existing(p, existing), existing
                    else:  # a dead run sealed this name but never wrote its receipt: WORM, so a new name
                        retry.append(next(t for t in todo if t[0] == i))
                    continue
                if isinstance(receipt, ArchiveError):
                    results[i] = receipt
                    continue
                views.append(self.retention.view(p.manifest, p.decision, cases=[], new=True))
                results[i], archived[i] = (p.rid, True), p.manifest
            todo = retry
        for i in again:
            j = first[prepared[i].rid]
            done = results[j]
            # compared with the record as committed (by the group's first delivery of it, or before)
            results[i] = done if isinstance(done, ArchiveError) else _existing(prepared[i], archived[j])
        if index is not None:
            index(views)
        else:
            for view in views:
                self.index.upsert(view)
        return results

    def committed(self, rid: str) -> dict | None:
        """The manifest of record ``rid`` if it was committed (sealed with its receipt), else None."""
        try:
            return self.retention.manifest(rid)
        except ObjectNotFound:
            return None

    def _seal_part(self, rid: str, part: PartInput, retain_until: datetime, mode: str) -> dict:
        binding = Binding(rid, part.name)
        for candidate in candidates(f"records/{rid}/part.{part.name}"):
            try:
                receipt = self.vault.receipt(candidate)
            except ObjectNotFound:
                receipt = None
            if receipt is not None and receipt.plaintext_sha256 != part.sha256:
                continue  # what an earlier attempt sealed while its source was changing: never ours, a new name
            if receipt is None:
                try:
                    with part.open() as f:
                        # verified as it is sealed (Vault._verify): read back, or checked on the way out
                        receipt = self.vault.seal(candidate, f, binding, retain_until=retain_until, mode=mode,
                                                  verify=True)
                except ObjectExists:
                    continue  # sealed by a run that died before writing its receipt: WORM, so new name
                if receipt.plaintext_sha256 != part.sha256:
                    # Left sealed under this name (WORM); the next attempt passes it over (above).
                    raise SourceChanged(f"{part.filename or part.name} changed while it was being archived "
                                        f"(SHA-256 {part.sha256[:12]}… before, {receipt.plaintext_sha256[:12]}… "
                                        "sealed); it is archived once it stops changing (run ingest again)")
            else:  # sealed by an earlier run: read it all back (every segment, the plaintext SHA-256)
                for _ in self.vault.open(candidate, binding, verify_digest=True):
                    pass
            return {"name": part.name, "object": candidate, "filename": part.filename,
                    "media_type": part.media_type, "size": receipt.plaintext_size, "sha256": part.sha256,
                    "tag_digest": receipt.tag_digest, **({"media": part.media} if part.media else {})}
        raise ArchiveError(f"records/{rid}/part.{part.name}: too many interrupted attempts")

    @staticmethod
    def _inline_part(part: PartInput) -> dict:
        data = part.data
        if data is None:
            with part.open() as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != part.sha256:
                raise SourceChanged(f"{part.filename or part.name} changed while it was being archived")
        return {"name": part.name, "inline": base64.b64encode(data).decode(), "filename": part.filename,
                "media_type": part.media_type, "size": len(data), "sha256": part.sha256,
                **({"media": part.media} if part.media else {})}

    def read_part(self, manifest: dict, name: str, start: int | None = None,
                  end: int | None = None) -> Iterator[bytes]:
        """The bytes of part ``name`` of a committed record, verified; [start, end) when given (only the
        covering segments are read). Raises ObjectNotFound for a part the record does not have."""
        part = next((p for p in manifest["parts"] if p["name"] == name), None)
        if part is None:
            raise ObjectNotFound(f"record {manifest['record_id']} has no part {name!r}; it has "
                                 f"{', '.join(p['name'] for p in manifest['parts'])}", part=name)
        if "inline" in part:  # sealed inside the manifest, which was verified when it was read
            data = base64.b64decode(part["inline"])
            yield data if start is None else data[start:end]
        elif start is not None:
            yield from self.vault.iter_range(part["object"], start, end if end is not None else 2**63,
                                             Binding(manifest["record_id"], name))
        else:
            yield from self.vault.open(part["object"], Binding(manifest["record_id"], name), verify_digest=True)

    # --- many inputs -----------------------------------------------------------------------------------

    def run(self, paths: Iterable[Path], *, limits, progress: Callable[[Summary], None] | None = None,
            workers: int = 8, journal=None) -> Summary:
        """Ingest every input under ``paths``; outcomes come back in input order. ``workers`` threads
        prepare recordings (probe, hash, seal their media); chats and emails, Python work that threads
        would only hand the GIL back and forth for, are prepared by the calling thread. Records are
        committed in groups of up to ``BATCH`` (:meth:`_commit_many`), each group with a few flushes of
        the store instead of a few per record; one more thread writes their index entries. The policy set
        is read once, at the start of the run. ``journal`` (:class:`archive.ingest.journal.Journal`)
        gets each group's record ids before the group is committed."""
        return self.run_found(discover(paths, limits=limits), progress=progress, workers=workers, journal=journal)

    def run_found(self, found: Iterable[Found], *, progress: Callable[[Summary], None] | None = None,
                  workers: int = 8, journal=None) -> Summary:
        """:meth:`run` for inputs already found (the workers find them in an inbox batch)."""
        summary = Summary()
        policies = self.retention.policy_set()  # an invalid policy set stops the run before the first input
        try:
            self._run(found, progress, workers, summary, policies, journal)
        finally:
            self.index.flush()
        return summary

    BATCH = 128  # records per group commit

    def _run(self, inputs: Iterable[Found], progress, workers: int, summary: Summary, policies: PolicySet,
             journal) -> None:
        batch: list[_Input] = []
        indexing: deque[Future] = deque()

        def index(views: list[dict]) -> None:
            # Index entries are written by one thread of their own: SQLite works without the GIL, so the
            # index catches up while the next group is prepared and committed. Every entry is of a record
            # already committed and verified; a failure surfaces before the run returns.
            while indexing and indexing[0].done():
                indexing.popleft().result()
            indexing.append(indexer.submit(lambda: [self.index.upsert(v) for v in views]))

        def commit_batch() -> None:
            if journal is not None:  # write-ahead: the group's record ids, before any of them is committed
                journal.add([p.rid for item in batch for p in item.records if p.existing is None])
            for outcome in self._commit_inputs(batch, index):
                summary.add(outcome)
                if progress:
                    progress(summary)
            batch.clear()

        records = 0  # in the batch

        def take(future: Future) -> None:
            nonlocal records
            batch.append(future.result())
            records += len(batch[-1].records)
            if records >= self.BATCH:
                commit_batch()
                records = 0

        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="ingest") as pool, \
                ThreadPoolExecutor(1, thread_name_prefix="index") as indexer:
            pending: deque[Future] = deque()
            for found in inputs:
                if found.kind == "recording":  # probing, hashing and sealing media: threads overlap the I/O
                    pending.append(pool.submit(self._prepare_input, found, policies))
                else:  # a chat or an email is Python work: a thread would only add hand-offs of the GIL
                    pending.append(_done(self._prepare_input(found, policies)))
                while len(pending) > self.BATCH + 2 * workers or (pending and pending[0].done()):
                    take(pending.popleft())
            while pending:
                take(pending.popleft())
            commit_batch()
            while indexing:
                indexing.popleft().result()

    def ingest(self, found: Found, journal=None) -> Outcome:
        """Archive one discovered input (or quarantine it, with its reason). Transient errors raise.
        ``journal``: as for :meth:`run`, the input's record ids are written to it before their commit."""
        prepared = self._prepare_input(found)
        if journal is not None:
            journal.add([p.rid for p in prepared.records if p.existing is None])
        return self._commit_inputs([prepared])[0]

    def _prepare_input(self, found: Found, policies: PolicySet | None = None) -> _Input:
        """Prepare one input's records; any failure of the input itself becomes its outcome (rejected,
        quarantined with the reason). Transient errors of the archive's services raise, and so does an
        ``OSError`` that is not the input's (the store failing)."""
        if found.rejection is not None:
            return _Input(found.origin, outcome=self._reject(found.origin, found.rejection, rename=found.rename))
        try:
            records = []
            for metadata, parts, fmt, *evidence in found.load():
                records.append(self._prepare(metadata, parts, origin=found.origin, fmt=fmt, policies=policies,
                                             evidence=evidence[0] if evidence else ()))
            return _Input(found.origin, records)
        except ArchiveError as e:
            if e.transient and not isinstance(e, SourceChanged):  # a changed input is that input's problem
                raise
            return _Input(found.origin, outcome=self._reject(found.origin, e, rename=found.rename))
        except OSError:
            raise  # not the input's: every read of an input raises RejectedInput ("unreadable") instead
        except Exception as e:  # recursion, huge numbers, unknown encodings, dates past the calendar, memory …
            return _Input(found.origin, outcome=self._reject(found.origin, _refusal(found.origin, e)))

    def _commit_inputs(self, inputs: list[_Input], index: Callable[[list[dict]], None] | None = None) -> list[Outcome]:
        """Commit the records of prepared inputs as one group; one outcome per input, in order. An input
        any of whose records was refused is quarantined with that reason; one whose record was committed
        before with other metadata is a conflict (kept as evidence). Transient errors raise."""
        results = iter(self._commit_many([p for i in inputs for p in i.records], index))
        outcomes = []
        for item in inputs:
            if item.outcome is not None:
                outcomes.append(item.outcome)
                continue
            done = [next(results) for _ in item.records]
            error = next((r for r in done if isinstance(r, ArchiveError)), None)
            if error is not None:
                if error.transient:
                    raise error
                outcomes.append(self._reject(item.origin, error))
                continue
            conflict = next(((p, r) for p, r in zip(item.records, done) if isinstance(r, _Conflict)), None)
            if conflict is not None:
                outcomes.append(self._keep_conflict(conflict[0], conflict[1].archived))
                continue
            new = any(created for _, created in done)
            outcomes.append(Outcome(item.origin, "archived" if new else "duplicate", [rid for rid, _ in done]))
        return outcomes

    def _keep_conflict(self, p: _Prepared, archived: dict) -> Outcome:
        """Keep a conflicting delivery as sealed evidence beside its record, and quarantine it."""
        rid = p.rid
        now = self.retention.clock.now()
        current = self.retention.decision(rid, archived)
        until, mode = self.retention.lock_date(current), current["lock_mode"]
        try:
            delivered = decide(rid, p.metadata, self.retention.events(), self.retention.policy_set(), now)
            until = max(until, self.retention.lock_date(delivered))
            mode = "compliance" if "compliance" in (mode, delivered["lock_mode"]) else mode
            delivered_until = delivered["retain_until"]
        except (ArchiveError, ValueError, OverflowError):
            delivered_until = None
        doc = conflicts.evidence_doc(record_id=rid, origin=p.origin, fmt=p.fmt, received_at=now, metadata=p.metadata,
                                     archived=archived["metadata"], evidence=p.evidence,
                                     archived_until=current["retain_until"], delivered_until=delivered_until)
        raw = json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()
        base = conflicts.evidence_name(rid, p.evidence)
        for name in candidates(base):
            try:
                self.vault.receipt(name)
                break  # kept by an earlier attempt of the same delivery
            except ObjectNotFound:
                pass
            try:
                self.vault.seal(name, io.BytesIO(raw), Binding(rid, name.rpartition("/")[2]), retain_until=until,
                                mode=mode)
                break
            except ObjectExists:
                continue  # sealed by an attempt that died before its receipt: a new name
        else:
            raise ArchiveError(f"{base}: too many interrupted attempts")
        reason = conflicts.reason(doc, name)
        self._reject(p.origin, RejectedInput("metadata_conflict", reason), record_id=rid, evidence=name,
                     metadata_sha256=doc["metadata_sha256"])
        return Outcome(p.origin, "conflict", [rid], code="metadata_conflict", reason=reason)

    def _reject(self, origin: str, error: ArchiveError, *, rename: tuple[str, str] | None = None,
                **extra) -> Outcome:
        reason = str(error) if rename is None else str(error).replace(*rename)
        if origin not in reason:  # the reason names the input it is about, in full
            name = PurePath(origin).name
            reason = f"{origin}: {reason.removeprefix(name + ': ')}"
        outcome = Outcome(origin, "rejected", code=error.code, reason=reason)
        entry = {"origin": origin, "code": error.code, "reason": reason,
                 "at": datetime.now(UTC).isoformat(timespec="seconds"), **extra}
        key = hashlib.sha256(f"{origin}\n{error.code}\n{reason}".encode()).hexdigest()[:32]
        for name in [f"quarantine/{key}", *(f"quarantine/{key}.retry-{n}" for n in range(1, 100))]:
            try:
                self.vault.seal(name, io.BytesIO(json.dumps(entry).encode()), Binding(f"quarantine-{key}", "entry"))
                break
            except ObjectExists:
                try:
                    self.vault.receipt(name)
                    break  # the same input was refused for the same reason before
                except ObjectNotFound:
                    continue  # sealed by an attempt killed before its receipt (unreadable): a new name
        return outcome

    def quarantine(self) -> Iterator[dict]:
        """Every rejected input: origin, code, reason, when (a conflict also names its record, the
        evidence object and both metadata digests)."""
        # (an entry whose writer was killed before its receipt cannot be read: its retry is listed)
        entries = [json.loads(self.vault.read(name)) for name in self.vault.names("quarantine/", with_receipt=True)]
        yield from sorted(entries, key=lambda e: (e["at"], e["origin"]))

    # --- crash recovery --------------------------------------------------------------------------------

    def recover(self, record_ids: Iterable[str]) -> list[str]:
        """Index again every committed record among ``record_ids`` (the journals of dead runs,
        :mod:`archive.ingest.journal`); returns those committed, for the caller's audit event to name as
        recovered. Records the dead run never committed are not records, and are skipped."""
        recovered = []
        held = None
        for rid in record_ids:
            manifest = self.committed(rid)
            if manifest is None:
                continue
            if held is None:
                held = self.retention.held_records()
            self.index.upsert(self.retention.view(manifest, cases=held.get(rid, [])))
            recovered.append(rid)
        self.index.flush()
        return recovered


@dataclass
class _Prepared:
    """A record ready to commit (``manifest`` and its bytes), or one found committed already (``existing``)."""

    rid: str
    manifest: dict | None = None
    raw: bytes = b""
    decision: dict | None = None
    retain_until: datetime | None = None
    mode: str | None = None
    existing: dict | None = None
    metadata: dict | None = None  # as validated
    evidence: list[tuple[str, bytes]] = field(default_factory=list)  # what the metadata came from, beside the parts
    origin: str = ""
    fmt: str = ""


@dataclass
class _Conflict:
    """The record was committed before with other metadata: ``archived`` is its manifest."""

    archived: dict


def _existing(p: _Prepared, archived: dict) -> tuple[str, bool] | _Conflict:
    """A record found committed: a duplicate of this delivery, or — when this delivery's metadata came
    from outside its parts and differs — a conflict."""
    if p.evidence and conflicts.metadata_digest(p.metadata) != conflicts.metadata_digest(archived["metadata"]):
        return _Conflict(archived)
    return p.rid, False


@dataclass
class _Input:
    """One discovered input after preparation: its records, or its outcome when it was refused."""

    origin: str
    records: list[_Prepared] = field(default_factory=list)
    outcome: Outcome | None = None


def _refusal(origin: str, e: Exception) -> RejectedInput:
    """A failure of one input that is not an ArchiveError, as the rejection naming the input and what is
    wrong with it."""
    detail = f"{type(e).__name__}: {e}"[:300]
    if isinstance(e, RecursionError):
        return RejectedInput("too_deep", f"{origin}: nested too deeply to be read ({detail})")
    if isinstance(e, MemoryError):
        return RejectedInput("too_large", f"{origin}: too large to be read into memory")
    if isinstance(e, UnicodeError) or type(e) is LookupError:  # (codec lookups raise plain LookupError)
        return RejectedInput("bad_encoding", f"{origin}: text in an unknown or unusable encoding ({detail})")
    if isinstance(e, OverflowError | ValueError):
        return RejectedInput("out_of_range", f"{origin}: holds a value out of range ({detail})")
    return RejectedInput("unprocessable", f"{origin}: could not be prepared for archiving ({detail})")


def _is_surrogate(value) -> bool:
    return isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value)


def _is_not_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _first(value, bad: Callable[[object], bool]) -> str | None:
    """The path (``source_fields.a[2]``) of the first value in ``value`` for which ``bad`` holds, or None
    (iteratively: the metadata may be deep)."""
    stack = [("", value)]
    while stack:
        path, item = stack.pop()
        if bad(item):
            return path or None
        if isinstance(item, Mapping):
            for key, child in reversed(list(item.items())):
                if bad(key):
                    return f"{path}.{key}".lstrip(".") if isinstance(key, str) else path
                stack.append((f"{path}.{key}".lstrip("."), child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None


def _done(result) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


def _transcript_text(metadata: dict, parts: list[PartInput]) -> str | None:
    """What was said or written, for the mandated-phrase checks: chat and email messages, and text
    transcripts supplied with a recording (.txt, .vtt)."""
    texts = [m["text"] for m in metadata.get("messages", []) if m.get("text")]
    for part in parts:
        if part.name.startswith("transcript") and part.media_type.startswith("text/"):
            with part.open() as f:
                texts.append(f.read(16 * 1024 * 1024).decode("utf-8", "replace"))
    return "\n".join(texts) or None


def as_json(summary: Summary) -> dict:
    return {"archived": summary.archived, "duplicate": summary.duplicate, "conflict": summary.conflict,
            "rejected": summary.rejected,
            "outcomes": [asdict(o) for o in summary.outcomes]}
