"""API tokens: each bound to one identity and one of its roles, expiring, stored only as a hash.

A token reads ``arc_<id>_<secret>``: ``id`` names it (in lists, the audit trail, revocation), ``secret``
is 32 random bytes and is shown once, when the token is created. The token file
(``$ARCHIVE_HOME/tokens.json``, mode 0600) keeps the SHA-256 of the secret, the identity, the role, when
it was made and when it expires, and whether it was revoked — never the secret.

A request with a token acts as its identity with only the token's role (and only while the identity
still holds that role), so an integration can get least privilege: an ``ingest`` token for a recorder,
an ``auditor`` token for a review tool. Creating, listing and revoking tokens is an admin action.
Another authentication (OIDC) slots in as another way to produce the same :class:`TokenIdentity`.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from archive.access import ROLES, Identities, Identity
from archive.dates import parse_datetime, parse_duration
from archive.errors import AccessDenied, ArchiveError, InputError
from archive.jsonfile import JsonFile

PREFIX = "arc_"


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
        if entry.get("revoked_at"):
            raise TokenInvalid(f"token {token_id} was revoked at {entry['revoked_at']}")
        if parse_datetime(entry["expires_at"]) <= (now or datetime.now(UTC)):
            raise TokenInvalid(f"token {token_id} expired at {entry['expires_at']}")
        return TokenIdentity(self.identities, entry["actor"], entry["role"], token_id, entry["expires_at"])
