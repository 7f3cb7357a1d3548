"""Verifying the audit log: recompute everything, name the first bad position.

Checks, in log order:

* batches are numbered 1, 2, 3 … with no gap (a missing batch = deleted events) and parse;
* every event's ``seq`` is its position (a jump = deleted events; a repeat or step back = an inserted or
  reordered event) and its ``prev`` is the leaf hash of the event before it (a break = the event before
  was modified, or this one was inserted or moved);
* every batch's signature (archive/audit/log.py) is by a trusted key over its number, first sequence
  number, event count, last leaf hash and the tree's peaks, and those peaks are the tree recomputed from
  the events: an event rewritten, added or cut off inside a batch is caught even after the newest
  checkpoint. Where a signed checkpoint covers a batch, its root proves the batch and the batch's own
  signature is not checked again; a batch with no signature (written before batches were signed, or by a
  writer without a signing key) is accepted only there;
* every checkpoint is signed by a trusted key (the keyring's signing keys, retired ones included: a
  checkpoint signed by any other key is forged) over exactly its fields, its root equals the RFC 6962
  root recomputed from the events at its size, and it does not claim more events than the log holds;
* against the **witness** (archive/audit/witness.py) — the newest checkpoint written or verified before,
  kept outside the archive — its signature is by a trusted key, the log still holds every event it
  covers (fewer = truncated or rolled back), the root at its size is still its root (else rewritten), and
  the checkpoint itself is still in the store (else deleted). A witness that cannot be read is a
  failure too: without it, deleting the newest batches together with their checkpoints would pass.

Staged events (workers write them apart from the log: archive/audit/log.py) are integrated first, when
the verifier holds the signing key, so that they are verified with the rest; a staged object that is not
what a stager wrote becomes an ``audit-staged-invalid`` event, which verification reports as a problem.

When everything passes, the verifier (given a signing key) checkpoints the events after the newest
checkpoint — it has just recomputed their root — and gives that checkpoint to the witness: so the witness
always covers everything that was ever verified, and truncating verified events is always caught.

A *position* is an event's sequence number: the first problem's position is where the log stops being
trustworthy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from archive.audit.log import ZERO, AuditLog, _canonical, batch_signed_bytes, signed_bytes
from archive.audit.merkle import MerkleAccumulator, leaf_hash
from archive.audit.witness import FileWitness, Witness
from archive.errors import ArchiveError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the log, at an event position (or the checkpoint's size)."""

    position: int
    # deleted | inserted-or-reordered | modified | unsigned | forged-batch | forged-checkpoint | rolled-back |
    # inconsistent | witness-invalid | witness-unavailable | staged | staged-invalid
    kind: str
    message: str


@dataclass
class Report:
    """What verification found."""

    events: int = 0
    batches: int = 0
    checkpoints: int = 0
    latest_checkpoint: dict | None = None
    problems: list[Problem] = field(default_factory=list)
    tail: int = 0  # events after the newest valid checkpoint (before this verification checkpointed them)
    unsigned_batches: int = 0  # batches without a signature (covered by a signed checkpoint, or a problem)
    checkpoint_written: dict | None = None  # the checkpoint this verification wrote over the tail
    witness: dict = field(default_factory=dict)  # where, and the checkpoint it held before this run
    integrated: int = 0  # staged events this verification integrated into the log first
    staged: int = 0  # staged objects still waiting (no signing key here to integrate them, or invalid ones)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return min(self.problems, key=lambda p: p.position) if self.problems else None


def verify(log: AuditLog, trusted_keys: dict[str, bytes], *, witness: Witness | Path | None = None,
           observe: Callable[[int, dict], None] | None = None, checkpoint: bool = False) -> Report:
    """Recompute and check the whole log; see the module docstring. Never raises for a bad log.

    ``observe(seq, event)`` is called for every event in order (the reconciliation with the store reads
    the trail this way, without reading the log twice). With ``checkpoint`` (and a signing key in
    ``log``), a log that passes gets a checkpoint over its tail, and the newest checkpoint is given to the
    witness."""
    if isinstance(witness, Path):
        witness = FileWitness(witness)
    report = Report()
    checkpoints = list(log.checkpoints())
    wanted = {cp.get("size") for _, cp in checkpoints if isinstance(cp.get("size"), int)}

    def problem(kind: str, message: str, at: int | None = None) -> None:
        report.problems.append(Problem(position if at is None else at, kind, message))

    position = 0
    old = None
    if log.signer is not None:  # staged events (the workers') take their place first: then they are verified
        try:
            report.integrated = log.integrate_all(trusted_keys=trusted_keys)
        except ArchiveError as e:
            problem("staged", f"the staged audit events could not be integrated ({e}): they are not verified")
    try:
        report.staged = len(log.staged())
    except ArchiveError:
        pass
    if witness is not None:
        report.witness = {"where": witness.where}
        try:
            old = witness.newest()
        except ArchiveError as e:
            problem("witness-unavailable", f"the audit witness could not be read ({e}): truncation and rollback "
                                           "of the log cannot be ruled out")
        if old is not None:
            report.witness["size"] = old["size"]
            if "signature" in old and not _signed_by(old, trusted_keys):
                problem("witness-invalid", f"the witness's checkpoint of {old['size']} events ({witness.where}) is "
                                           "not signed by a trusted key: it was altered, or is not this archive's",
                        at=old["size"])
                old = None
            else:
                wanted.add(old["size"])
    # Batches a genuinely signed checkpoint covers are proven by its root (checked below): their own
    # signatures need no checking, which keeps verification of a log of one-event batches fast.
    covered = max((cp["size"] for _, cp in checkpoints if isinstance(cp.get("size"), int)
                   and _signed_by(cp, trusted_keys)), default=0)
    roots: dict[int, str] = {0: MerkleAccumulator().root().hex()}
    acc = MerkleAccumulator()
    expected_batch, prev = 1, ZERO
    unsigned: list[tuple[int, int]] = []  # (batch number, its last position)

    for number, raw in log.batches():
        report.batches += 1
        if number != expected_batch:
            problem("deleted", f"audit batch {expected_batch} is missing (batches jump to {number}): events "
                               f"from position {position} were deleted")
        expected_batch = number + 1
        try:
            doc = json.loads(raw)
            events = doc["events"]
        except (ValueError, KeyError, TypeError):
            problem("modified", f"audit batch {number} is not a readable batch (altered)")
            continue
        in_order = True  # the batch's events extend the tree as its writer saw it
        for event in events:
            seq = event.get("seq") if isinstance(event, dict) else None
            if not isinstance(seq, int):
                problem("modified", f"event at position {position} has no sequence number (altered)")
            elif seq > position:
                problem("deleted", f"events {position}…{seq - 1} are missing (deleted or moved); next is {seq}")
            elif seq < position:
                problem("inserted-or-reordered", f"event {seq} appears at position {position} "
                                                 "(inserted or reordered)")
            elif event.get("prev") != prev:
                problem("modified", f"event {seq} does not follow the event before it: event {seq - 1} was "
                                    "modified, or this event was inserted or moved", at=max(seq - 1, 0))
            if not isinstance(seq, int) or seq != position:
                in_order = False
            leaf = leaf_hash(_canonical(event)) if isinstance(event, dict) else leaf_hash(b"")
            acc.append(leaf)
            if not isinstance(seq, int) or seq >= position:  # an out-of-place event does not extend the chain
                prev = leaf.hex()
            # Resynchronise so one fault is reported once: after a gap, continue from the event's own
            # number; an inserted or moved-back event does not take a position of its own.
            if not isinstance(seq, int) or seq >= position:
                position = (seq if isinstance(seq, int) else position) + 1
            if acc.size in wanted:
                roots[acc.size] = acc.root().hex()
            if isinstance(event, dict) and event.get("action") == "audit-staged-invalid":
                problem("staged-invalid", f"event {seq}: staged audit events {event.get('target', {}).get('object')} "
                                          f"were not what a worker wrote ({event.get('details', {}).get('problem')}): "
                                          "they were altered before they took their place in the log",
                        at=seq if isinstance(seq, int) else position - 1)
            if observe is not None and isinstance(seq, int) and isinstance(event, dict):
                observe(seq, event)
        last = position - 1
        if not events:
            problem("modified", f"audit batch {number} holds no events (altered)")
        elif "signature" not in doc:
            unsigned.append((number, last))
        elif last >= covered:
            _check_batch(report, number, doc, events, acc, in_order, trusted_keys, last)
    report.events = acc.size
    report.unsigned_batches = len(unsigned)

    newest = None  # the newest checkpoint that passed every check
    largest_signed = 0  # the largest size any genuinely signed checkpoint claims
    present: set[int] = set()  # sizes of the genuinely signed checkpoints in the store
    for key, cp in checkpoints:
        report.checkpoints += 1
        size = cp.get("size")
        label = f"checkpoint {key.rsplit('/', 1)[-1]}"
        if cp.get("key_id") not in trusted_keys:
            problem("forged-checkpoint", f"{label} is signed by {cp.get('key_id')!r}, not a trusted key",
                    at=size if isinstance(size, int) else 0)
            continue
        if not _signed_by(cp, trusted_keys):
            problem("forged-checkpoint", f"{label}: the signature does not match its contents (forged)",
                    at=size if isinstance(size, int) else 0)
            continue
        largest_signed = max(largest_signed, size)
        if not key.endswith(f"{size:012d}.json"):
            problem("forged-checkpoint", f"{label} is stored under the wrong size (says {size})", at=size)
            continue
        present.add(size)
        if size > report.events:
            problem("deleted", f"{label} covers {size} events but the log holds {report.events}: events "
                               f"from position {report.events} were deleted", at=report.events)
        elif roots.get(size) != cp.get("root"):
            problem("modified", f"{label}: the events before position {size} no longer hash to the signed "
                                "root (an event was modified)", at=max(size - 1, 0))
        elif newest is None or size >= newest["size"]:
            newest = cp
    report.latest_checkpoint = newest
    report.tail = report.events - (newest["size"] if newest else 0)

    if trusted_keys:  # with signing keys, every batch is signed or covered by a signed checkpoint
        for number, last in unsigned:
            if last >= largest_signed:
                problem("unsigned", f"audit batch {number} (to event {last}) carries no signature and no signed "
                                    "checkpoint covers it: its events cannot be told from rewritten ones", at=last)

    if old:
        where = witness.where
        if report.events < old["size"]:
            problem("rolled-back", f"the witness ({where}) holds a checkpoint of {old['size']} events, but the log "
                                   f"holds {report.events}: the events from position {report.events} on were "
                                   "deleted (the log was truncated or rolled back)", at=report.events)
        elif roots.get(old["size"]) != old["root"]:
            problem("inconsistent", f"the log's first {old['size']} events no longer hash to the root the witness "
                                    f"({where}) holds: the log was rewritten, not appended to",
                    at=max(old["size"] - 1, 0))
        if old["size"] not in present and old["size"] > 0:
            problem("deleted", f"checkpoint {old['size']:012d}.json, which the witness ({where}) holds, is missing "
                               "from the store: it was deleted", at=old["size"])

    if report.ok and checkpoint and log.signer is not None and report.events > (newest or {}).get("size", 0):
        try:
            newest = report.checkpoint_written = log.checkpoint_at(report.events, acc.root())
            report.latest_checkpoint = newest
            report.checkpoints += report.events not in present
        except ArchiveError as e:
            problem("witness-unavailable", f"could not checkpoint the verified events: {e}", at=report.events)
    if report.ok and newest is not None and witness is not None:
        try:
            witness.publish(newest)
        except ArchiveError as e:
            problem("witness-unavailable", f"the audit witness could not be written ({e}): the next verification "
                                           "cannot rule out truncation of the events verified now", at=report.events)
    return report


def _signed_by(head: dict, trusted_keys: dict[str, bytes]) -> bool:
    """Is the checkpoint ``head`` signed, over exactly its fields, by one of ``trusted_keys``?"""
    public = trusted_keys.get(head.get("key_id"))
    if public is None:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(head.get("signature", "")), signed_bytes(head))
        return True
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return False


def _check_batch(report: Report, number: int, doc: dict, events: list, acc: MerkleAccumulator, in_order: bool,
                 trusted_keys: dict[str, bytes], last: int) -> None:
    """A signed batch: the signature by a trusted key over what it says, and its peaks the recomputed tree."""
    def problem(kind: str, message: str) -> None:
        report.problems.append(Problem(last, kind, message))

    public = trusted_keys.get(doc.get("key_id"))
    if public is None:
        problem("forged-batch", f"audit batch {number} is signed by {doc.get('key_id')!r}, not a trusted key")
        return
    peaks = doc.get("peaks", [])
    try:
        tail = events[-1]
        signed = batch_signed_bytes(number, doc["first_seq"], len(events), leaf_hash(_canonical(tail)).hex(),
                                    peaks, doc["key_id"])
        Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(doc["signature"]), signed)
    except (InvalidSignature, ValueError, KeyError, TypeError):
        problem("modified", f"audit batch {number} does not match its signature: events in it were rewritten, "
                            "added or cut off after it was written")
        return
    if in_order and peaks and [p.hex() for p in acc.peaks] != peaks:
        problem("modified", f"the events up to the end of audit batch {number} no longer make the tree its writer "
                            "signed: an event before it was modified")
