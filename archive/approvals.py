"""Four-eyes approvals: an action one person requests and a second, different person approves.

Releasing a legal hold (and, with the retention issue, approving a disposition run) must never rest on one
person. The request and the approval are write-once objects in the store::

    approvals/<id>/request.json    what is asked (action, target), by whom, why, when
    approvals/<id>/approval.json   who approved, why, when — written once, so a request is approved once

The approver must be a different identity from the requester; :class:`archive.access.Session` checks that
they hold the permission the action needs, and both steps are audit events. What an approved request
does is carried out by :meth:`archive.retention.service.Retention.approve`, so the CLI, the workers and
the API share one implementation.
"""

from __future__ import annotations

import io
import json
import secrets
from datetime import UTC, datetime

from archive.access import AccessDenied
from archive.errors import ApprovalError, ObjectExists, ObjectNotFound
from archive.store.base import ObjectStore

# What each four-eyes action needs of its approver (a permission in archive.access.PERMISSIONS).
FOUR_EYES = {"hold-release": "hold"}


class Approvals:
    """Requests and approvals in the store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def request(self, action: str, target: dict, *, requested_by: str, reason: str | None) -> str:
        """Record a request for ``action`` on ``target``; returns its id."""
        if action not in FOUR_EYES:
            raise ApprovalError(f"{action!r} does not go through four-eyes approval")
        request_id = f"ap-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"
        doc = {"id": request_id, "action": action, "target": target, "requested_by": requested_by,
               "reason": reason, "requested_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.store.put(f"approvals/{request_id}/request.json", io.BytesIO(json.dumps(doc).encode()))
        return request_id

    def get(self, request_id: str) -> dict:
        try:
            with self.store.open(f"approvals/{request_id}/request.json") as f:
                return json.loads(f.read())
        except ObjectNotFound:
            raise ApprovalError(f"no approval request {request_id!r}", request_id=request_id) from None

    def approve(self, request_id: str, *, approved_by: str, reason: str | None) -> dict:
        """Mark ``request_id`` approved by a second person; returns the request to carry out. Raises
        AccessDenied when the approver is the requester, ApprovalError when it was approved already."""
        request = self.get(request_id)
        if request["requested_by"] == approved_by:
            raise AccessDenied(f"{approved_by} requested {request_id}; a second, different person must approve it",
                               request_id=request_id)
        doc = {"id": request_id, "approved_by": approved_by, "reason": reason,
               "approved_at": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            self.store.put(f"approvals/{request_id}/approval.json", io.BytesIO(json.dumps(doc).encode()))
        except ObjectExists:
            raise ApprovalError(f"{request_id} was approved already", request_id=request_id) from None
        return request

    def pending(self) -> list[dict]:
        """Requests no one has approved yet, oldest first."""
        keys = set(self.store.list("approvals/"))
        out = []
        for key in sorted(keys):
            if key.endswith("/request.json") and key[: -len("request.json")] + "approval.json" not in keys:
                with self.store.open(key) as f:
                    out.append(json.loads(f.read()))
        return sorted(out, key=lambda r: (r["requested_at"], r["id"]))
