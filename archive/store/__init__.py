"""Object stores: the contract (``base``), the filesystem store (embedded default) and the S3 store.

``open_store`` picks a backend by URL (``file:///…`` or ``s3://bucket/prefix``), importing lazily.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from archive.errors import ConfigError
from archive.settings import Settings
from archive.store.base import LockMode, ObjectInfo, ObjectStore

__all__ = ["LockMode", "ObjectInfo", "ObjectStore", "open_store"]


def open_store(settings: Settings, *, create: bool = False) -> ObjectStore:
    """The object store named by ``settings.store_url``. Raises ConfigError, StoreMisconfigured."""
    url = urlparse(settings.store_url)
    if url.scheme == "file":
        from archive.store.filesystem import FilesystemStore

        return FilesystemStore(Path(url.path), create=create)
    if url.scheme == "s3":
        from archive.store.s3 import S3Store, create_locked_bucket

        store = S3Store(url.netloc, url.path, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                        access_key_id=settings.s3_access_key_id,
                        secret_access_key=settings.s3_secret_access_key,
                        part_size=settings.s3_part_size, check_lock=False)
        if create:
            create_locked_bucket(store.client, url.netloc, settings.s3_region)
        store.check_object_lock()
        return store
    raise ConfigError(f"ARCHIVE_STORE={settings.store_url!r}: unknown store scheme", variable="ARCHIVE_STORE")
