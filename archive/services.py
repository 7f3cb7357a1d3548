"""Building the archive's services once from settings, and creating a new archive.

No module-level clients: every edge (CLI, worker, API) calls :func:`open_archive` once and passes the
result along.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from archive import __version__
from archive.audit.log import AuditLog
from archive.audit.witness import open_witness
from archive.dates import parse_duration
from archive.errors import ConfigError, NotInitialized
from archive.keys import KeyProvider, open_keys
from archive.settings import Settings
from archive.store import ObjectStore, open_store
from archive.store.base import LockMode
from archive.vault import Vault

MARKER = "archive.json"


@dataclass(frozen=True)
class Archive:
    """The services of one archive."""

    settings: Settings
    store: ObjectStore
    keys: KeyProvider
    vault: Vault
    audit: AuditLog


def open_archive(settings: Settings) -> Archive:
    """Open an initialised archive. Raises NotInitialized, ConfigError, StorageError, CryptoError."""
    if not (settings.home / MARKER).exists():
        raise NotInitialized(f"no archive at {settings.home} (ARCHIVE_HOME); run 'archive init' first",
                             home=str(settings.home))
    store = open_store(settings)
    keys = open_keys(settings)
    if hasattr(store, "use_lock_keys") and hasattr(keys, "lock_state_keys"):
        # the filesystem store's lock state, authenticated with keys kept in the keyring (not in the store)
        current, lock_keys, made = keys.lock_state_keys()
        store.use_lock_keys(current, lock_keys, seal_existing=made)
    lock_mode = LockMode.parse(settings.lock_mode)
    vault = Vault(store, keys, segment_size=settings.segment_size, lock_mode=lock_mode)
    signer = keys.signer() if hasattr(keys, "signer") else None
    audit = AuditLog(store, retention=parse_duration(settings.audit_retention), signer=signer, lock_mode=lock_mode,
                     checkpoint_every=settings.audit_checkpoint_every,
                     checkpoint_interval=parse_duration(settings.audit_checkpoint_interval).nominal_seconds(),
                     witness=open_witness(settings))
    return Archive(settings, store, keys, vault, audit)


def init_archive(settings: Settings, *, create_bucket: bool = False) -> tuple[Archive, list[str]]:
    """Create the archive home, the keyring (when the keyring is the key provider) and the store.
    Idempotent: what exists is kept, never overwritten. Returns the archive and what was done."""
    done: list[str] = []
    home = settings.home
    if home.exists() and not home.is_dir():
        raise ConfigError(f"ARCHIVE_HOME={home} exists and is not a directory", variable="ARCHIVE_HOME")
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    if settings.keys == "keyring":
        from archive.keys.keyring import create_keyring

        if settings.keyring_path.exists():
            done.append(f"keyring kept: {settings.keyring_path}")
        else:
            create_keyring(settings.keyring_path)
            done.append(f"keyring created: {settings.keyring_path} (mode 0600) — back it up; losing it loses "
                        "every object")
    open_store(settings, create=create_bucket or settings.store_url.startswith("file:"))
    done.append(f"object store ready: {settings.store_url}")
    from archive.access import ROLES, Identities

    identities = Identities(settings.identities_path)
    if not identities.all():
        import getpass

        first = settings.actor or getpass.getuser()
        identities.set(first, list(ROLES))
        done.append(f"identity {first!r} created with every role ({', '.join(ROLES)}); act as it with "
                    f"ARCHIVE_ACTOR={first} or --actor {first}, and add narrower identities with "
                    "'archive identity add NAME --role ROLE'")
    marker = home / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"created": datetime.now(UTC).isoformat(timespec="seconds"),
                                      "version": __version__, "store": settings.store_url,
                                      "keys": settings.keys.split(":")[0]}, indent=1))
        done.append(f"archive created: {home}")
    else:
        done.append(f"archive kept: {home}")
    return open_archive(settings), done


@dataclass
class Services:
    """An open archive with everything an edge (CLI command, worker process, API server) works through:
    its index, retention (policies, events, holds), the ingest pipeline and the identity file."""

    archive: Archive
    index: object
    retention: object
    ingestor: object
    identities: object

    @property
    def settings(self) -> Settings:
        return self.archive.settings

    def status(self) -> dict:
        """Records indexed, the index (engine, version, schema or template version), inputs quarantined and
        the last fixity sweep (``archive status``, the API)."""
        from archive import fixity

        sweep = fixity.last_sweep(self.retention)
        return {"records": self.index.count(), "index": self.index.describe(),
                "quarantined": sum(1 for _ in self.archive.vault.names("quarantine/", with_receipt=True)),
                "last_fixity_sweep": None if sweep is None else {
                    **{k: sweep.get(k) for k in ("started_at", "finished_at", "records", "objects")},
                    "failed": len(sweep["failed"])}}


def services_for(archive: Archive) -> Services:
    """The services of an open archive, each built once from its settings."""
    from archive.access import Identities
    from archive.index import open_index
    from archive.ingest.pipeline import Ingestor
    from archive.retention.service import Retention

    settings = archive.settings
    index = open_index(settings)
    retention = Retention(archive, index, policies_dir=settings.policies_dir, min_lock=settings.min_lock)
    return Services(archive, index, retention, Ingestor(archive, index, retention=retention),
                    Identities(settings.identities_path))
