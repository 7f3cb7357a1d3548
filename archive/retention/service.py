"""Retention at work: policy versions remembered, trigger events, record locks, legal holds, disposition.

Everything here lives in the object store, sealed like records, so the index can be rebuilt from it::

    policies/<id>/v<version:06d>         the text of every policy version the archive has applied (or
                                         ``….retry-N`` when a writer died before that name's receipt)
    events/<event id>                    trigger events (contract terminated, dispute resolved …)
    records/<rid>/retention-<seq:06d>    a record's decision after an event changed it (the manifest
                                         holds the first); the highest seq is current
    holds/<case>/<seq:06d>               legal hold placed (records) / released (after four-eyes approval)
    dispositions/<rid>                   the signed certificate of a disposed record; outlives it

Locks only grow: a recomputed decision extends every object of the record (parts, manifest, receipts,
decisions) to the new date and never shortens one. Legal holds set the store's own legal-hold flag on
every object of every record a case covers; a record stays held while any case covers it. Every hold
action (placing, asking for a release, approving one) needs a reason that says something
(:func:`archive.access.require_reason`), whoever calls: the CLI, the API or a worker.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from archive.access import require_reason
from archive.clock import SYSTEM, Clock
from archive.crypto.stream import Binding
from archive.dates import Duration, parse_datetime, parse_duration
from archive.errors import ApprovalError, ArchiveError, InvalidMetadata, ObjectExists, ObjectLocked, ObjectNotFound
from archive.retention.decide import IMPLAUSIBLE_CAPTURE, decide
from archive.retention.policy import Policy, PolicyError, PolicySet, load_policies
from archive.vault import candidates

EVENT_KINDS = ("contract-terminated", "account-closed", "dispute-opened", "dispute-resolved", "retention-extended")
CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_POLICY_NAME = re.compile(r"policies/([a-z0-9-]+)/v(\d{6})(?:\.retry-\d+)?")
_MANIFEST = re.compile(r"records/(r[a-z2-7]{32})/manifest(\.retry-\d+)?")
CERTIFICATE_FORMAT = "archive-disposition/1"


def default_policies_dir() -> Path:
    """The policy pack shipped with the archive (``policies/`` beside the ``archive`` package)."""
    return Path(__file__).resolve().parent.parent.parent / "policies"


@dataclass
class Plan:
    """What disposition would do with one record whose retention has passed."""

    record_id: str
    action: str  # delete | review | held | pending | store-locked
    retain_until: str
    why: str
    policies: list[str] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in ([], None)}


class Retention:
    """Policies, events, holds and disposition for one archive and its index."""

    def __init__(self, archive, index, *, policies_dir: Path | None = None, clock: Clock = SYSTEM,
                 min_lock: Duration | str = "P1D") -> None:
        self.archive = archive
        self.vault = archive.vault
        self.index = index
        self.policies_dir = Path(policies_dir or default_policies_dir())
        self.clock = clock
        self.min_lock = parse_duration(min_lock) if isinstance(min_lock, str) else min_lock
        self._policies: PolicySet | None = None
        self._events: list[dict] | None = None
        self._holds: dict[str, dict] | None = None
        self._fixity: dict[str, list[dict]] | None = None
        self._policies_stamp: tuple | None = None
        self._docs: dict[str, dict] = {}  # events, holds and fixity failures read so far (write-once)
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Look at the store's current state again (events, holds, fixity failures) and at the policy
        files: a long-lived worker calls this before each task. Documents are write-once, so only names
        not seen before are read; the policy set is reloaded only when its files changed."""
        with self._lock:
            self._events = self._holds = self._fixity = None

    def _doc(self, name: str) -> dict:
        """A write-once document (event, hold, fixity failure), read from the store once."""
        doc = self._docs.get(name)
        if doc is None:
            doc = self._docs[name] = self._get(name)
        return doc

    # --- sealed JSON documents -------------------------------------------------------------------------

    def _put(self, name: str, doc: dict, *, retain_until: datetime | None = None, mode=None) -> bytes:
        raw = json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()
        kind, owner, *rest = name.split("/")
        self.vault.seal(name, io.BytesIO(raw), Binding(owner, rest[-1] if rest else kind),
                        retain_until=retain_until, mode=mode)
        return raw

    def _put_next(self, prefix: str, doc: dict, **lock) -> None:
        """Seal ``doc`` as the next ``<prefix>NNNNNN``; a concurrent writer taking a number moves us on."""
        seq = len([n for n in self.vault.names(prefix) if n[len(prefix):].isdigit()]) + 1
        while True:
            try:
                self._put(f"{prefix}{seq:06d}", doc, **lock)
                return
            except ObjectExists:
                seq += 1

    def _get(self, name: str) -> dict:
        return json.loads(self.vault.read(name))

    # --- policies ----------------------------------------------------------------------------------------

    def known_versions(self) -> dict[str, dict[int, str]]:
        """Policy id → version → text SHA-256 of every version this archive has applied. A version whose
        object has no receipt yet (another process is recording it, or died doing so) is not known."""
        known: dict[str, dict[int, str]] = {}
        for name in sorted(self.vault.names("policies/", with_receipt=True)):
            m = _POLICY_NAME.fullmatch(name)
            if m:  # the seal receipt holds the text's SHA-256: no need to decrypt it
                known.setdefault(m.group(1), {}).setdefault(int(m.group(2)), self.vault.receipt(name).plaintext_sha256)
        return known

    def _record_version(self, policy: Policy) -> None:
        """Seal a policy version's text, once: a name another process holds is that process's record of
        it when its receipt appears (and its text must be this one); a name left without a receipt by a
        writer that died is passed over for the next."""
        text = policy.text.encode()
        for name in candidates(f"policies/{policy.id}/v{policy.version:06d}"):
            try:
                self.vault.seal(name, io.BytesIO(text), Binding(policy.id, f"v{policy.version}"))
                return
            except ObjectExists:
                receipt = self._receipt_soon(name)
            if receipt is None:
                continue
            if receipt.plaintext_sha256 != policy.text_sha256:
                raise PolicyError(f"{policy.file}: policy {policy.id} version {policy.version} was recorded with "
                                  "another text by another process; a changed policy needs a new version",
                                  file=str(policy.file))
            return
        raise ArchiveError(f"policies/{policy.id}/v{policy.version:06d}: too many interrupted attempts")

    def _receipt_soon(self, name: str, wait: float = 5.0):
        """The receipt of ``name``, waiting up to ``wait`` seconds for a writer that is sealing it now (it
        writes the object, then the receipt); None if none comes."""
        deadline, delay = time.monotonic() + wait, 0.02
        while True:
            try:
                return self.vault.receipt(name)
            except ObjectNotFound:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(delay)
                delay = min(0.5, delay * 2)

    def policy_set(self) -> PolicySet:
        """The validated policy set, loaded once; new versions are recorded in the store before first use.
        Raises PolicyError — and then nothing is archived under a set that could be wrong."""
        with self._lock:
            stamp = self._stamp()
            if self._policies is None or stamp != self._policies_stamp:
                known = self.known_versions()
                policies = load_policies(self.policies_dir, known_versions=known)
                for p in policies.policies:
                    if p.version not in known.get(p.id, {}):  # (a known one has this text: load_policies checked)
                        self._record_version(p)
                self._policies, self._policies_stamp = policies, stamp
            return self._policies

    def _stamp(self) -> tuple:
        """What the policy files are now (names, sizes, modification times): a change means reload."""
        try:
            return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in self.policies_dir.iterdir()
                                if p.suffix in (".yaml", ".yml") for st in [p.stat()]))
        except OSError:
            return ()

    def lock_date(self, decision: dict) -> datetime:
        """The object lock for a decision: its date, but never less than ARCHIVE_MIN_LOCK from now."""
        return max(parse_datetime(decision["retain_until"]), self.min_lock.after(self.clock.now()))

    # --- events ------------------------------------------------------------------------------------------

    def events(self) -> list[dict]:
        """Every trigger event in the store (read once per instance)."""
        with self._lock:
            if self._events is None:
                self._events = [self._doc(name) for name in sorted(self.vault.names("events/"))]
            return self._events

    def add_event(self, kind: str, *, date: str, by: str, account: str | None = None, contract: str | None = None,
                  customer: str | None = None, records: list[str] | None = None, dispute: str | None = None,
                  until: str | None = None, note: str | None = None) -> tuple[dict, list[dict]]:
        """Record a trigger event, then recompute and extend the locks of every record it covers.
        Returns (event, [{record_id, before, after}]) for the records whose decision changed."""
        if kind not in EVENT_KINDS:
            raise InvalidMetadata("kind", f"unknown event {kind!r}; events are {', '.join(EVENT_KINDS)}")
        selector = {k: v for k, v in (("account", account), ("contract", contract), ("customer", customer),
                                      ("records", records)) if v}
        if len(selector) != 1:
            raise InvalidMetadata("selector", "name exactly one of --account, --contract, --customer or records")
        if kind.startswith("dispute-") and not dispute:
            raise InvalidMetadata("dispute", f"{kind} needs --dispute ID")
        if kind == "retention-extended":
            if not until:
                raise InvalidMetadata("until", "retention-extended needs --until DATE")
            until = _iso(until, "until")
        when = _iso(date, "date")
        if parse_datetime(when) > self.clock.now():
            raise InvalidMetadata("date", f"{date} is in the future; record an event when it has happened")
        event = {"format": "archive-event/1", "id": f"ev-{self.clock.now():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}",
                 "kind": kind, "date": when, "selector": selector, "recorded_at": self.clock.now().isoformat(),
                 "recorded_by": by, **({"dispute": dispute} if dispute else {}), **({"until": until} if until else {}),
                 **({"note": note} if note else {})}
        self._put(f"events/{event['id']}", event)
        with self._lock:
            if self._events is not None:
                self._events.append(event)
        changed = []
        for rid in self._affected(selector):
            before, after = self.apply(rid)
            if before["retain_until"] != after["retain_until"] or before["pending"] != after["pending"]:
                changed.append({"record_id": rid, "before": before["retain_until"], "after": after["retain_until"],
                                "final": after["final"], "pending": after["pending"]})
        return event, changed

    def _affected(self, selector: dict) -> list[str]:
        if "records" in selector:
            return list(selector["records"])
        kind, value = next(iter(selector.items()))
        return self.index.find(kind, value)

    # --- records ----------------------------------------------------------------------------------------

    def manifest(self, rid: str) -> dict:
        """The manifest of a committed record (sealed with its receipt: a manifest sealed by a run that
        died before its receipt is skipped). Raises ObjectNotFound."""
        for name in self.vault.names(f"records/{rid}/manifest"):
            if _MANIFEST.fullmatch(name):
                try:
                    return self._get(name)
                except ObjectNotFound:
                    continue
        raise ObjectNotFound(f"no record {rid!r}", record_id=rid)

    def _decisions(self, rid: str) -> list[str]:
        return sorted(n for n in self.vault.names(f"records/{rid}/retention-") if n[-6:].isdigit())

    def decision(self, rid: str, manifest: dict | None = None) -> dict:
        """The record's current retention decision."""
        names = self._decisions(rid)
        if names:
            return self._get(names[-1])["decision"]
        return (manifest or self.manifest(rid))["retention"]

    def record_ids(self) -> Iterator[str]:
        """Every committed record, from the store (the system of record), not the index. A manifest left
        without its receipt by a writer that died is not a commit, and is not listed."""
        seen = set()
        for name in self.vault.names("records/", with_receipt=True):
            m = _MANIFEST.fullmatch(name)
            if m and m.group(1) not in seen:
                seen.add(m.group(1))
                yield m.group(1)

    def objects(self, rid: str) -> list[str]:
        """Every sealed object of a record (each with its receipts)."""
        return list(self.vault.names(f"records/{rid}/"))

    def apply(self, rid: str) -> tuple[dict, dict]:
        """Recompute a record's decision from the current events and policies; store it and extend its
        locks when it changed. Returns (before, after)."""
        manifest = self.manifest(rid)
        before = self.decision(rid, manifest)
        after = decide(rid, manifest["metadata"], self.events(), self.policy_set(), self.clock.now())
        # A lock never shrinks: a decision whose date moved earlier (a policy edited to a shorter period,
        # say) keeps the old date; the newer decision records both.
        if parse_datetime(after["retain_until"]) < parse_datetime(before["retain_until"]):
            after = {**after, "retain_until": before["retain_until"],
                     "kept_from_earlier_decision": before["retain_until"]}
        if _essential(after) == _essential(before):
            return before, before
        until = self.lock_date(after)
        for name in self.objects(rid):
            head = self.vault.head(name)
            if head.retain_until is None or head.retain_until < until:
                # the mode stays as it is (compliance never weakens); an unlocked object takes the decision's
                self.vault.extend_retention(name, until, None if head.mode else after["lock_mode"])
        self._put_next(f"records/{rid}/retention-", {"format": "archive-retention/1", "record_id": rid,
                                                      "decision": after}, retain_until=until, mode=after["lock_mode"])
        self.reindex(rid, manifest, after)
        return before, after

    def reindex(self, rid: str, manifest: dict | None = None, decision: dict | None = None) -> None:
        manifest = manifest or self.manifest(rid)
        self.index.upsert(self.view(manifest, decision))

    def rebuild_index(self, progress=None) -> int:
        """Drop every index entry and rebuild from the store alone (manifests, current decisions, holds).
        Returns the number of records indexed."""
        with self._lock:
            self._holds = self._fixity = None
        held = self.held_records()
        count = 0
        with self.index.rebuilding() as fresh:
            for rid in self.record_ids():
                manifest = self.manifest(rid)
                fresh.upsert(self.view(manifest, cases=held.get(rid, [])))
                count += 1
                if progress and count % 100 == 0:
                    progress(count)
        return count

    def view(self, manifest: dict, decision: dict | None = None, cases: list[str] | None = None, *,
             new: bool = False) -> dict:
        """What the index keeps of a record: the manifest with its current decision, holds and fixity
        findings (``new``: a record just committed, which has none yet)."""
        rid = manifest["record_id"]
        if decision is None:
            decision = self.decision(rid, manifest)
        if cases is None:
            cases = self.held_records().get(rid, [])
        failures = [] if new else self.fixity_failures().get(rid, [])
        if failures:  # a fixity check found the record altered or missing: a finding auditors search for
            manifest = {**manifest, "findings": [*manifest.get("findings", []), *(
                {"code": "fixity-failed", "checked_at": f["checked_at"], "problems": f["problems"]}
                for f in failures)]}
        return {**manifest, "retention": decision, "holds": cases}

    def fixity_failures(self) -> dict[str, list[dict]]:
        """Record → the fixity failures sealed for it (read once per instance)."""
        with self._lock:
            if self._fixity is None:
                failures: dict[str, list[dict]] = {}
                for name in sorted(self.vault.names("fixity/failures/")):
                    doc = self._doc(name)
                    failures.setdefault(doc["record_id"], []).append(doc)
                self._fixity = failures
            return self._fixity

    def forget_fixity(self) -> None:
        with self._lock:
            self._fixity = None

    # --- legal holds ---------------------------------------------------------------------------------------

    def holds(self) -> dict[str, dict]:
        """Case → {records, active, history} from the hold documents (read once per instance, and again
        after this instance places or releases one)."""
        with self._lock:
            if self._holds is None:
                self._holds = self._read_holds()
            return self._holds

    def _read_holds(self) -> dict[str, dict]:
        cases: dict[str, dict] = {}
        for name in sorted(self.vault.names("holds/")):
            doc = self._doc(name)
            case = cases.setdefault(doc["case"], {"case": doc["case"], "records": [], "active": False,
                                                  "history": []})
            case["history"].append({k: doc.get(k) for k in ("action", "at", "by", "reason", "query", "approval")})
            if doc["action"] == "place":
                case["records"] = sorted(set(case["records"]) | set(doc["records"]))
                case["active"] = True
            else:
                case["active"] = False  # the records stay listed: what the case held, for the record
        return cases

    def held_records(self) -> dict[str, list[str]]:
        """Record id → the active cases holding it."""
        held: dict[str, list[str]] = {}
        for case in self.holds().values():
            if case["active"]:
                for rid in case["records"]:
                    held.setdefault(rid, []).append(case["case"])
        return held

    def _hold_doc(self, case: str, doc: dict) -> None:
        self._put_next(f"holds/{case}/", doc)
        with self._lock:
            self._holds = None

    def place_hold(self, case: str, records: list[str], *, by: str, reason: str | None,
                   query: str | None = None) -> list[str]:
        """Hold every object of ``records`` for ``case``; returns the records now held. Raises
        AccessDenied without a reason, InvalidMetadata for a bad case id or no records."""
        require_reason(reason, "placing a legal hold")
        check_case(case)
        if not records:
            raise InvalidMetadata("records", f"the hold for {case} covers no records"
                                  + (f" (query {query!r} matched none)" if query else ""))
        manifests = {rid: self.manifest(rid) for rid in records}  # every record must exist
        self._hold_doc(case, {"format": "archive-hold/1", "case": case, "action": "place", "records": sorted(records),
                              "query": query, "by": by, "reason": reason, "at": self.clock.now().isoformat()})
        held = self.held_records()
        for rid, manifest in manifests.items():
            for name in self.objects(rid):
                self.vault.set_legal_hold(name, True)
            self.index.upsert(self.view(manifest, cases=held.get(rid, [])))
        return sorted(records)

    def release_hold(self, case: str, *, by: str, approval: str, reason: str | None) -> list[str]:
        """Release ``case`` (after its four-eyes approval); records no other case holds lose the store's
        legal hold. Returns the records released."""
        require_reason(reason, "releasing a legal hold")
        with self._lock:
            self._holds = None  # decide on the store's current state, not a cached one
        cases = self.holds()
        if case not in cases or not cases[case]["active"]:
            raise ApprovalError(f"no active legal hold {case!r}", case=case)
        records = cases[case]["records"]
        self._hold_doc(case, {"format": "archive-hold/1", "case": case, "action": "release", "records": records,
                              "by": by, "approval": approval, "reason": reason, "at": self.clock.now().isoformat()})
        still = self.held_records()
        released = []
        for rid in records:
            if rid not in still:
                for name in self.objects(rid):
                    self.vault.set_legal_hold(name, False)
                released.append(rid)
            self.index.upsert(self.view(self.manifest(rid), cases=still.get(rid, [])))
        return released

    def request_release(self, *, by: str, reason: str | None, case: str | None = None,
                        object_name: str | None = None) -> str:
        """Ask for the release of a case's hold (or of one object's, for ``archive object hold``); it takes
        effect only when a second, different identity approves it (:meth:`approve`). Returns the request id.
        Raises AccessDenied without a reason, ApprovalError when there is no such hold."""
        from archive.approvals import Approvals

        require_reason(reason, "asking for the release of a legal hold")
        if case is not None:
            with self._lock:
                self._holds = None
            if not self.holds().get(case, {}).get("active"):
                raise ApprovalError(f"no active legal hold {case!r}", case=case)
            target = {"case": case}
        else:
            self.vault.head(object_name)  # the object must exist
            target = {"object": object_name}
        return Approvals(self.archive).request("hold-release", target, requested_by=by, reason=reason)

    def pending_approvals(self) -> list[dict]:
        """Four-eyes requests waiting for a second person (see :meth:`archive.approvals.Approvals.pending`)."""
        from archive.approvals import Approvals

        return Approvals(self.archive).pending()

    def approve(self, request_id: str, *, by: str, reason: str | None) -> dict:
        """Approve another identity's request and carry it out. Raises AccessDenied for one's own request
        or without a reason, IntegrityError for a request that cannot be trusted (tampered, unsigned, its
        requester not the one the audit trail records), ApprovalError for one approved already."""
        from archive.approvals import Approvals

        request = Approvals(self.archive).approve(request_id, approved_by=by, reason=reason)
        target = request["target"]
        done = {"approved": request_id, "action": request["action"], "requested_by": request["requested_by"],
                "target": target}
        if request["action"] == "hold-release" and "case" in target:
            done["released"] = self.release_hold(target["case"], by=by, approval=request_id, reason=reason)
        elif request["action"] == "hold-release":
            self.vault.set_legal_hold(target["object"], False)
        return done

    # --- disposition --------------------------------------------------------------------------------------

    def plan(self, *, reviewed: set[str] = frozenset()) -> list[Plan]:
        """Every record whose retention has passed, with what disposition would do and why. Records still
        retained are not listed."""
        now = self.clock.now()
        with self._lock:
            self._holds = None  # disposition decides on the store's current holds
        held = self.held_records()
        plans = []
        for rid in self.record_ids():
            manifest = self.manifest(rid)
            d = self.decision(rid, manifest)
            until = parse_datetime(d["retain_until"])
            policies = [f"{p['id']} v{p['version']}" for p in d["policies"]]
            if until > now:
                continue
            if not d["final"]:
                plans.append(Plan(rid, "pending", d["retain_until"], "waiting for " + ", ".join(d["pending"]),
                                  policies))
            elif rid in held:
                plans.append(Plan(rid, "held", d["retain_until"], "legal hold " + ", ".join(held[rid]), policies,
                                  held[rid]))
            elif any(self.vault.head(n).legal_hold for n in self.objects(rid)):
                plans.append(Plan(rid, "held", d["retain_until"], "the store has a legal hold on its objects",
                                  policies))
            elif rid not in reviewed and (odd := next((f for f in manifest.get("findings", [])
                                                        if f.get("code") == IMPLAUSIBLE_CAPTURE), None)):
                plans.append(Plan(rid, "review", d["retain_until"], f"its capture time is implausible "
                                  f"({odd['started_at']}), and retention was counted from it: check the recorder's "
                                  "clock, then confirm with --reviewed " + rid, policies))
            elif d["on_expiry"] == "review" and rid not in reviewed:
                plans.append(Plan(rid, "review", d["retain_until"], f"{d['governing']} asks for review before "
                                  "deletion: confirm with --reviewed " + rid, policies))
            else:
                plans.append(Plan(rid, "delete", d["retain_until"], f"retention under {d['governing']} ended "
                                  f"{d['retain_until']}", policies))
        return plans

    def dispose(self, plans: list[Plan], *, by: str, signer=None) -> list[dict]:
        """Carry out the ``delete`` plans: delete every object of each record (parts first, manifest
        last), write its signed certificate, drop it from the index. A record the store still locks is
        left whole and reported (``store-locked``)."""
        results = []
        for plan in plans:
            if plan.action != "delete":
                continue
            try:
                results.append(self._dispose_one(plan, by=by, signer=signer))
            except ObjectLocked as e:
                results.append({"record_id": plan.record_id, "action": "store-locked", "why": str(e)})
        return results

    def _dispose_one(self, plan: Plan, *, by: str, signer) -> dict:
        rid = plan.record_id
        manifest = self.manifest(rid)
        decision = self.decision(rid, manifest)
        names = self.objects(rid)
        for name in names:  # refuse before deleting anything: never leave a half-disposed record
            head = self.vault.head(name)
            if head.locked(self.clock.now()) or head.legal_hold:
                raise ObjectLocked(f"{name} is locked in the store until {head.retain_until}"
                                   f"{' and under legal hold' if head.legal_hold else ''}", key=name)
        certificate = {
            "format": CERTIFICATE_FORMAT, "record_id": rid, "disposed_at": self.clock.now().isoformat(),
            "disposed_by": by, "source": manifest["metadata"]["source"], "channel": manifest["metadata"]["channel"],
            "started_at": manifest["metadata"]["started_at"], "ingested_at": manifest["ingested_at"],
            "retain_until": decision["retain_until"], "governing": decision["governing"],
            "policies": [{k: p[k] for k in ("id", "version", "sha256", "citation", "until")}
                         for p in decision["policies"]],
            "events": decision.get("events", []),
            "parts": [{k: p.get(k) for k in ("name", "size", "sha256", "tag_digest")} for p in manifest["parts"]],
            "objects": names,
        }
        if signer is not None:
            body = json.dumps(certificate, sort_keys=True, ensure_ascii=False).encode()
            certificate["signature"] = {"key_id": signer.key_id, "algorithm": "Ed25519",
                                        "value": base64.b64encode(signer.sign(body)).decode()}
        keep = parse_duration(self.archive.settings.audit_retention).after(self.clock.now())
        last = [n for n in names if _MANIFEST.fullmatch(n) or "/retention-" in n]
        for name in names:
            if name not in last:
                self.vault.delete(name)
        try:
            raw = self._put(f"dispositions/{rid}", certificate, retain_until=max(keep, self.min_lock.after(
                self.clock.now())))
        except ObjectExists:  # a run that died after writing it: the certificate stands
            raw = self.vault.read(f"dispositions/{rid}")
        for name in last:
            self.vault.delete(name)
        self.index.delete(rid)
        return {"record_id": rid, "action": "deleted", "certificate": f"dispositions/{rid}",
                "certificate_sha256": hashlib.sha256(raw).hexdigest(), "objects": len(names)}

    def certificate(self, rid: str) -> dict:
        return self._get(f"dispositions/{rid}")


def _essential(decision: dict) -> tuple:
    return (decision["retain_until"], tuple(decision["pending"]), decision["lock_mode"], decision["on_expiry"],
            tuple((p["id"], p["version"]) for p in decision["policies"]), tuple(decision.get("events", [])))


def _iso(text: str, field_name: str) -> str:
    try:
        return parse_datetime(text).isoformat()
    except ValueError as e:
        raise InvalidMetadata(field_name, str(e)) from None


def check_case(case: str) -> str:
    if not isinstance(case, str) or not CASE_ID.fullmatch(case):
        raise InvalidMetadata("case", f"{case!r} is not a case id (letters, digits, . _ -; at most 64)")
    return case

