"""The archive's one error tree.

Every error the library raises on purpose is an :class:`ArchiveError` with a stable ``code`` (for
logs, API bodies and scripts), an exit status for the CLI and an HTTP status for the API. Errors are
grouped by concern so callers can catch a family (``StorageError``) or one case (``ObjectLocked``).
Only errors marked ``transient`` are worth retrying; everything else is permanent.

Vendor errors (botocore, KMS, SQLite …) are translated at the backend edge with ``raise … from e``,
keeping the vendor's request id in ``details`` where there is one.
"""

from __future__ import annotations

from typing import Any


class ArchiveError(Exception):
    """Raised when the archive cannot do what it was asked; the root of every error here."""

    code = "archive_error"
    exit_status = 1
    http_status = 500
    transient = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The error as a JSON-able body: code, message and details (never secrets)."""
        return {"code": self.code, "message": self.message, **({"details": self.details} if self.details else {})}


# --- configuration -------------------------------------------------------------------------------


class ConfigError(ArchiveError):
    """Raised when a setting is missing or invalid; the message names the variable."""

    code = "config_invalid"
    exit_status = 78  # EX_CONFIG


class NotInitialized(ConfigError):
    """Raised when the archive home has not been created with ``archive init``."""

    code = "not_initialized"


# --- storage ---------------------------------------------------------------------------------------


class StorageError(ArchiveError):
    """Raised when the object store refuses or fails an operation."""

    code = "storage_error"
    exit_status = 3


class InvalidObjectKey(StorageError):
    """Raised when an object key is empty, too long, or could escape its namespace (``..``, ``/`` …)."""

    code = "invalid_object_key"
    exit_status = 2
    http_status = 400


class ObjectNotFound(StorageError):
    """Raised when no object exists under the key."""

    code = "object_not_found"
    http_status = 404


class ObjectExists(StorageError):
    """Raised when a put would replace an existing object: sealed objects are written once."""

    code = "object_exists"
    http_status = 409


class ObjectLocked(StorageError):
    """Raised when a delete or overwrite is refused because retention or a legal hold protects it."""

    code = "object_locked"
    http_status = 409


class RetentionError(StorageError):
    """Raised when a retention change is refused: shortening, an unknown mode, a date in the past."""

    code = "retention_refused"
    http_status = 409


class StoreMisconfigured(StorageError):
    """Raised when the store cannot give WORM guarantees (e.g. a bucket without Object Lock)."""

    code = "store_misconfigured"
    exit_status = 78


class StoreUnavailable(StorageError):
    """Raised when the store cannot be reached or answered with a server-side error; retry later."""

    code = "store_unavailable"
    http_status = 503
    transient = True


# --- cryptography and keys -------------------------------------------------------------------------


class CryptoError(ArchiveError):
    """Raised when sealing, unsealing or key handling fails."""

    code = "crypto_error"
    exit_status = 4


class IntegrityError(CryptoError):
    """Raised when sealed bytes fail authentication: tampered, truncated, reordered, spliced, or the
    wrong key or binding (record id, part name). Names the object and the segment."""

    code = "integrity_error"
    exit_status = 5
    http_status = 422

    def __init__(self, message: str, *, object_key: str | None = None, segment: int | str | None = None,
                 **details: Any) -> None:
        super().__init__(message, object_key=object_key, segment=segment, **details)
        self.object_key = object_key
        self.segment = segment


class LockStateTampered(IntegrityError):
    """Raised when an object's lock state (retain-until, mode, legal hold) on the filesystem store fails
    its authentication check: it was edited outside the archive. Nothing is deleted or changed then."""

    code = "lock_state_tampered"


class UnsupportedFormat(CryptoError):
    """Raised when bytes are not a sealed object of a format version this code can read."""

    code = "unsupported_format"
    exit_status = 5
    http_status = 422


class KeyringError(CryptoError):
    """Raised when the local keyring is missing, unreadable, or too open (readable by others)."""

    code = "keyring_error"


class KeyUnavailable(CryptoError):
    """Raised when the key-encryption key a wrapped data key needs is unknown, destroyed or denied."""

    code = "key_unavailable"


class KeyInUse(CryptoError):
    """Raised when destroying a key-encryption key that wrapped data keys still need."""

    code = "key_in_use"
    http_status = 409


class KeyServiceUnavailable(CryptoError):
    """Raised when the key service (KMS) cannot be reached or throttles; retry later."""

    code = "key_service_unavailable"
    http_status = 503
    transient = True


# --- input (ingest) --------------------------------------------------------------------------------


class InputError(ArchiveError):
    """Raised when an input cannot be archived as it is; the source is left untouched."""

    code = "input_error"
    exit_status = 2
    http_status = 422


class InvalidMetadata(InputError):
    """Raised when record metadata does not follow the schema; ``field`` names where."""

    code = "invalid_metadata"
    exit_status = 2
    http_status = 400

    def __init__(self, field: str, problem: str, **details: Any) -> None:
        super().__init__(f"{field}: {problem}", field=field, **details)
        self.field = field


class RejectedInput(InputError):
    """Raised when an input cannot be archived as it is: unsupported, too large, hostile name, no metadata."""

    code = "rejected_input"
    exit_status = 2
    http_status = 422

    def __init__(self, code: str, message: str, **details) -> None:
        super().__init__(message, **details)
        self.code = code


class OutputRefused(InputError):
    """Raised when a command would write its output over an existing file without ``--force``, over a
    non-regular file, or over any of the archive's own files (home, store, keyring, identities, tokens)."""

    code = "output_refused"
    exit_status = 73  # EX_CANTCREAT
    http_status = 409


class MediaError(InputError):
    """Raised when a recording cannot be archived as the media it claims to be."""

    code = "media_error"
    exit_status = 2
    http_status = 422


class CorruptMedia(MediaError):
    """Raised when a file is truncated, undecodable, or not the container/codec its extension claims."""

    code = "corrupt_media"


class UnsupportedMedia(MediaError):
    """Raised when a file is real media, but of a container, codec or extension the archive does not take."""

    code = "unsupported_media"
    http_status = 415


class SourceChanged(InputError):
    """Raised when an input file changed while it was being archived (hash before ≠ hash while sealing)."""

    code = "source_changed"
    exit_status = 2
    transient = True


class MediaLibraryMissing(ConfigError):
    """Raised when PyAV (FFmpeg) is not installed, so media cannot be probed."""

    code = "media_library_missing"
    exit_status = 69  # EX_UNAVAILABLE


# --- access and audit ------------------------------------------------------------------------------


class AccessDenied(ArchiveError):
    """Raised when an identity lacks the role for an action, gives no reason for content, or is unknown."""

    code = "access_denied"
    exit_status = 77  # EX_NOPERM
    http_status = 403


class ApprovalError(ArchiveError):
    """Raised when an approval request is unknown, already approved, or approved by its requester."""

    code = "approval_refused"
    exit_status = 77
    http_status = 409


class AuditError(ArchiveError):
    """Raised when the audit log cannot be written or read."""

    code = "audit_error"
