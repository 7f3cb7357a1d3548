"""The key-provider contract: who makes data keys and who wraps them (envelope encryption).

Every sealed object gets a fresh random 32-byte data key. A :class:`KeyProvider` generates it and returns
it twice: in the clear (used once, then dropped) and wrapped under a key-encryption key (KEK) with an
encryption context bound as associated data. The wrapped key is stored beside the sealed object, never
inside it, so rotating or destroying KEKs never rewrites a WORM-locked object.

Backends: ``keyring`` (a local file of versioned KEKs, the embedded default) and ``aws-kms``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from archive.errors import CryptoError

DATA_KEY_SIZE = 32


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under one KEK. ``kek_id`` names that KEK in the provider's terms."""

    provider: str
    kek_id: str
    blob: bytes

    def to_json(self) -> dict[str, str]:
        return {"provider": self.provider, "kek_id": self.kek_id, "blob": base64.b64encode(self.blob).decode()}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> WrappedKey:
        try:
            return cls(str(data["provider"]), str(data["kek_id"]), base64.b64decode(data["blob"], validate=True))
        except (KeyError, TypeError, ValueError) as e:
            raise CryptoError(f"malformed wrapped key: {e}") from e


@dataclass(frozen=True)
class KekInfo:
    """One key-encryption key as the provider reports it."""

    kek_id: str
    state: str  # "current" | "retired" | "destroyed"
    created: str | None = None


def canonical_context(context: Mapping[str, str]) -> bytes:
    """The encryption context as stable bytes (sorted keys, no spaces) for use as associated data."""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class KeyProvider(Protocol):
    """Makes, unwraps and rewraps data keys; manages the KEKs that wrap them."""

    name: str

    def generate_data_key(self, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        """A fresh random data key, in the clear and wrapped under the current KEK with ``context``."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """The data key inside ``wrapped``. Raises KeyUnavailable (unknown or destroyed KEK) or
        IntegrityError (wrong context or altered blob)."""
        ...

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        """The same data key wrapped under the current KEK."""
        ...

    def current_kek(self) -> str:
        """The id of the KEK new data keys are wrapped under."""
        ...

    def rotate(self) -> str:
        """Make a new KEK current and return its id; older KEKs stay usable until destroyed."""
        ...

    def keks(self) -> list[KekInfo]:
        """Every KEK this provider knows, oldest first."""
        ...

    def destroy(self, kek_id: str) -> None:
        """Irreversibly destroy a retired KEK. Callers check first that no wrapped key needs it."""
        ...
