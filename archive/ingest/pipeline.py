"""The ingest pipeline: detect → validate → hash → dedupe → seal parts and manifest → verify → index.

One library function (:func:`ingest`) that the CLI calls now and the Celery workers later. Inputs are
found on disk (:mod:`archive.ingest.discover`) and each becomes zero or more records:

* a **record id** is derived from what the record is — its source system and interaction id and the
  SHA-256 of every part — so the same input always maps to the same id, and a second delivery is
  reported as a duplicate of that record instead of being stored again;
* parts are sealed under ``records/<id>/part.<name>``, read back and verified (every segment
  authenticated, plaintext SHA-256 compared) — parts up to 64 KiB are carried inside the manifest
  instead — then the **manifest** — metadata, parts, digests — is
  sealed under ``records/<id>/manifest`` and verified. The manifest is the commit: a record exists once
  its manifest does, and never before all of its parts are stored and verified;
* a crash at any point leaves either nothing visible or the whole record. Running again finds the parts a
  dead run already sealed (same names, same digests) and finishes the record; a part sealed without its
  receipt (a crash between the two writes) cannot be overwritten — WORM — so the part is sealed again
  under a new name and the orphan is left to ``Vault.orphans()``;
* the source is only ever read: never moved, renamed, modified or deleted. It is hashed before sealing
  and the sealer hashes it again while sealing: a file that changed in between is refused.

Each record is locked as its retention policies decide (:mod:`archive.retention`): the decision and the
dual-recording findings are computed before anything is sealed, every object of the record is locked
until the decided date in the decided mode, and both are kept in the manifest. An invalid policy set stops
the run before the first input: nothing is archived under rules that could be wrong.

Bad input is rejected with a reason and recorded in the quarantine log (``quarantine/`` in the store,
sealed like everything else), which ``archive quarantine list`` shows.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from archive.crypto.stream import Binding
from archive.errors import ArchiveError, ObjectExists, ObjectNotFound, SourceChanged
from archive.ingest.discover import Found, discover
from archive.ingest.record import validate
from archive.retention.decide import decide, findings
from archive.retention.service import Retention
from archive.services import Archive

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


@dataclass
class Outcome:
    """What happened to one input (a file or a group of files)."""

    origin: str
    status: str  # "archived" | "duplicate" | "rejected"
    record_ids: list[str] = field(default_factory=list)
    code: str | None = None
    reason: str | None = None


@dataclass
class Summary:
    """The result of an ingest run."""

    archived: int = 0
    duplicate: int = 0
    rejected: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)


def _hash_stream(opener: Callable[[], io.BufferedIOBase]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    buf = memoryview(bytearray(1024 * 1024))
    with opener() as f:
        while n := f.readinto(buf):
            digest.update(buf[:n])
            size += n
    return digest.hexdigest(), size


def record_id(metadata: dict, parts: Iterable[PartInput]) -> str:
    """``r`` + 32 base32 characters of SHA-256 over the source identity and every part's digest."""
    h = hashlib.sha256(b"archive-record-id/1\n")
    h.update(json.dumps([metadata["source"]["system"], metadata["source"]["interaction_id"]]).encode())
    for part in sorted(parts, key=lambda p: p.name):
        h.update(f"\n{part.name}={part.sha256}".encode())
    return "r" + base64.b32encode(h.digest()[:20]).decode().lower()


def _candidates(name: str, attempts: int = 9) -> Iterator[str]:
    """Object names to try for one sealed object: its name, then retries after crashed attempts."""
    yield name
    for attempt in range(2, attempts + 1):
        yield f"{name}.retry-{attempt}"


class Ingestor:
    """Runs the pipeline against one archive and its index."""

    def __init__(self, archive: Archive, index, *, retention: Retention | None = None) -> None:
        self.archive = archive
        self.vault = archive.vault
        self.index = index
        self.retention = retention or Retention(archive, index, policies_dir=archive.settings.policies_dir,
                                                min_lock=archive.settings.min_lock)
        self._lock = threading.Lock()
        self._record_locks: dict[str, threading.Lock] = {}

    # --- one record ------------------------------------------------------------------------------------

    def commit(self, metadata: dict, parts: list[PartInput], *, origin: str, fmt: str) -> tuple[str, bool]:
        """Archive one record; returns (record id, True if new / False if it already existed)."""
        metadata = validate(metadata)
        for part in parts:
            part.sha256, part.size = _hash_stream(part.open)
        rid = record_id(metadata, parts)
        with self._lock:  # one commit per record id at a time in this process: duplicates wait, then dedupe
            lock = self._record_locks.setdefault(rid, threading.Lock())
        with lock:
            try:
                return self._commit(rid, metadata, parts, origin=origin, fmt=fmt)
            finally:
                with self._lock:
                    self._record_locks.pop(rid, None)

    def _commit(self, rid: str, metadata: dict, parts: list[PartInput], *, origin: str, fmt: str) -> tuple[str, bool]:
        existing = self.committed(rid)
        if existing is not None:
            self.index.upsert(self.retention.view(existing))  # a run that died after the commit, before indexing
            return rid, False

        policies = self.retention.policy_set()
        now = self.retention.clock.now()
        decision = decide(rid, metadata, self.retention.events(), policies, now)
        retain_until, mode = self.retention.lock_date(decision), decision["lock_mode"]
        sealed = [self._inline_part(part) if part.size <= INLINE_LIMIT
                  else self._seal_part(rid, part, retain_until, mode) for part in parts]
        matched = [policies.get(p["id"]) for p in decision["policies"]]
        found, checks = findings(metadata, sealed, matched, _transcript_text(metadata, parts))
        manifest = {
            "format": MANIFEST_FORMAT, "record_id": rid,
            "ingested_at": now.isoformat(timespec="milliseconds"),
            "input": {"origin": origin, "format": fmt},
            "retention": decision, "findings": found, **({"checks": checks} if checks else {}),
            "metadata": metadata, "parts": sealed,
        }
        raw = json.dumps(manifest, ensure_ascii=False, sort_keys=True).encode()
        for name in _candidates(f"records/{rid}/manifest"):
            try:
                self.vault.seal(name, io.BytesIO(raw), Binding(rid, "manifest"), retain_until=retain_until,
                                mode=mode)
            except ObjectExists:
                existing = self.committed(rid)
                if existing is not None:  # a concurrent run committed it first
                    self.index.upsert(self.retention.view(existing))
                    return rid, False
                continue  # a dead run sealed it but never wrote its receipt: WORM, so a new name
            if json.loads(self.vault.read(name)) != manifest:
                raise ArchiveError(f"{name}: manifest read back differs from what was sealed")
            self.index.upsert(self.retention.view(manifest, decision, cases=[], new=True))
            return rid, True
        raise ArchiveError(f"records/{rid}/manifest: too many interrupted attempts")

    def committed(self, rid: str) -> dict | None:
        """The manifest of record ``rid`` if it was committed (sealed with its receipt), else None."""
        try:
            return self.retention.manifest(rid)
        except ObjectNotFound:
            return None

    def _seal_part(self, rid: str, part: PartInput, retain_until: datetime, mode: str) -> dict:
        binding = Binding(rid, part.name)
        for candidate in _candidates(f"records/{rid}/part.{part.name}"):
            try:
                receipt = self.vault.receipt(candidate)
            except ObjectNotFound:
                receipt = None
            if receipt is None:
                try:
                    with part.open() as f:
                        receipt = self.vault.seal(candidate, f, binding, retain_until=retain_until, mode=mode)
                except ObjectExists:
                    continue  # sealed by a run that died before writing its receipt: WORM, so new name
            if receipt.plaintext_sha256 != part.sha256:
                raise SourceChanged(f"{part.filename or part.name} changed while it was being archived "
                                    f"(SHA-256 {part.sha256[:12]}… before, {receipt.plaintext_sha256[:12]}… sealed)")
            # Read it all back: every segment authenticates and the plaintext SHA-256 matches the
            # receipt, which was just checked against the source's.
            for _ in self.vault.open(candidate, binding, verify_digest=True):
                pass
            return {"name": part.name, "object": candidate, "filename": part.filename,
                    "media_type": part.media_type, "size": receipt.plaintext_size, "sha256": part.sha256,
                    "tag_digest": receipt.tag_digest, **({"media": part.media} if part.media else {})}
        raise ArchiveError(f"records/{rid}/part.{part.name}: too many interrupted attempts")

    @staticmethod
    def _inline_part(part: PartInput) -> dict:
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
            workers: int = 8) -> Summary:
        """Ingest every input under ``paths``; outcomes come back in input order. ``workers`` inputs are
        in flight at once: a small record is mostly fsync latency, which threads overlap (the filesystem
        commits their journal entries together)."""
        summary = Summary()
        self.retention.policy_set()  # an invalid policy set stops the run before the first input
        try:
            self._run(paths, limits, progress, workers, summary)
        finally:
            self.index.flush()
        return summary

    def _run(self, paths, limits, progress, workers: int, summary: Summary) -> None:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="ingest") as pool:
            pending: deque[Future] = deque()
            for found in discover(paths, limits=limits):
                pending.append(pool.submit(self._one, found))
                while len(pending) > 2 * workers or (pending and pending[0].done()):
                    summary.add(pending.popleft().result())
                    if progress:
                        progress(summary)
            while pending:
                summary.add(pending.popleft().result())
                if progress:
                    progress(summary)

    def ingest(self, found: Found) -> Outcome:
        """Archive one discovered input (or quarantine it, with its reason). Transient errors raise."""
        return self._one(found)

    def _one(self, found: Found) -> Outcome:
        if found.rejection is not None:
            return self._reject(found.origin, found.rejection)
        try:
            records = list(found.load())
            ids, new = [], False
            for metadata, parts, fmt in records:
                rid, created = self.commit(metadata, parts, origin=found.origin, fmt=fmt)
                ids.append(rid)
                new = new or created
            return Outcome(found.origin, "archived" if new else "duplicate", ids)
        except ArchiveError as e:
            if e.transient:
                raise
            return self._reject(found.origin, e)

    def _reject(self, origin: str, error: ArchiveError) -> Outcome:
        outcome = Outcome(origin, "rejected", code=error.code, reason=str(error))
        entry = {"origin": origin, "code": error.code, "reason": str(error),
                 "at": datetime.now(UTC).isoformat(timespec="seconds")}
        key = hashlib.sha256(f"{origin}\n{error.code}\n{error}".encode()).hexdigest()[:32]
        try:
            self.vault.seal(f"quarantine/{key}", io.BytesIO(json.dumps(entry).encode()),
                            Binding(f"quarantine-{key}", "entry"))
        except ObjectExists:
            pass  # the same input was refused for the same reason before
        return outcome

    def quarantine(self) -> Iterator[dict]:
        """Every rejected input: origin, code, reason, when."""
        entries = [json.loads(self.vault.read(name)) for name in self.vault.names("quarantine/")]
        yield from sorted(entries, key=lambda e: (e["at"], e["origin"]))


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
    return {"archived": summary.archived, "duplicate": summary.duplicate, "rejected": summary.rejected,
            "outcomes": [asdict(o) for o in summary.outcomes]}
