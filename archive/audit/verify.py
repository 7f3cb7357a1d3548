"""Verifying the audit log: recompute everything, name the first bad position.

Checks, in log order:

* batches are numbered 1, 2, 3 … with no gap (a missing batch = deleted events) and parse;
* every event's ``seq`` is its position (a jump = deleted events; a repeat or step back = an inserted or
  reordered event) and its ``prev`` is the leaf hash of the event before it (a break = the event before
  was modified, or this one was inserted or moved);
* every checkpoint is signed by a trusted key (the keyring's signing keys, retired ones included: a
  checkpoint signed by any other key is forged) over exactly its fields, its root equals the RFC 6962
  root recomputed from the events at its size, and it does not claim more events than the log holds;
* against the **witness** — the newest checkpoint this archive has verified before, kept outside the
  store — the log must not have shrunk (rolled back) and the witness's root must still be the root at its
  size (consistent: the log only grew).

A *position* is an event's sequence number: the first problem's position is where the log stops being
trustworthy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from archive.audit.log import ZERO, AuditLog, _canonical, signed_bytes
from archive.audit.merkle import MerkleAccumulator, leaf_hash


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the log, at an event position (or the checkpoint's size)."""

    position: int
    kind: str  # deleted | inserted-or-reordered | modified | forged-checkpoint | rolled-back | inconsistent
    message: str


@dataclass
class Report:
    """What verification found."""

    events: int = 0
    batches: int = 0
    checkpoints: int = 0
    latest_checkpoint: dict | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return min(self.problems, key=lambda p: p.position) if self.problems else None


def verify(log: AuditLog, trusted_keys: dict[str, bytes], *, witness: Path | None = None) -> Report:
    """Recompute and check the whole log; see the module docstring. Never raises for a bad log."""
    report = Report()
    checkpoints = list(log.checkpoints())
    wanted = {cp.get("size") for _, cp in checkpoints if isinstance(cp.get("size"), int)}
    old = _read_witness(witness)
    if old:
        wanted.add(old["size"])
    roots: dict[int, str] = {0: MerkleAccumulator().root().hex()}
    acc = MerkleAccumulator()
    expected_batch, position, prev = 1, 0, ZERO

    def problem(kind: str, message: str, at: int | None = None) -> None:
        report.problems.append(Problem(position if at is None else at, kind, message))

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
    report.events = acc.size

    newest = None  # the newest checkpoint that passed every check
    largest_signed = 0  # the largest size any genuinely signed checkpoint claims
    for key, cp in checkpoints:
        report.checkpoints += 1
        size = cp.get("size")
        label = f"checkpoint {key.rsplit('/', 1)[-1]}"
        public = trusted_keys.get(cp.get("key_id"))
        if public is None:
            problem("forged-checkpoint", f"{label} is signed by {cp.get('key_id')!r}, not a trusted key",
                    at=size if isinstance(size, int) else 0)
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(cp.get("signature", "")),
                                                              signed_bytes(cp))
        except (InvalidSignature, ValueError, KeyError, TypeError):
            problem("forged-checkpoint", f"{label}: the signature does not match its contents (forged)",
                    at=size if isinstance(size, int) else 0)
            continue
        largest_signed = max(largest_signed, size)
        if not key.endswith(f"{size:012d}.json"):
            problem("forged-checkpoint", f"{label} is stored under the wrong size (says {size})", at=size)
        elif size > report.events:
            problem("deleted", f"{label} covers {size} events but the log holds {report.events}: events "
                               f"from position {report.events} were deleted", at=report.events)
        elif roots.get(size) != cp.get("root"):
            problem("modified", f"{label}: the events before position {size} no longer hash to the signed "
                                "root (an event was modified)", at=max(size - 1, 0))
        elif newest is None or size >= newest["size"]:
            newest = cp
    report.latest_checkpoint = newest

    if old:
        if largest_signed < old["size"]:
            problem("rolled-back", f"the newest signed checkpoint covers {largest_signed} events but this archive "
                                   f"verified one of {old['size']} before: the log was rolled back",
                    at=min(largest_signed, report.events))
        elif roots.get(old["size"]) != old["root"]:
            problem("inconsistent", f"the log's first {old['size']} events no longer hash to the root verified "
                                    "before (the log was rewritten, not appended to)", at=max(old["size"] - 1, 0))
    if report.ok and newest is not None and witness is not None:
        _write_witness(witness, newest)
    return report


def _read_witness(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text())


def _write_witness(path: Path, checkpoint: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"size": checkpoint["size"], "root": checkpoint["root"]}))
    tmp.replace(path)
