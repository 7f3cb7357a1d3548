"""Fixity: re-read sealed objects and prove they are still what was archived.

A check reads every object of a record back through the vault: each segment's authentication tag, the
plaintext SHA-256 against the seal receipt, and, for parts, the receipt against the SHA-256 and tag digest
the manifest recorded at capture. A sweep checks records (all, or a bounded batch) and is itself recorded
(``fixity/sweeps/<time>``), so ``archive status`` can say when the last one ran and what it found.

A failure is **never repaired**: it is sealed as ``fixity/failures/<record>/NNNNNN`` and becomes the
record's finding ``fixity-failed`` (``archive search finding:fixity-failed``), for an auditor to
investigate from the object's backups or replicas.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from archive.errors import ArchiveError, ObjectNotFound
from archive.vault import Binding

FINDING = "fixity-failed"


@dataclass
class Check:
    record_id: str
    objects: int = 0
    bytes: int = 0
    problems: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_record(retention, rid: str) -> Check:
    """Read back every object of record ``rid``; problems name the object and what is wrong."""
    vault = retention.vault
    result = Check(rid)

    def read(name: str, binding: Binding | None = None, expect: dict | None = None) -> None:
        try:
            if expect is not None:
                receipt = vault.receipt(name)
                if receipt.plaintext_sha256 != expect["sha256"] or receipt.tag_digest != expect["tag_digest"]:
                    result.problems.append({"object": name, "problem": "the seal receipt does not match the "
                                                                        "SHA-256 and tags recorded at capture"})
                    return
            for chunk in vault.open(name, binding, verify_digest=True):
                result.bytes += len(chunk)
            result.objects += 1
        except ObjectNotFound as e:
            result.problems.append({"object": name, "problem": f"missing: {e}"})
        except ArchiveError as e:
            result.problems.append({"object": name, "problem": f"{e.code}: {e}"})

    try:
        manifest = retention.manifest(rid)
    except ObjectNotFound:
        result.problems.append({"object": f"records/{rid}/manifest", "problem": "no readable manifest"})
        return result
    except ArchiveError as e:
        result.problems.append({"object": f"records/{rid}/manifest", "problem": f"{e.code}: {e}"})
        return result
    parts = {p["object"]: p for p in manifest["parts"] if "object" in p}
    # objects with a seal receipt, and every part the manifest names: an object left without its receipt
    # by a killed writer (Vault.orphans()) was never part of the record, and is not read as one
    for name in sorted(set(vault.names(f"records/{rid}/", with_receipt=True)) | set(parts)):
        part = parts.get(name)
        read(name, Binding(rid, part["name"]) if part else None, part)
    return result


def record_failure(retention, check: Check, checked_at: str, audit_retention) -> None:
    """Seal the failure and re-index the record, so the finding is searchable."""
    until = audit_retention.after(retention.clock.now())
    retention._put_next(f"fixity/failures/{check.record_id}/", {
        "format": "archive-fixity-failure/1", "record_id": check.record_id, "checked_at": checked_at,
        "problems": check.problems}, retain_until=until)
    retention.forget_fixity()
    try:
        retention.reindex(check.record_id)
    except ArchiveError:
        pass  # the manifest itself is unreadable: the failure is sealed; the index keeps what it had


def sweep(retention, *, audit_retention, record_ids=None, limit: int | None = None, progress=None) -> dict:
    """Check ``record_ids`` (default: every record in the store, at most ``limit``); seal the sweep's
    summary. Returns it."""
    clock = retention.clock
    started = clock.now()
    summary = {"format": "archive-fixity-sweep/1", "started_at": started.isoformat(timespec="seconds"),
               "records": 0, "objects": 0, "bytes": 0, "failed": []}
    for rid in (record_ids if record_ids is not None else retention.record_ids()):
        if limit is not None and summary["records"] >= limit:
            break
        check = check_record(retention, rid)
        summary["records"] += 1
        summary["objects"] += check.objects
        summary["bytes"] += check.bytes
        if not check.ok:
            summary["failed"].append({"record_id": rid, "problems": check.problems})
            record_failure(retention, check, clock.now().isoformat(timespec="seconds"), audit_retention)
        if progress:
            progress(summary)
    summary["finished_at"] = clock.now().isoformat(timespec="seconds")
    name = f"fixity/sweeps/{started.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}"
    retention._put(name, summary, retain_until=audit_retention.after(started))
    return summary


def last_sweep(retention) -> dict | None:
    names = sorted(retention.vault.names("fixity/sweeps/"))
    return retention._get(names[-1]) if names else None
