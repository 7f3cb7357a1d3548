"""Reconciling the audit trail with the store: what the trail says happened must still be so.

The hash chain and the checkpoints prove the trail was not changed; they say nothing about the store. An
insider who deletes a record's directory, or the hold documents and the legal-hold flags, leaves a store
that is consistent with itself — and the index, once rebuilt, agrees with it. The trail still names what
was there. So every event the trail holds is checked against the store:

* ``ingest`` (ok): every record it names is **present** — its manifest with its seal receipt, and beside
  every seal receipt of the record its object — or **disposed**, with a disposition certificate signed by
  a trusted key (``dispositions/<record>``);
* ``disposition`` (ok): every record it names has its certificate;
* ``hold`` (ok, a case and records): the store's hold documents (``holds/<case>/``) hold that case with
  those records, active unless a release was approved later (``approve`` of the case, or a worker's
  ``hold`` with ``release``); an approved release is in the store too;
* every object of every record held — by the trail or by the store's documents — carries the store's
  legal-hold flag, and so does an object held alone (``archive object hold NAME on``) until an approval
  released it. On the filesystem store a lock state that fails its authentication check is named here too;
* ``object-put`` (ok): the object is still in the store, with an authentic lock state, unless an
  ``object-delete`` event removed it.

A finding names the record, the object and the audit event (its sequence number) that says what should be
there. Scale: the events are read once (``archive audit verify`` passes them through :meth:`Trail.observe`
while it verifies them); the store is **listed** under ``records/``, ``dispositions/`` and ``holds/``;
the only objects read are the hold documents and the certificates of disposed records, and only objects
of held records are headed. Reading every object back is fixity's work (archive/fixity.py), which runs
this reconciliation too.

What it cannot see: a record whose ingest event was itself cut off the trail (see docs/audit.md on the
newest events), and a part deleted together with its receipt inside a record that keeps its manifest —
listing cannot tell that a part is missing without reading the manifest; ``archive fixity`` reads it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from archive.errors import ArchiveError, LockStateTampered, ObjectNotFound

@dataclass(frozen=True)
class Finding:
    """One thing the trail says that the store no longer shows."""

    kind: str  # record-missing | object-missing | certificate-missing | certificate-invalid | hold-missing |
    #            held-record-missing | hold-released | release-missing | legal-hold-off | lock-tampered |
    #            holds-unreadable
    message: str
    record_id: str | None = None
    object: str | None = None
    seq: int | None = None  # the audit event that says what should be there

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class _Case:
    records: dict[str, int] = field(default_factory=dict)  # record → the event that placed its hold
    active: bool = False
    seq: int = 0  # the event that decided the state
    placed: int = 0


class Trail:
    """What the audit trail says the store holds, gathered event by event (:meth:`observe`)."""

    def __init__(self) -> None:
        self.ingested: dict[str, int] = {}  # record → the first ingest event naming it
        self.disposed: dict[str, int] = {}
        self.cases: dict[str, _Case] = {}
        self.object_holds: dict[str, tuple[bool, int]] = {}  # object → (held, event)
        self.objects_put: dict[str, int] = {}  # ``archive object put`` objects not deleted since → event
        self.events = 0

    def observe(self, seq: int, event: dict) -> None:
        self.events += 1
        if event.get("outcome") != "ok":
            return
        action, target = event.get("action"), event.get("target")
        if not isinstance(target, dict):
            return
        records = [r for r in target.get("records") or [] if isinstance(r, str)]
        case = target.get("case") or event.get("case")
        if action == "ingest":
            for rid in records:
                self.ingested.setdefault(rid, seq)
        elif action == "disposition":
            for rid in records:
                self.disposed[rid] = seq
        elif action == "hold" and isinstance(target.get("release"), str):  # a worker's release
            self._release(target["release"], seq, records)
        elif action == "hold" and records and isinstance(case, str):
            held = self.cases.setdefault(case, _Case())
            for rid in records:
                held.records.setdefault(rid, seq)
            held.active, held.seq, held.placed = True, seq, held.placed or seq
        elif action == "hold" and isinstance(target.get("object"), str):
            self.object_holds[target["object"]] = (True, seq)
        elif action == "approve" and isinstance(target.get("case"), str):
            self._release(target["case"], seq, records)
        elif action == "approve" and isinstance(target.get("object"), str):
            self.object_holds[target["object"]] = (False, seq)
        elif action == "object-put" and isinstance(target.get("object"), str):
            self.objects_put[target["object"]] = seq
        elif action == "object-delete" and isinstance(target.get("object"), str):
            self.objects_put.pop(target["object"], None)
            self.object_holds.pop(target["object"], None)

    def _release(self, case: str, seq: int, released: list[str]) -> None:
        held = self.cases.get(case)
        if held is not None:
            held.active, held.seq = False, seq
        # releasing a case lifts the store's flag from every object of the records it released, including
        # objects someone had also held one by one
        for rid in released or (list(held.records) if held else []):
            for name in [n for n in self.object_holds if n.startswith(f"records/{rid}/")]:
                self.object_holds[name] = (False, seq)


@dataclass
class Reconciliation:
    """What the reconciliation compared and found."""

    records_in_trail: int = 0
    present: int = 0
    disposed: int = 0
    held_objects: int = 0
    orphans: list[str] = field(default_factory=list)  # sealed objects with no receipt (informational)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict:
        return {"ok": self.ok, "records_in_trail": self.records_in_trail, "present": self.present,
                "disposed": self.disposed, "held_objects": self.held_objects, "orphans": self.orphans,
                "findings": [f.as_dict() for f in self.findings]}


def trail_of(events: Iterable) -> Trail:
    """The trail of ``events`` (:meth:`archive.audit.log.AuditLog.events`), read without verification."""
    trail = Trail()
    for logged in events:
        try:
            event = json.loads(logged.raw)
        except ValueError:
            continue
        trail.observe(logged.seq, event)
    return trail


def _listing(store, prefix: str) -> tuple[dict[str, set[str]], dict[str, dict[str, list[str]]]]:
    """(record → names of its objects, record → name → its seal receipts' keys) under ``prefix``."""
    from archive.vault import _RECEIPT_KEY

    objects: dict[str, set[str]] = {}
    receipts: dict[str, dict[str, list[str]]] = {}
    for key in store.list(f"objects/{prefix}"):
        m = _RECEIPT_KEY.fullmatch(key)
        name = m.group(1) if m else key[len("objects/"):]
        parts = name.split("/")
        if len(parts) < 2:
            continue
        if m:
            receipts.setdefault(parts[1], {}).setdefault(name, []).append(key)
        else:
            objects.setdefault(parts[1], set()).add(name)
    return objects, receipts


def reconcile(trail: Trail, retention, trusted_keys: dict[str, bytes], *,
              records: set[str] | None = None) -> Reconciliation:
    """Check the store against ``trail`` (see the module docstring); only ``records`` when given.
    Never raises for what it finds; raises StorageError when the store cannot be listed."""
    from archive.retention.service import _MANIFEST

    vault = retention.vault
    store = vault.store
    out = Reconciliation()
    add = out.findings.append
    if records is None:
        objects, receipted = _listing(store, "records/")
        cert_objects, cert_receipts = _listing(store, "dispositions/")
    else:  # a few records: list only theirs
        objects, receipted, cert_objects, cert_receipts = {}, {}, {}, {}
        for rid in sorted(records):
            for into, prefix in (((objects, receipted), f"records/{rid}/"),
                                 ((cert_objects, cert_receipts), f"dispositions/{rid}")):
                o, r = _listing(store, prefix)
                into[0].update(o)
                into[1].update(r)
    committed = {rid for rid, names in receipted.items()
                 if any(_MANIFEST.fullmatch(n) for n in names if n in objects.get(rid, ()))}
    certificates = {rid for rid in cert_objects if f"dispositions/{rid}" in cert_receipts.get(rid, ())}
    wanted = (lambda rid: rid in records) if records is not None else (lambda rid: True)

    for rid in sorted(objects):
        if wanted(rid):
            out.orphans += sorted(n for n in objects[rid] if n not in receipted.get(rid, ()))

    for rid, seq in sorted(trail.ingested.items(), key=lambda kv: kv[1]):
        if not wanted(rid):
            continue
        out.records_in_trail += 1
        if rid in committed:
            out.present += 1
            for name in sorted(set(receipted.get(rid, {})) - objects.get(rid, set())):
                add(Finding("object-missing", f"{name}: its seal receipt is in the store but the object is gone "
                                              f"(deleted); record {rid} was ingested at audit event {seq}",
                            rid, name, seq))
        elif rid in certificates:
            out.disposed += 1
            _check_certificate(retention, rid, trail.disposed.get(rid, seq), trusted_keys, add)
        else:
            left = sorted(objects.get(rid, set()) | set(receipted.get(rid, {})))
            add(Finding("record-missing",
                        f"record {rid}, ingested at audit event {seq}, is missing from the store: no manifest "
                        f"with its receipt (records/{rid}/manifest) and no disposition certificate "
                        f"(dispositions/{rid})" + (f"; left: {', '.join(left)}" if left else ""),
                        rid, f"records/{rid}/manifest", seq))
    for rid, seq in sorted(trail.disposed.items(), key=lambda kv: kv[1]):
        if wanted(rid) and rid not in certificates:
            add(Finding("certificate-missing", f"record {rid} was disposed at audit event {seq}, but its "
                                               f"certificate dispositions/{rid} is missing from the store",
                        rid, f"dispositions/{rid}", seq))

    _check_holds(trail, retention, committed, objects, receipted, wanted, out, records is None)
    if records is None:  # objects sealed one by one (archive object put): still there, lock state authentic
        for name, seq in sorted(trail.objects_put.items()):
            try:
                store.head(f"objects/{name}")
            except LockStateTampered as e:
                add(Finding("lock-tampered", f"objects/{name}: {e} (sealed at audit event {seq})",
                            object=f"objects/{name}", seq=seq))
            except ObjectNotFound:
                add(Finding("object-missing", f"objects/{name}, sealed at audit event {seq} and never deleted "
                                              "through the archive, is missing from the store",
                            object=f"objects/{name}", seq=seq))
    return out


def _check_certificate(retention, rid: str, seq: int, trusted_keys: dict[str, bytes], add) -> None:
    name = f"dispositions/{rid}"
    try:
        certificate = retention.certificate(rid)
    except ArchiveError as e:
        add(Finding("certificate-invalid", f"{name} cannot be read ({e.code}: {e}); record {rid} was ingested "
                                           f"at audit event {seq}", rid, name, seq))
        return
    signature = certificate.pop("signature", None)
    public = trusted_keys.get((signature or {}).get("key_id"))
    try:
        if public is None:
            raise InvalidSignature
        body = json.dumps(certificate, sort_keys=True, ensure_ascii=False).encode()
        Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(signature["value"]), body)
    except (InvalidSignature, KeyError, TypeError, ValueError):
        add(Finding("certificate-invalid", f"{name} is not signed by a trusted key, so it does not show that "
                                           f"record {rid} (ingested at audit event {seq}) was disposed of "
                                           "lawfully", rid, name, seq))


def _check_holds(trail: Trail, retention, committed: set[str], objects: dict, receipted: dict, wanted,
                 out: Reconciliation, records_all: bool) -> None:
    add = out.findings.append
    retention.refresh()
    try:
        store_cases = retention.holds()
    except ArchiveError as e:
        add(Finding("holds-unreadable", f"the store's hold documents (holds/) cannot be read: {e.code}: {e}",
                    object="holds/"))
        store_cases = {}
    held: dict[str, tuple[str, int | None]] = {}  # record → (case, event) holding it
    for case, t in sorted(trail.cases.items()):
        s = store_cases.get(case)
        if s is None:
            for rid, seq in sorted(t.records.items()):
                if wanted(rid):
                    add(Finding("hold-missing", f"legal hold {case} on record {rid}, placed at audit event {seq}, "
                                                f"has no hold document in the store (holds/{case}/ was deleted)",
                                rid, f"holds/{case}/", seq))
        else:
            if t.active and not s["active"]:
                add(Finding("hold-released", f"the store shows legal hold {case} released, but the trail has no "
                                             f"approved release after it was placed (audit event {t.seq})",
                            object=f"holds/{case}/", seq=t.seq))
            elif not t.active and s["active"]:
                add(Finding("release-missing", f"the release of legal hold {case}, approved at audit event {t.seq}, "
                                               "is missing from the store's hold documents",
                            object=f"holds/{case}/", seq=t.seq))
            for rid, seq in sorted(t.records.items()):
                if wanted(rid) and rid not in s["records"]:
                    add(Finding("hold-missing", f"legal hold {case} on record {rid}, placed at audit event {seq}, "
                                                "is not in the store's hold documents", rid, f"holds/{case}/", seq))
        if t.active:
            for rid, seq in t.records.items():
                held.setdefault(rid, (case, seq))
    for case, s in store_cases.items():
        if s["active"]:
            for rid in s["records"]:
                held.setdefault(rid, (case, trail.cases[case].placed if case in trail.cases else None))

    store = retention.vault.store
    for rid, (case, seq) in sorted(held.items()):
        if not wanted(rid):
            continue
        if rid not in committed:  # named above as missing; that it was held makes it worse
            add(Finding("held-record-missing", f"legal hold {case} on record {rid}" + (
                f", placed at audit event {seq}," if seq is not None else "") + " holds a record the store no "
                "longer has: it was deleted under legal hold", rid, f"records/{rid}/", seq))
            continue
        mine = receipted.get(rid, {})
        # the manifest and the parts (retention decisions sealed after the hold was placed are not held)
        for name in sorted(n for n in set(mine) & objects.get(rid, set()) if "/retention-" not in n):
            for key in [f"objects/{name}", *mine[name]]:
                out.held_objects += 1
                _check_held(store, key, rid, case, seq, add)
    for name, (on, seq) in sorted(trail.object_holds.items()):
        if on and (records_all or name.split("/")[1:2] and wanted(name.split("/")[1])):
            out.held_objects += 1
            _check_held(store, f"objects/{name}", None, None, seq, add)


def _check_held(store, key: str, rid: str | None, case: str | None, seq: int | None, add) -> None:
    why = (f"record {rid} is under legal hold {case}" if rid else "the object was placed under legal hold") + (
        f" (audit event {seq})" if seq is not None else " (the store's hold documents)")
    try:
        info = store.head(key)
    except LockStateTampered as e:
        add(Finding("lock-tampered", f"{key}: {e}; {why}", rid, key, seq))
        return
    except ObjectNotFound:
        add(Finding("object-missing", f"{key} is missing from the store; {why}", rid, key, seq))
        return
    if not info.legal_hold:
        add(Finding("legal-hold-off", f"{key} has no legal hold in the store, but {why}: the hold was removed "
                                      "outside the archive", rid, key, seq))


def trusted_keys(keys) -> dict[str, bytes]:
    """The signing keys a verifier trusts: the key provider's (the keyring's), never the store's copies."""
    return keys.signing_public_keys() if hasattr(keys, "signing_public_keys") else {}


@dataclass
class ArchiveCheck:
    """``archive audit verify``: the log verified, and the store reconciled with it."""

    log: object  # archive.audit.verify.Report
    store: Reconciliation
    witness_inside_home: bool = False

    @property
    def ok(self) -> bool:
        return self.log.ok and self.store.ok

    def as_dict(self) -> dict:
        log = self.log
        return {"ok": self.ok, "events": log.events, "batches": log.batches, "checkpoints": log.checkpoints,
                "latest_checkpoint": log.latest_checkpoint, "tail_before_verification": log.tail,
                "checkpoint_written": log.checkpoint_written, "unsigned_batches": log.unsigned_batches,
                "witness": {**log.witness, "inside_archive_home": self.witness_inside_home},
                # the log's problems, then what the store lacks (at the audit event that says it should be there)
                "problems": [p.__dict__ for p in log.problems] + [
                    {"position": f.seq, **f.as_dict()} for f in self.store.findings],
                "store": self.store.as_dict()}


def check_archive(archive, retention, *, checkpoint: bool = True) -> ArchiveCheck:
    """Verify the audit log (archive/audit/verify.py) against the witness, checkpointing a verified tail,
    and reconcile the store with the trail it holds — reading the events once."""
    from archive.audit.verify import verify

    trusted = trusted_keys(archive.keys)
    trail = Trail()
    report = verify(archive.audit, trusted, witness=archive.audit.witness, observe=trail.observe,
                    checkpoint=checkpoint)
    return ArchiveCheck(report, reconcile(trail, retention, trusted), archive.settings.audit_witness_inside_home)
