"""Compliance recording and audit archive: sealed, WORM-locked evidence storage.

The library is the product; the CLI (``archive.cli``), the Celery workers (``workers``) and the HTTP API
are thin edges over it. Build services once from ``Settings`` with ``archive.services.open_archive``.
"""

__version__ = "0.1.0"
