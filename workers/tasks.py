"""Celery tasks: ids, keys and JSON in; one call into :class:`archive.work.Work` each.

Transient errors (store, inbox or Redis unreachable) are retried with exponential backoff; permanent ones
are not — an input that cannot be archived was already quarantined with its reason by the pipeline.
"""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_process_init

from archive.errors import ArchiveError
from archive.settings import Settings
from archive.work import Work
from workers.app import app

log = logging.getLogger(__name__)
_work: dict[int, Work] = {}
_lock = threading.RLock()


def work() -> Work:
    """This process's services (a prefork child opens its own after the fork)."""
    pid = os.getpid()
    found = _work.get(pid)
    if found is None:
        with _lock:
            found = _work.get(pid)
            if found is None:
                _work.clear()
                found = _work[pid] = Work(Settings.from_env())
    return found


@worker_process_init.connect
def _open_early(**_) -> None:
    """A pool process opens its services as it starts, in the background: the store's and the inboxes'
    S3 clients alone take most of a second of CPU to build, which its first task would otherwise wait
    for (a task that comes sooner waits for the opening under way, not for a second one)."""
    global _lock
    _lock = threading.RLock()  # (never one held in the parent at the fork)
    threading.Thread(target=_open, name="open-services", daemon=True).start()


def _open() -> None:
    try:
        with _lock:
            opened = work()
            for url in opened.settings.inboxes:
                opened.inbox(url)
    except Exception as e:  # the first task opens them again, and fails with the reason if it persists
        log.warning("could not open the archive's services at start (the first task tries again): %s", e)


def _run(task, fn):
    try:
        return fn()
    except ArchiveError as e:
        if e.transient and task.request.retries < task.max_retries:
            raise task.retry(exc=e, countdown=min(300, 2 ** task.request.retries)) from e
        try:
            work().coordinator.count("failed")
        except ArchiveError:
            pass
        raise


@app.task(bind=True, name="archive.scan_inboxes", max_retries=3)
def scan_inboxes(self) -> int:
    return _run(self, lambda: queue(work().scan()))


def queue(batches: list[tuple[str, list[dict]]]) -> int:
    """Send one ingest task per batch; returns how many inputs they carry."""
    for url, groups in batches:
        ingest_batch.delay(url, groups)
    return sum(len(groups) for _, groups in batches)


@app.task(bind=True, name="archive.integrate_audit", max_retries=0)
def integrate_audit(self) -> int:
    """The workers' staged audit events into the log (the beat's; a task that finds another worker
    integrating returns at once)."""
    return work().integrate_audit() or 0


@app.task(bind=True, name="archive.ingest_batch", max_retries=10)
def ingest_batch(self, inbox: str, groups: list[dict]) -> dict:
    return _run(self, lambda: work().ingest_batch(inbox, groups))


@app.task(bind=True, name="archive.ingest_input", max_retries=10)
def ingest_input(self, inbox: str, group: str) -> dict:
    """One group, listed by the worker (the API's uploads)."""
    return _run(self, lambda: work().ingest(inbox, group))


@app.task(bind=True, name="archive.apply_event", max_retries=10)
def apply_event(self, kind: str, actor: str, fields: dict) -> dict:
    def do():
        event, changed = work().event(kind, actor=actor, **fields)
        return {"event": event, "changed": len(changed)}
    return _run(self, do)


@app.task(bind=True, name="archive.place_hold", max_retries=10)
def place_hold(self, case: str, records: list[str], actor: str, reason: str | None = None) -> list[str]:
    return _run(self, lambda: work().hold(case, records, actor=actor, reason=reason))


@app.task(bind=True, name="archive.release_hold", max_retries=10)
def release_hold(self, case: str, actor: str, approval: str, reason: str | None = None) -> list[str]:
    return _run(self, lambda: work().release(case, actor=actor, approval=approval, reason=reason))


@app.task(bind=True, name="archive.disposition_sweep", max_retries=3)
def disposition_sweep(self, actor: str | None = None, dispose: bool | None = None) -> dict:
    w = work()
    return _run(self, lambda: w.disposition(actor=actor, dispose=w.settings.auto_dispose if dispose is None
                                            else dispose))


@app.task(bind=True, name="archive.reindex", max_retries=3)
def reindex(self, actor: str | None = None) -> int:
    return _run(self, lambda: work().reindex(actor=actor))


@app.task(bind=True, name="archive.fixity_sweep", max_retries=3)
def fixity_sweep(self, limit: int | None = None, record_ids: list[str] | None = None,
                 actor: str | None = None) -> dict:
    def do():
        summary = work().fixity(limit=limit, record_ids=record_ids, actor=actor)
        return {k: summary[k] for k in ("records", "objects", "failed")}
    return _run(self, do)
