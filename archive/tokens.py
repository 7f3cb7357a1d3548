"""API tokens: each bound to one identity and one of its roles, expiring, stored only as a hash.

A token reads ``arc_<id>_<secret>``: ``id`` names it (in lists, the audit trail, revocation), ``secret``
is 32 random bytes and is shown once, when the token is created. The token file
(``$ARCHIVE_HOME/tokens.json``, mode 0600) keeps the SHA-256 of the secret, the identity, the role, when
it was made and when it expires, and whether it was revoked — never the secret.

A request with a token acts as its identity with only the token's role (and only while the identity
still holds that role), so an integration can get least privilege: an ``ingest`` token for a recorder,
an ``auditor`` token for a review tool. Creating, listing and revoking tokens is an admin action.
Another authentication (OIDC) slots in as another way to produce the same :class:`TokenIdentity`.

The console signs in with a token once and then holds an opaque session id (:class:`ConsoleSessions`),
not the token: the cookie is worthless after sign-out, idle time, or the token's revocation or expiry.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from archive.access import ROLES, Identities, Identity
from archive.dates import parse_datetime, parse_duration
from archive.errors import AccessDenied, ArchiveError, InputError
from archive.jsonfile import JsonFile

PREFIX = "arc_"


class SessionsUnavailable(ArchiveError):
    """Raised when the console's session store cannot be read or written (a damaged or locked file)."""

    code = "sessions_unavailable"
    http_status = 503
    transient = True


class TokenInvalid(AccessDenied):
    """No token, an unknown or malformed one, a revoked or an expired one: 401."""

    code = "token_invalid"
    http_status = 401


@dataclass(frozen=True)
class TokenIdentity:
    """Identities as seen through one token: the token's identity, with only the token's role."""

    identities: Identities
    actor: str
    role: str
    token_id: str
    expires_at: str = ""

    def get(self, actor: str | None) -> Identity:
        identity = self.identities.get(actor)
        if actor != self.actor:
            raise AccessDenied("a token acts only as its own identity", actor=actor)
        return Identity(identity.actor, identity.roles & {self.role})


class Tokens:
    def __init__(self, path: Path, identities: Identities) -> None:
        self.path = Path(path)
        self.identities = identities
        self._file = JsonFile(self.path)

    def _load(self) -> dict:
        """The tokens (a copy: callers may change it)."""
        return copy.deepcopy(self._read())

    def _read(self) -> dict:
        """The tokens as read (shared, read-only): authentication reads them on every request."""
        try:
            return (self._file.read() or {}).get("tokens", {})
        except ValueError as e:
            raise ArchiveError(f"{self.path} is not valid JSON: {e}") from e

    def _save(self, tokens: dict) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"format": "archive-tokens/1", "tokens": tokens}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def create(self, actor: str, role: str, *, expires: str = "P30D", note: str | None = None,
               now: datetime | None = None) -> tuple[str, dict]:
        """A new token for ``actor`` with ``role`` (which the identity must hold). Returns (token, entry);
        the token is not stored and cannot be shown again."""
        if role not in ROLES:
            raise InputError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        identity = self.identities.get(actor)
        if role not in identity.roles:
            raise InputError(f"{actor} does not hold the role {role!r} (holds {', '.join(sorted(identity.roles))})")
        try:
            period = parse_duration(expires)
        except ValueError as e:
            raise InputError(f"--expires: {e}") from None
        now = now or datetime.now(UTC)
        until = period.after(now)
        if until <= now or (until - now).days > 366:
            raise InputError("a token expires after a positive period of at most a year (e.g. P30D, PT8H)")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        entry = {"id": token_id, "actor": actor, "role": role, "created_at": now.isoformat(timespec="seconds"),
                 "expires_at": until.isoformat(timespec="seconds"), "revoked_at": None,
                 "sha256": hashlib.sha256(secret.encode()).hexdigest(), **({"note": note} if note else {})}
        tokens = self._load()
        tokens[token_id] = entry
        self._save(tokens)
        return f"{PREFIX}{token_id}_{secret}", {k: v for k, v in entry.items() if k != "sha256"}

    def revoke(self, token_id: str, now: datetime | None = None) -> dict:
        tokens = self._load()
        if token_id not in tokens:
            raise InputError(f"no token {token_id!r}")
        tokens[token_id]["revoked_at"] = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        self._save(tokens)
        return {k: v for k, v in tokens[token_id].items() if k != "sha256"}

    def list(self) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "sha256"} for _, e in sorted(self._load().items())]

    def authenticate(self, presented: str | None, now: datetime | None = None) -> TokenIdentity:
        """The identity a presented token acts as. Raises TokenInvalid saying why (never which part of a
        secret was wrong)."""
        if not presented:
            raise TokenInvalid("authentication required: send 'Authorization: Bearer arc_…' "
                               "(tokens come from 'archive token create')")
        if not presented.startswith(PREFIX) or presented.count("_") < 2:
            raise TokenInvalid("not an archive token")
        token_id, secret = presented[len(PREFIX):].split("_", 1)
        entry = self._read().get(token_id)
        if entry is None or not hmac.compare_digest(entry["sha256"], hashlib.sha256(secret.encode()).hexdigest()):
            raise TokenInvalid("unknown token")
        return self._identity(token_id, entry, now)

    def by_id(self, token_id: str, now: datetime | None = None) -> TokenIdentity:
        """The identity token ``token_id`` acts as while it is valid (a console session is bound to it).
        Raises TokenInvalid when it is unknown, revoked or expired."""
        entry = self._read().get(token_id)
        if entry is None:
            raise TokenInvalid(f"token {token_id} no longer exists")
        return self._identity(token_id, entry, now)

    def _identity(self, token_id: str, entry: dict, now: datetime | None) -> TokenIdentity:
        if entry.get("revoked_at"):
            raise TokenInvalid(f"token {token_id} was revoked at {entry['revoked_at']}")
        if parse_datetime(entry["expires_at"]) <= (now or datetime.now(UTC)):
            raise TokenInvalid(f"token {token_id} expired at {entry['expires_at']}")
        return TokenIdentity(self.identities, entry["actor"], entry["role"], token_id, entry["expires_at"])


class ConsoleSessions:
    """The console's sign-in sessions: an opaque, random session id in the cookie — never the token —
    stored only as its SHA-256 in ``$ARCHIVE_HOME/sessions.sqlite`` (mode 0600; SQLite in WAL mode, so
    every process of ``archive serve --workers N`` shares it).

    A session is bound to the token it was started with: each request checks the token again, so revoking
    or expiring the token, or taking its role from the identity, ends the session at once. A session also
    ends when it is signed out (deleted here, so a copied cookie is worthless), after :data:`IDLE` without
    a request, and at most :data:`MAX_AGE` after it started.
    """

    IDLE = 30 * 60
    MAX_AGE = 12 * 3600
    _TOUCH = 60  # last-seen is written at most once a minute per session (a write per request would be waste)

    def __init__(self, path: Path, tokens: Tokens) -> None:
        self.path = Path(path)
        self.tokens = tokens
        self._local = threading.local()

    @contextmanager
    def _db(self):
        """This thread's connection (made on first use, again after a fork); SQLite's errors are raised
        as SessionsUnavailable."""
        try:
            yield self._connection()
        except (sqlite3.Error, OSError) as e:
            raise SessionsUnavailable(f"the console's session store {self.path} failed: {e}") from e

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS sessions (id_sha256 TEXT PRIMARY KEY, token_id TEXT NOT NULL, "
                       "started REAL NOT NULL, last_seen REAL NOT NULL, ends REAL NOT NULL)")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @staticmethod
    def _hash(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def reference(self, session_id: str) -> str:
        """How the audit trail names a session: a prefix of its stored hash (never the id itself)."""
        return self._hash(session_id)[:16]

    def start(self, token: TokenIdentity, now: float | None = None) -> tuple[str, dict]:
        """A new session for an authenticated token. Returns (session id, what may be shown of it: a
        reference for the audit trail, when it ends at the latest, the idle timeout in seconds)."""
        now = time.time() if now is None else now
        ends = min(now + self.MAX_AGE, parse_datetime(token.expires_at).timestamp())
        session_id = "ses_" + secrets.token_urlsafe(32)
        digest = self._hash(session_id)
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE ends <= ? OR last_seen <= ?", (now, now - self.IDLE))
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (digest, token.token_id, now, now, ends))
        return session_id, {"ref": self.reference(session_id),
                            "ends_at": datetime.fromtimestamp(ends, UTC).isoformat(timespec="seconds"),
                            "idle_timeout_s": self.IDLE, "max_age_s": max(1, int(ends - now))}

    def authenticate(self, session_id: str | None, now: float | None = None) -> TokenIdentity:
        """The token identity a live session acts as. Raises TokenInvalid for an unknown, signed-out,
        idle or expired session, or one whose token was revoked or expired."""
        if not session_id or not session_id.startswith("ses_") or len(session_id) > 100:
            raise TokenInvalid("no console session: sign in again")
        now = time.time() if now is None else now
        digest = self._hash(session_id)
        with self._db() as db:
            row = db.execute("SELECT token_id, last_seen, ends FROM sessions WHERE id_sha256 = ?", (digest,)).fetchone()
            if row is not None and (now >= row[2] or now - row[1] >= self.IDLE):
                db.execute("DELETE FROM sessions WHERE id_sha256 = ?", (digest,))
        if row is None:
            raise TokenInvalid("the console session is unknown or was signed out: sign in again")
        token_id, last_seen, ends = row
        if now >= ends or now - last_seen >= self.IDLE:
            raise TokenInvalid("the console session " + ("expired" if now >= ends else
                               f"ended after {self.IDLE // 60} minutes without use") + ": sign in again")
        identity = self.tokens.by_id(token_id)
        try:
            holds_role = identity.role in self.tokens.identities.get(identity.actor).roles
        except AccessDenied:  # the identity was removed
            holds_role = False
        if not holds_role:
            raise TokenInvalid(f"{identity.actor} no longer holds the role {identity.role!r}: sign in again")
        if now - last_seen >= self._TOUCH:
            with self._db() as db:
                db.execute("UPDATE sessions SET last_seen = ? WHERE id_sha256 = ?", (now, digest))
        return identity

    def end(self, session_id: str | None) -> bool:
        """Sign out: forget the session (True when there was one)."""
        if not session_id:
            return False
        with self._db() as db:
            return db.execute("DELETE FROM sessions WHERE id_sha256 = ?", (self._hash(session_id),)).rowcount > 0
