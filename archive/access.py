"""Access control: identities with roles, stated reasons, and an audit event for every attempt.

Roles (least privilege; an identity may hold several):

| role    | may                                                                        |
|---------|----------------------------------------------------------------------------|
| ingest  | ingest (write only: nothing it archives can be read back through this role) |
| auditor | search, view, retrieve (play back), read the quarantine and the audit trail |
| legal   | what an auditor may, plus holds, exports and retention trigger events      |
| admin   | keys, identities, checkpoints, object administration, trigger events, disposition |

Viewing, retrieving or exporting content, every legal-hold action (placing a hold, asking for its
release) and every four-eyes approval need a stated reason (``--reason``), recorded with the action. A
reason must say something (:func:`archive.text.meaningful`): blank text, spaces or invisible characters
alone are refused, for the CLI and the API alike. Every attempt — allowed, denied or failed, whatever
the failure — is an audit event with its true outcome; a denied one is recorded *before* the error is
raised, so the trail shows who tried, and why they said they did. An operation on a record's object
(``records/<id>/…``) names the record and the part, so the record's own history lists it. Identities
are kept in ``$ARCHIVE_HOME/identities.json`` (changed under a lock, written atomically); the CLI acts as
``--actor`` or ``ARCHIVE_ACTOR``, never silently as the OS user. The HTTP API binds tokens to identities
the same way; OIDC can slot in as another source of :class:`Identity`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from archive.audit.log import AuditLog, Event
from archive.errors import AccessDenied, ArchiveError
from archive.jsonfile import JsonFile
from archive.text import meaningful

ROLES = ("ingest", "auditor", "legal", "admin")
PERMISSIONS: dict[str, frozenset[str]] = {
    # ingest is also the workers' role: fixity checks read sealed objects back without releasing content
    "ingest": frozenset({"ingest", "fixity", "status"}),
    "auditor": frozenset({"search", "view", "retrieve", "quarantine-read", "audit-read", "policy-read", "status"}),
    "legal": frozenset({"search", "view", "retrieve", "quarantine-read", "audit-read", "policy-read", "hold",
                        "export", "export-read", "retention-event", "status"}),
    "admin": frozenset({"keys", "identity", "audit-checkpoint", "audit-read", "object-admin", "disposition",
                        "quarantine-read", "policy-read", "retention-event", "reindex", "fixity", "status"}),
}
NEEDS_REASON = frozenset({"view", "retrieve", "export"})  # permissions whose every use shows content
# operations that need a reason whatever permission they take: legal holds and four-eyes approvals
REASONED_OPERATIONS = frozenset({"hold", "hold-release-request", "approve"})
NEEDS_CASE = frozenset({"export"})  # evidence leaves the archive only for a named case or matter


def require_reason(reason: str | None, what: str) -> str:
    """``reason`` when it says something (see :func:`archive.text.meaningful`); else AccessDenied."""
    if not meaningful(reason):
        raise AccessDenied(f"{what}: state a reason with --reason (blank text, spaces or invisible characters "
                           "alone are not a reason)", action=what)
    return reason


@dataclass(frozen=True)
class Identity:
    """Someone acting on the archive, and the roles they hold."""

    actor: str
    roles: frozenset[str]

    def role_for(self, action: str) -> str | None:
        """The first of this identity's roles that permits ``action``."""
        return next((r for r in ROLES if r in self.roles and action in PERMISSIONS[r]), None)


class Identities:
    """The identity file: actor → roles. Changing it is an admin action, recorded like any other."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = JsonFile(self.path)

    def _load(self) -> dict[str, list[str]]:
        """Actor → roles (shared and read-only; read again when the file changes)."""
        try:
            doc = self._file.read() or {}
        except ValueError as e:
            raise ArchiveError(f"{self.path} is not valid JSON: {e}") from e
        return doc.get("identities", {})

    def get(self, actor: str | None) -> Identity:
        """The identity of ``actor``. Raises AccessDenied when none is given or it is unknown."""
        if not actor:
            raise AccessDenied("no identity: pass --actor NAME or set ARCHIVE_ACTOR")
        roles = self._load().get(actor)
        if roles is None:
            raise AccessDenied(f"unknown identity {actor!r}; an admin adds it with "
                               f"'archive identity add {actor} --role ROLE'", actor=actor)
        return Identity(actor, frozenset(roles))

    def all(self) -> dict[str, list[str]]:
        return dict(sorted(self._load().items()))

    def set(self, actor: str, roles: list[str]) -> None:
        """Give ``actor`` exactly ``roles`` (an empty list removes the identity)."""
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ArchiveError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")

        def change(current: dict | None) -> dict:
            identities = dict((current or {}).get("identities", {}))
            if roles:
                identities[actor] = sorted(set(roles))
            else:
                identities.pop(actor, None)
            return {"format": "archive-identities/1", "identities": identities}

        try:  # under the file's lock, from the file as it is now: two admins never undo each other's change
            self._file.update(change)
        except ValueError as e:
            raise ArchiveError(f"{self.path} is not valid JSON: {e}") from e


class Access:
    """Authorises one identity's actions and records each of them in the audit log."""

    def __init__(self, audit: AuditLog, identity: Identity) -> None:
        self.audit = audit
        self.identity = identity

    def authorize(self, action: str, *, target: dict, reason: str | None = None, case: str | None = None,
                  permission: str | None = None) -> str:
        """Return the role that allows ``action``; else record a denied event and raise AccessDenied."""
        needed = permission or action
        role = self.identity.role_for(needed)
        why = None
        if role is None:
            why = (f"{self.identity.actor} (roles: {', '.join(sorted(self.identity.roles)) or 'none'}) may not "
                   f"{action}")
        elif needed in NEEDS_REASON and not meaningful(reason):
            why = f"{action} shows content: state a reason with --reason"
        elif action in REASONED_OPERATIONS and not meaningful(reason):
            why = (f"{action} is a legal-hold action: state a reason with --reason (blank text, spaces or "
                   "invisible characters alone are not a reason)")
        elif needed in NEEDS_CASE and not meaningful(case):
            why = f"{action} is for a case: name it with --case CASE"
        if why is not None:
            self.record(action, target=target, outcome="denied", reason=reason, case=case,
                        role=role or "none", details={"denied": why})
            raise AccessDenied(why, actor=self.identity.actor, action=action)
        return role

    def record(self, action: str, *, target: dict, outcome: str = "ok", reason: str | None = None,
               case: str | None = None, role: str | None = None, details: dict | None = None) -> int:
        """Append the audit event of one action by this identity."""
        return self.audit.append(Event(actor=self.identity.actor,
                                       role=role or self.identity.role_for(action) or "none", action=action,
                                       outcome=outcome, target=target, reason=reason, case=case,
                                       details=details or {}))


def denied_without_identity(audit: AuditLog, actor: str | None, action: str, target: dict,
                            error: AccessDenied, *, reason: str | None = None, case: str | None = None) -> None:
    """Record an attempt by no one, or by someone unknown, with the reason and case it gave: the trail
    must show it too (they are what an investigator reads first)."""
    audit.append(Event(actor=actor or "(none)", role="none", action=action, outcome="denied", target=target,
                       reason=reason, case=case, details={"denied": str(error)}))


def failure_details(error: BaseException) -> dict:
    """What the trail keeps of a failure: the stable code (and, for an unexpected error, its type) —
    never its message, which may quote content or a secret."""
    if isinstance(error, ArchiveError):
        return {"error": error.code}
    code = "interrupted" if isinstance(error, KeyboardInterrupt) else "internal_error"
    return {"error": code, "type": type(error).__name__}


_RECORD_OBJECT = re.compile(r"records/(r[a-z2-7]{32})/([^/]+)")


def name_records(target: dict) -> dict:
    """``target`` (changed in place) naming the record and the part when its ``object`` is one of a
    record's objects (``records/<id>/part.<name>``, ``…/manifest``, ``…/retention-NNNNNN``), so that
    the record's access history lists every operation on its objects."""
    m = _RECORD_OBJECT.fullmatch(str(target.get("object", "")))
    if m:
        rid, leaf = m.groups()
        records = target.setdefault("records", [])
        if rid not in records:
            records.append(rid)
        part = re.sub(r"\.retry-\d+$", "", leaf)
        target.setdefault("part", part[len("part."):] if part.startswith("part.") else part)
    return target


# Every operation on the archive, in the audit trail's words, and the permission it needs. The CLI, the
# workers and the API name operations from this table; nothing reaches records except through Session.run.
OPERATIONS: dict[str, str] = {
    "ingest": "ingest", "view": "view", "retrieve": "retrieve", "search": "search",
    "quarantine-list": "quarantine-read", "hold": "hold", "hold-list": "policy-read", "export": "export",
    "policy-list": "policy-read", "policy-check": "policy-read", "policy-explain": "policy-read",
    "retention-event": "retention-event", "disposition-plan": "disposition", "disposition": "disposition",
    "reindex": "reindex", "fixity": "fixity", "status": "status",
    # four-eyes (archive/approvals.py): releasing a hold is requested by one legal identity and approved
    # by another; approving needs the permission of the action approved — "hold" for the only one so far
    "hold-release-request": "hold", "approve": "hold", "approval-list": "hold",
    # the API: signing in to the console; export jobs (listing them shows no content; a download is an export)
    "session-start": "status", "export-list": "export-read", "export-download": "export",
    "object-put": "object-admin", "object-retrieve": "retrieve", "object-head": "object-admin",
    "object-list": "object-admin", "retention-extend": "object-admin", "object-delete": "disposition",
    "key-status": "keys", "key-rotation": "keys", "key-destroy": "keys",
    "audit-checkpoint": "audit-checkpoint", "audit-verify": "audit-read", "audit-show": "audit-read",
    "identity-list": "identity", "identity-change": "identity",
}


class Session:
    """One identity's way into the archive: every operation is authorised, performed and recorded.

    ``run(operation, do, target=…)`` refuses (recording the refusal, with the reason and case given)
    unless the identity may perform the operation with the reason given; then calls ``do()``; then
    records the outcome — ``ok``; ``denied`` when ``do`` refuses; ``error`` with the error's code when
    ``do`` raises anything else, an unexpected exception (an OSError, a bug) included, as
    ``internal_error`` with its type — and re-raises. ``target`` may be extended by ``do`` (e.g. with the
    record ids an ingest produced) before it is recorded; a record's object in it names the record.
    """

    def __init__(self, audit: AuditLog, identities: Identities, actor: str | None, *, stage: bool = False) -> None:
        self.audit = audit
        self.actor = actor
        self._identities = identities
        self.stage = stage  # run_each stages its events (AuditLog.stage_many) instead of appending them

    def run(self, operation: str, do, *, target: dict, reason: str | None = None, case: str | None = None):
        attempt = Attempt(self, operation, target=target, reason=reason, case=case)
        try:
            result = do()
        except BaseException as e:  # any failure, expected or not: the trail says it was not "ok"
            attempt.failed(e)
            raise
        attempt.succeeded()
        return result

    def run_each(self, operation: str, do, *, targets: list[dict], reason: str | None = None):
        """One operation over many inputs (a worker's batch): each target authorised as by :meth:`run`,
        ``do()`` called once, then one event per target — ``ok``, or the failure of ``do`` for all — every
        one of them appended in one batch of the log (staged, with ``stage``: a worker does not wait on
        the log's head). ``do`` may extend the targets before they are recorded."""
        attempts = [Attempt(self, operation, target=t, reason=reason) for t in targets]
        record = self.audit.stage_many if self.stage else self.audit.append_many
        try:
            result = do()
        except BaseException as e:
            record([a.event("denied" if isinstance(e, AccessDenied) else "error",
                                            {"denied": str(e)} if isinstance(e, AccessDenied)
                                            else failure_details(e)) for a in attempts])
            raise
        record([a.event("ok", {}) for a in attempts])
        return result


class Attempt:
    """One operation of a session: authorised when made (a refusal is recorded, with the reason and case
    given, and raised), then recorded exactly once when it ends, by :meth:`succeeded` or :meth:`failed`.
    :meth:`Session.run` is an attempt that ends when ``do()`` returns; a response streamed after its
    status was sent ends after its last byte, so it is never ``ok`` before that."""

    def __init__(self, session: Session, operation: str, *, target: dict, reason: str | None = None,
                 case: str | None = None) -> None:
        self.operation, self.target, self.reason, self.case = operation, name_records(target), reason, case
        self.recorded = False
        audit, actor = session.audit, session.actor
        try:
            self._access = Access(audit, session._identities.get(actor))
        except AccessDenied as e:
            denied_without_identity(audit, actor, operation, target, e, reason=reason, case=case)
            raise
        except BaseException as e:  # the identity file could not be read: the attempt is still recorded
            audit.append(Event(actor=actor or "(none)", role="none", action=operation, outcome="error",
                               target=target, reason=reason, case=case, details=failure_details(e)))
            raise
        self.role = self._access.authorize(operation, target=target, reason=reason, case=case,
                                           permission=OPERATIONS[operation])

    def succeeded(self, **details) -> None:
        """Record the operation as done (``ok``)."""
        self._record("ok", details)

    def failed(self, error: BaseException, **details) -> None:
        """Record the operation as refused (``denied``, for AccessDenied: e.g. approving one's own request)
        or failed (``error``: :func:`failure_details`)."""
        if isinstance(error, AccessDenied):
            self._record("denied", {"denied": str(error), **details})
        else:
            self._record("error", {**failure_details(error), **details})

    def _record(self, outcome: str, details: dict) -> None:
        if self.recorded:
            return
        self.recorded = True
        self._access.record(self.operation, target=self.target, outcome=outcome, reason=self.reason,
                            case=self.case, role=self.role, details=details)

    def event(self, outcome: str, details: dict) -> Event:
        """The attempt's event, for the caller to append (with others: :meth:`Session.run_each`)."""
        self.recorded = True
        return Event(actor=self._access.identity.actor, role=self.role, action=self.operation, outcome=outcome,
                     target=name_records(self.target), reason=self.reason, case=self.case, details=details)
