"""Key providers: the contract (``base``), the local keyring (default) and AWS KMS.

``open_keys`` picks the backend named by ``ARCHIVE_KEYS``, importing lazily.
"""

from __future__ import annotations

from archive.keys.base import KekInfo, KeyProvider, WrappedKey
from archive.settings import Settings

__all__ = ["KekInfo", "KeyProvider", "WrappedKey", "open_keys"]


def open_keys(settings: Settings) -> KeyProvider:
    """The key provider named by ``settings.keys``. Raises KeyringError, KeyUnavailable."""
    if settings.keys == "keyring":
        from archive.keys.keyring import KeyringProvider

        return KeyringProvider(settings.keyring_path)
    from archive.keys.kms import KmsProvider

    return KmsProvider(settings.keys.removeprefix("aws-kms:"), region=settings.kms_region,
                       endpoint_url=settings.kms_endpoint_url)
