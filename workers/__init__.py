"""Celery workers: thin tasks over the archive library (see the distributed-ingest issue)."""
