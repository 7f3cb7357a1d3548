"""Fixity: re-read sealed objects and prove they are still what was archived — and still there.

A check reads every object of a record back through the vault: each segment's authentication tag, the
plaintext SHA-256 against the seal receipt, and, for parts, the receipt against the SHA-256 and tag digest
the manifest recorded at capture. It also heads every object and receipt of the record: a lock state that
fails its authentication check (the filesystem store's MAC, archive/store/filesystem.py), a retain-until
earlier than the record's retention decision, or COMPLIANCE weakened to GOVERNANCE is a failure — on S3,
what an insider with ``s3:BypassGovernanceRetention`` can do; on the filesystem store, what anyone who can
edit its files can.

A sweep also reconciles the store with the audit trail (archive/audit/reconcile.py): every record an
ingest event names is present or disposed with its signed certificate, every legal hold the trail placed
is still in the store's hold documents and on every object of its records. A record missing from the
store fails the sweep like a damaged one, naming the audit event that ingested it.

A sealed object with no seal receipt is an **orphan**: a crash between writing an object and its receipt
(archive/vault.py), left for good because WORM objects cannot be removed. It is never part of a record —
readers start from receipts — so a check never reads it as one: orphans are listed in the sweep's summary
(``orphans``, informational) and never fail it. (A part the manifest names is never an orphan: its
missing receipt is a failure.)

The sweep is recorded (``fixity/sweeps/<time>``), so ``archive status`` can say when the last one ran and
what it found. A failure is **never repaired**: it is sealed as ``fixity/failures/<record>/NNNNNN`` and
becomes the record's finding ``fixity-failed`` (``archive search finding:fixity-failed``), for an auditor
to investigate from the object's backups or replicas.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from archive.audit.reconcile import _listing, reconcile, trail_of, trusted_keys
from archive.dates import parse_datetime
from archive.errors import ArchiveError, LockStateTampered, ObjectNotFound
from archive.store.base import LockMode
from archive.vault import Binding

FINDING = "fixity-failed"
_SLACK = timedelta(seconds=1)  # S3 keeps retain-until in whole seconds (rounded up)


@dataclass
class Check:
    record_id: str
    objects: int = 0
    bytes: int = 0
    problems: list[dict] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # sealed without a receipt: not part of the record

    @property
    def ok(self) -> bool:
        return not self.problems


def check_record(retention, rid: str) -> Check:
    """Read back every object of record ``rid`` and check its lock; problems name the object and what is
    wrong. Objects without a seal receipt that the manifest does not name are orphans, not problems."""
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
    objects, receipts = _listing(vault.store, f"records/{rid}/")
    names, receipted = objects.get(rid, set()), receipts.get(rid, {})
    for name in sorted(names | set(parts)):
        part = parts.get(name)
        if part is None and name not in receipted:
            result.orphans.append(name)  # a crash left it without its receipt; its record was sealed anew
            continue
        read(name, Binding(rid, part["name"]) if part else None, part)
    for name in sorted(set(receipted) - names - set(parts)):
        result.problems.append({"object": name, "problem": "missing: its seal receipt is in the store but the "
                                                           "object is gone (deleted)"})
    _check_locks(retention, rid, manifest, {n: receipted[n] for n in set(receipted) & names}, result)
    return result


def _check_locks(retention, rid: str, manifest: dict, objects: dict[str, list[str]], result: Check) -> None:
    """Every object and receipt of the record: lock state authentic, retained at least as long as the
    record's current decision says, COMPLIANCE where the record was locked in COMPLIANCE."""
    try:
        decision = retention.decision(rid, manifest)
        until = parse_datetime(decision["retain_until"])
    except (ArchiveError, KeyError, ValueError) as e:
        result.problems.append({"object": f"records/{rid}/retention", "problem": f"no readable retention "
                                                                                f"decision: {e}"})
        return
    compliance = manifest.get("retention", {}).get("lock_mode") == "compliance"
    store = retention.vault.store
    for name in sorted(objects):
        for key in [f"objects/{name}", *objects[name]]:
            try:
                info = store.head(key)
            except LockStateTampered as e:
                result.problems.append({"object": key, "problem": f"{e.code}: {e}"})
                continue
            except ArchiveError as e:
                result.problems.append({"object": key, "problem": f"{e.code}: {e}"})
                continue
            if info.retain_until is None or info.retain_until + _SLACK < until:
                held = info.retain_until.isoformat() if info.retain_until else "nothing"
                result.problems.append({"object": key, "problem": f"retention shortened: the store retains it until "
                                                                  f"{held}, the record's decision says "
                                                                  f"{decision['retain_until']}"})
            if compliance and "/retention-" not in name and info.mode is not LockMode.COMPLIANCE:
                result.problems.append({"object": key, "problem": "lock weakened: the record was locked in "
                                                                  "COMPLIANCE mode, the store now says "
                                                                  f"{info.mode.value if info.mode else 'none'}"})


def record_failure(retention, check: Check, checked_at: str, audit_retention) -> None:
    """Seal the failure and re-index the record, so the finding is searchable."""
    until = audit_retention.after(retention.clock.now())
    retention._put_next(f"fixity/failures/{check.record_id}/", {
        "format": "archive-fixity-failure/1", "record_id": check.record_id, "checked_at": checked_at,
        "problems": check.problems}, retain_until=until)
    retention.forget_fixity()
    try:
        retention.reindex(check.record_id)
    except ArchiveError:  # the manifest is gone or unreadable: the failure is sealed; mark what the index had
        indexed = retention.index.get(check.record_id)
        if indexed is not None:
            finding = {"code": FINDING, "checked_at": checked_at, "problems": check.problems}
            retention.index.upsert({**indexed, "findings": [*indexed.get("findings", []), finding]})


def sweep(retention, *, audit_retention, record_ids=None, limit: int | None = None, progress=None) -> dict:
    """Check ``record_ids`` (default: every record in the store, at most ``limit``) and reconcile the store
    with the audit trail (for those records, or all); seal the sweep's summary. Returns it: ``failed``
    (each record with its problems), ``reconciliation`` (what the trail names and the store lacks) and
    ``orphans`` (informational)."""
    clock = retention.clock
    started = clock.now()
    summary = {"format": "archive-fixity-sweep/1", "started_at": started.isoformat(timespec="seconds"),
               "records": 0, "objects": 0, "bytes": 0, "failed": [], "orphans": []}
    failed: dict[str, list[dict]] = {}
    orphans: set[str] = set()
    for rid in (record_ids if record_ids is not None else retention.record_ids()):
        if limit is not None and summary["records"] >= limit:
            break
        check = check_record(retention, rid)
        summary["records"] += 1
        summary["objects"] += check.objects
        summary["bytes"] += check.bytes
        orphans.update(check.orphans)
        if not check.ok:
            failed[rid] = list(check.problems)
        if progress:
            progress({**summary, "failed": list(failed)})
    archive = retention.archive
    archive.audit.integrate_all(trusted_keys=trusted_keys(archive.keys))  # the workers' staged events too
    reconciliation = reconcile(trail_of(archive.audit.events()), retention, trusted_keys(archive.keys),
                               records=set(record_ids) if record_ids is not None else None)
    orphans.update(reconciliation.orphans)
    for f in reconciliation.findings:
        if f.record_id is not None:
            failed.setdefault(f.record_id, []).append(
                {"object": f.object, "problem": f.message, **({"event": f.seq} if f.seq is not None else {})})
    checked_at = clock.now().isoformat(timespec="seconds")
    for rid, problems in failed.items():
        summary["failed"].append({"record_id": rid, "problems": problems})
        record_failure(retention, Check(rid, problems=problems), checked_at, audit_retention)
    summary["reconciliation"] = reconciliation.as_dict()
    summary["orphans"] = sorted(orphans)
    summary["finished_at"] = clock.now().isoformat(timespec="seconds")
    name = f"fixity/sweeps/{started.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}"
    retention._put(name, summary, retain_until=audit_retention.after(started))
    return summary


def last_sweep(retention) -> dict | None:
    names = sorted(retention.vault.names("fixity/sweeps/"))
    return retention._get(names[-1]) if names else None
