"""Celery workers: thin tasks over the archive library (:mod:`archive.work`).

Run them with ``archive worker`` (or ``celery -A workers worker -Q archive``) and one scheduler with
``archive worker --beat`` (or ``celery -A workers beat``). Settings come from the ``ARCHIVE_*``
environment, as for the CLI.
"""

from workers.app import app

__all__ = ["app"]
