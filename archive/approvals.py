"""Four-eyes approvals: an action one person requests and a second, different person approves.

Releasing a legal hold (and, with the retention issue, approving a disposition run) must never rest on one
person. The request and the approval are write-once objects sealed through the vault like records
(encrypted and authenticated, bound to the request id), each signed with the archive's signing key, and
locked for as long as the audit trail::

    approvals/<id>/request     what is asked (action, target), by whom, why, when — signed
    approvals/<id>/approval    who approved, why, when — written once, so a request is approved once

Approving reads the request back and refuses it (IntegrityError, naming the request) unless its seal
opens, its signature verifies against the archive's public keys, and the audit event that recorded the
request names the same requester: ``requested_by`` is checked against the authenticated actor of the
``hold-release-request`` event, not taken on the request's word. So a request edited, replaced, resealed
or planted in the store is never carried out, and no one approves their own request by rewriting its
requester. The approver must be a different identity; :class:`archive.access.Session` checks that they
hold the permission the action needs, and both steps are audit events with a reason (required here too).
What an approved request does is carried out by :meth:`archive.retention.service.Retention.approve`, so
the CLI, the workers and the API share one implementation.
"""

from __future__ import annotations

import base64
import io
import json
import re
import secrets
from datetime import UTC, datetime, timedelta

from archive.access import AccessDenied, require_reason
from archive.crypto.stream import Binding
from archive.dates import parse_datetime, parse_duration
from archive.errors import ApprovalError, IntegrityError, ObjectExists, ObjectNotFound

# What each four-eyes action needs of its approver (a permission in archive.access.PERMISSIONS), and the
# operation whose audit event records a request for it.
FOUR_EYES = {"hold-release": "hold"}
REQUEST_OPERATION = {"hold-release": "hold-release-request"}
REQUEST_FORMAT = "archive-approval-request/1"
APPROVAL_FORMAT = "archive-approval/1"
_ID = re.compile(r"ap-\d{8}-[0-9a-f]{8}")
_SKEW = timedelta(minutes=5)  # the request's time and its event's are read from the same clock; a margin


def _canonical(doc: dict) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "signature"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


class Approvals:
    """Requests and approvals of one archive (:class:`archive.services.Archive`: its vault seals them,
    its signing key signs them, its audit log confirms who asked)."""

    def __init__(self, archive) -> None:
        self.archive = archive
        self.vault = archive.vault
        self.audit = archive.audit

    # --- writing ---------------------------------------------------------------------------------------

    def _lock(self) -> dict:
        keep = parse_duration(self.archive.settings.audit_retention).after(datetime.now(UTC))
        return {"retain_until": keep}

    def _seal(self, name: str, request_id: str, doc: dict) -> None:
        signer = self.audit.signer
        if signer is not None:
            doc["signature"] = {"key_id": signer.key_id, "algorithm": "Ed25519",
                                "value": base64.b64encode(signer.sign(_canonical(doc))).decode()}
        raw = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()
        self.vault.seal(name, io.BytesIO(raw), Binding(request_id, name.rsplit("/", 1)[1]), **self._lock())

    def request(self, action: str, target: dict, *, requested_by: str, reason: str | None) -> str:
        """Record a request for ``action`` on ``target``; returns its id. Raises ApprovalError for an
        action that takes no approval, AccessDenied without a reason."""
        if action not in FOUR_EYES:
            raise ApprovalError(f"{action!r} does not go through four-eyes approval")
        require_reason(reason, "a four-eyes request")
        request_id = f"ap-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"
        self._seal(f"approvals/{request_id}/request", request_id, {
            "format": REQUEST_FORMAT, "id": request_id, "action": action, "target": target,
            "requested_by": requested_by, "reason": reason,
            "requested_at": datetime.now(UTC).isoformat(timespec="seconds")})
        return request_id

    # --- reading and checking --------------------------------------------------------------------------

    def _refused(self, request_id: str, why: str) -> IntegrityError:
        return IntegrityError(f"approval request {request_id} cannot be trusted: {why}; it is not carried out "
                              "(make a new request)", object_key=f"approvals/{request_id}/request",
                              request_id=request_id)

    def _open(self, name: str, request_id: str, kind: str) -> dict:
        """A sealed document, its seal and signature checked. Raises ObjectNotFound, IntegrityError."""
        try:
            doc = json.loads(self.vault.read(name, Binding(request_id, name.rsplit("/", 1)[1])))
        except IntegrityError as e:
            raise self._refused(request_id, f"its {kind} fails authentication ({e})") from e
        except ValueError as e:
            raise self._refused(request_id, f"its {kind} is not JSON") from e
        if not isinstance(doc, dict) or doc.get("id") != request_id:
            raise self._refused(request_id, f"its {kind} names another request")
        self._check_signature(request_id, doc, kind)
        return doc

    def _check_signature(self, request_id: str, doc: dict, kind: str) -> None:
        keys = self.archive.keys
        trusted = keys.signing_public_keys() if hasattr(keys, "signing_public_keys") else {}
        signature = doc.get("signature")
        if signature is None:
            if self.audit.signer is not None:
                raise self._refused(request_id, f"its {kind} is not signed")
            return
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        public = trusted.get(signature.get("key_id")) if isinstance(signature, dict) else None
        if public is None:
            raise self._refused(request_id, f"its {kind} is signed with a key that is not the archive's")
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(signature["value"]), _canonical(doc))
        except (InvalidSignature, ValueError, KeyError, TypeError) as e:
            raise self._refused(request_id, f"the signature of its {kind} does not verify") from e

    def get(self, request_id: str) -> dict:
        """The request, read back and checked: sealed, signed. Raises ApprovalError when there is none,
        IntegrityError when it cannot be trusted."""
        if not _ID.fullmatch(request_id or ""):
            raise ApprovalError(f"no approval request {request_id!r}", request_id=request_id)
        try:
            doc = self._open(f"approvals/{request_id}/request", request_id, "request")
        except ObjectNotFound:
            if self._legacy(request_id):
                raise self._refused(request_id, "it is an unsealed request of an earlier version, which anyone "
                                                "with access to the store could have edited") from None
            raise ApprovalError(f"no approval request {request_id!r}", request_id=request_id) from None
        if doc.get("format") != REQUEST_FORMAT or doc.get("action") not in FOUR_EYES:
            raise self._refused(request_id, "it is not a four-eyes request")
        return doc

    def _legacy(self, request_id: str) -> bool:
        try:
            self.archive.store.head(f"approvals/{request_id}/request.json")
            return True
        except ObjectNotFound:
            return False

    def _requester(self, request: dict) -> str:
        """The authenticated actor of the audit event that recorded ``request``. Raises IntegrityError
        when no successful request event names it."""
        request_id = request["id"]
        operation = REQUEST_OPERATION[request["action"]]
        since = parse_datetime(request["requested_at"]) - _SKEW
        for event in _newest_first(self.audit, since):
            target = event.get("target") or {}
            if (event.get("action") == operation and event.get("outcome") == "ok"
                    and target.get("request") == request_id):
                return event.get("actor")
        raise self._refused(request_id, "no audit event records who made it")

    def approve(self, request_id: str, *, approved_by: str, reason: str | None) -> dict:
        """Mark ``request_id`` approved by a second person; returns the request to carry out. Raises
        AccessDenied when the approver is the requester or gives no reason, IntegrityError when the
        request cannot be trusted, ApprovalError when it was approved already."""
        require_reason(reason, "approving")
        request = self.get(request_id)
        requester = self._requester(request)
        if requester != request["requested_by"]:
            raise self._refused(request_id, f"it names {request['requested_by']!r} as its requester, but the audit "
                                            f"trail records the request by {requester!r}")
        if approved_by in (requester, request["requested_by"]):
            raise AccessDenied(f"{approved_by} requested {request_id}; a second, different person must approve it",
                               request_id=request_id)
        try:
            self._seal(f"approvals/{request_id}/approval", request_id, {
                "format": APPROVAL_FORMAT, "id": request_id, "approved_by": approved_by, "reason": reason,
                "approved_at": datetime.now(UTC).isoformat(timespec="seconds")})
        except ObjectExists:
            raise ApprovalError(f"{request_id} was approved already", request_id=request_id) from None
        return request

    def pending(self) -> list[dict]:
        """Requests no one has approved yet, oldest first, each read back and checked; one that cannot be
        trusted is listed with its ``problem`` (and can never be approved)."""
        names = set(self.vault.names("approvals/"))
        out = []
        for name in sorted(names):
            if not name.endswith("/request") or name[: -len("request")] + "approval" in names:
                continue
            request_id = name.split("/")[1]
            try:
                out.append(self.get(request_id))
            except (IntegrityError, ApprovalError) as e:
                out.append(_problem(request_id, str(e)))
        approved = {k.split("/")[1] for k in self.archive.store.list("approvals/") if k.endswith("/approval.json")}
        for key in self.archive.store.list("approvals/"):
            request_id = key.split("/")[1]
            if key.endswith("/request.json") and request_id not in approved:
                out.append(_problem(request_id, str(self._refused(request_id, "it is an unsealed request of an "
                                                                              "earlier version"))))
        return sorted(out, key=lambda r: (r["requested_at"], r["id"]))


def _problem(request_id: str, problem: str) -> dict:
    return {"id": request_id, "action": "unverifiable", "target": {}, "requested_by": "", "requested_at": "",
            "reason": "", "problem": problem}


def _newest_first(audit, since: datetime):
    """Audit events from the newest batch back to the first batch holding an event older than ``since``
    (a request is approved days after it was made, not years: this reads a few batches, not the log)."""
    keys = sorted(audit.store.list("audit/log/"), reverse=True)
    for key in keys:
        with audit.store.open(key) as f:
            events = json.loads(f.read()).get("events", [])
        yield from reversed(events)
        if events and parse_datetime(events[0]["time"]) < since:
            return
