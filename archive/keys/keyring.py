"""Local keyring: versioned key-encryption keys in one file, the embedded default key provider.

File format (JSON, mode 0600, written atomically)::

    {"format": "archive-keyring/1",
     "current": 2,
     "keks": [{"version": 1, "state": "retired",   "created": "…", "key": "<base64 32 bytes>"},
              {"version": 2, "state": "current",   "created": "…", "key": "…"},
              {"version": 0, "state": "destroyed", "created": "…", "destroyed": "…"}],
     "signing": [{"version": 1, "state": "current", "created": "…",
                  "private": "<base64 Ed25519 seed>", "public": "<hex>"}]}

``signing`` holds the Ed25519 keys that sign audit checkpoints and batches (ids ``sig-v<version>``); rotated
keys are kept, so old checkpoints stay verifiable. ``lock`` holds the HMAC keys that authenticate the
filesystem store's lock state (ids ``lk-v<version>``). Both are made on first use for keyrings that
predate them.

Wrapping: ``blob = nonce(12) ‖ AES-256-GCM(kek, nonce, data_key, aad)`` with
``aad = b"archive-keyring/1\\n" ‖ kek id ‖ b"\\n" ‖ canonical encryption context``, so a wrapped key only
unwraps for the object it was made for. KEK ids are ``kr-v<version>``.

The file is refused when group or others can read it: a keyring anyone can read is no secret. Protect
the file like the evidence itself (backups, a second copy offline); losing it loses every object. For
production, prefer a KMS (``ARCHIVE_KEYS=aws-kms:…``), where KEKs never leave the service.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import stat
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from archive.errors import IntegrityError, KeyringError, KeyUnavailable
from archive.keys.base import DATA_KEY_SIZE, KekInfo, WrappedKey, canonical_context

FORMAT = "archive-keyring/1"
PROVIDER = "keyring"
_AAD_LABEL = b"archive-keyring/1\n"


def _kek_id(version: int) -> str:
    return f"kr-v{version}"


def _sig_id(version: int) -> str:
    return f"sig-v{version}"


class KeyringSigner:
    """Signs checkpoints with one Ed25519 key of the keyring."""

    def __init__(self, entry: dict) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.key_id = _sig_id(entry["version"])
        self._private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(entry["private"]))
        self.public_key = bytes.fromhex(entry["public"])

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def create_keyring(path: Path) -> None:
    """Create a keyring with one fresh KEK at ``path`` (mode 0600). Raises KeyringError if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise KeyringError(f"keyring {path} already exists; refusing to overwrite keys", path=str(path))
    doc = {"format": FORMAT, "current": 1,
           "keks": [{"version": 1, "state": "current", "created": _now(), "key": _new_key()}]}
    _write(path, doc, exclusive=True)


def _new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _write(path: Path, doc: dict, *, exclusive: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if another process created it meanwhile
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class KeyringProvider:
    """KEKs from a local keyring file. Reloads the file when it changes, so a long-running worker sees a
    rotation done by ``archive keys rotate`` in another process."""

    name = PROVIDER

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._doc: dict = {}
        self._ciphers: dict[str, AESGCM] = {}  # of the loaded file: KEK id → its AES-GCM (key schedule made once)
        self._load()  # fail in the constructor, not on first use

    # --- file handling ---------------------------------------------------------------------------

    def _load(self) -> dict:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise KeyringError(f"keyring {self.path} does not exist; run 'archive init' first",
                               path=str(self.path)) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyringError(
                f"keyring {self.path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"refusing to use it. Run: chmod 600 {self.path}", path=str(self.path))
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp == self._stamp:
                return self._doc
            try:
                doc = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:
                raise KeyringError(f"keyring {self.path} is unreadable: {e}", path=str(self.path)) from e
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("keks"), list):
                raise KeyringError(f"keyring {self.path} is not an {FORMAT} file", path=str(self.path))
            self._doc, self._stamp, self._ciphers = doc, stamp, {}
            return doc

    def _update(self, change) -> dict:
        """Apply ``change(doc)`` under an exclusive file lock and write the result atomically."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._stamp = None
            doc = json.loads(json.dumps(self._load()))  # a private copy
            result = change(doc)
            _write(self.path, doc)
            self._stamp = None
            self._load()
            return result
        finally:
            os.close(fd)

    def _kek(self, kek_id: str, doc: dict | None = None) -> AESGCM:
        """The AES-GCM of KEK ``kek_id`` as the keyring file (``doc``, default: re-read if changed) has it."""
        doc = doc or self._load()
        ciphers = self._ciphers
        cipher = ciphers.get(kek_id) if doc is self._doc else None
        if cipher is not None:
            return cipher
        for entry in doc["keks"]:
            if _kek_id(entry["version"]) == kek_id:
                if entry.get("state") == "destroyed" or "key" not in entry:
                    raise KeyUnavailable(f"key-encryption key {kek_id} was destroyed", kek_id=kek_id)
                cipher = AESGCM(base64.b64decode(entry["key"]))
                if doc is self._doc:
                    ciphers[kek_id] = cipher
                return cipher
        raise KeyUnavailable(f"key-encryption key {kek_id} is not in keyring {self.path}", kek_id=kek_id)

    # --- KeyProvider ---------------------------------------------------------------------------------

    def current_kek(self) -> str:
        return _kek_id(int(self._load()["current"]))

    def _wrap(self, data_key: bytes, context: Mapping[str, str]) -> WrappedKey:
        doc = self._load()  # once: the current KEK and its key from the same reading of the file
        kek_id = _kek_id(int(doc["current"]))
        nonce = os.urandom(12)
        aad = _AAD_LABEL + kek_id.encode() + b"\n" + canonical_context(context)
        return WrappedKey(PROVIDER, kek_id, nonce + self._kek(kek_id, doc).encrypt(nonce, data_key, aad))

    def generate_data_key(self, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        data_key = os.urandom(DATA_KEY_SIZE)
        return data_key, self._wrap(data_key, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if wrapped.provider != PROVIDER:
            raise KeyUnavailable(f"data key was wrapped by {wrapped.provider!r}, not by the keyring",
                                 kek_id=wrapped.kek_id)
        kek = self._kek(wrapped.kek_id)
        aad = _AAD_LABEL + wrapped.kek_id.encode() + b"\n" + canonical_context(context)
        try:
            return kek.decrypt(wrapped.blob[:12], wrapped.blob[12:], aad)
        except (InvalidTag, ValueError):
            raise IntegrityError(f"wrapped data key does not open under {wrapped.kek_id} for "
                                 f"{context.get('archive:object', '?')} (altered, or bound to another object)",
                                 object_key=context.get("archive:object"), segment="wrapped-key") from None

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        return self._wrap(self.unwrap(wrapped, context), context)

    def rotate(self) -> str:
        def change(doc: dict) -> str:
            version = max(int(e["version"]) for e in doc["keks"]) + 1
            for entry in doc["keks"]:
                if entry.get("state") == "current":
                    entry["state"] = "retired"
                    entry["retired"] = _now()
            doc["keks"].append({"version": version, "state": "current", "created": _now(), "key": _new_key()})
            doc["current"] = version
            return _kek_id(version)

        return self._update(change)

    def keks(self) -> list[KekInfo]:
        return [KekInfo(_kek_id(e["version"]), e.get("state", "retired"), e.get("created"))
                for e in self._load()["keks"]]

    # --- checkpoint signing keys (Ed25519) ----------------------------------------------------------------

    def signer(self) -> KeyringSigner:
        """The current Ed25519 signing key, made on first use for keyrings that predate signing."""
        current = [e for e in self._load().get("signing", []) if e.get("state") == "current"]
        if not current:
            self.rotate_signing()
            current = [e for e in self._load()["signing"] if e.get("state") == "current"]
        return KeyringSigner(current[0])

    def signing_public_keys(self) -> dict[str, bytes]:
        """Every signing key's public half, by key id: the verifier's trusted keys, including retired ones
        (old checkpoints stay verifiable after rotation)."""
        return {_sig_id(e["version"]): bytes.fromhex(e["public"]) for e in self._load().get("signing", [])}

    def rotate_signing(self) -> str:
        """Make a new Ed25519 signing key current; older ones are kept (public and private) as retired."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        def change(doc: dict) -> str:
            keys = doc.setdefault("signing", [])
            version = max((int(e["version"]) for e in keys), default=0) + 1
            for entry in keys:
                if entry.get("state") == "current":
                    entry["state"] = "retired"
            private = Ed25519PrivateKey.generate()
            raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
            public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            keys.append({"version": version, "state": "current", "created": _now(),
                         "private": base64.b64encode(raw).decode(), "public": public.hex()})
            return _sig_id(version)

        return self._update(change)

    # --- lock-state keys (HMAC-SHA256) of the filesystem store ----------------------------------------------

    def lock_state_keys(self) -> tuple[str, dict[str, bytes], bool]:
        """(current key id, every key by id, whether this call made the first key) of the keys that
        authenticate the filesystem store's lock state (archive/store/filesystem.py). They are kept here,
        not in the store, so someone who can edit the store's files cannot make a lock state pass its
        check. Made on first use for keyrings that predate them (``lock``: ``[{"version", "state",
        "created", "key"}]``, ids ``lk-v<version>``)."""
        made = False
        if not self._load().get("lock"):
            def change(doc: dict) -> bool:
                if doc.get("lock"):
                    return False  # another process made it first
                doc["lock"] = [{"version": 1, "state": "current", "created": _now(), "key": _new_key()}]
                return True

            made = self._update(change)
        entries = self._load()["lock"]
        current = next(e for e in entries if e.get("state") == "current")
        return (f"lk-v{current['version']}", {f"lk-v{e['version']}": base64.b64decode(e["key"]) for e in entries},
                made)

    def destroy(self, kek_id: str) -> None:
        def change(doc: dict) -> None:
            for entry in doc["keks"]:
                if _kek_id(entry["version"]) == kek_id:
                    if entry.get("state") == "current":
                        raise KeyringError(f"{kek_id} is the current key-encryption key; rotate first",
                                           kek_id=kek_id)
                    entry.pop("key", None)
                    entry["state"] = "destroyed"
                    entry["destroyed"] = _now()
                    return
            raise KeyUnavailable(f"key-encryption key {kek_id} is not in keyring {self.path}", kek_id=kek_id)

        self._update(change)
