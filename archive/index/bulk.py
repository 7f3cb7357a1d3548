"""Bulk writes to a search engine (Elasticsearch or OpenSearch): batches sized by bytes, and partial
failures retried for the failed items only.

Documents arrive already serialised (one NDJSON ``index`` action and its source per record) and are cut
into ``_bulk`` requests of at most :attr:`BulkWriter.max_bytes` (5 MiB by default: the engines' indexing
guides recommend bulk requests of a few megabytes, measured rather than counted in documents, and warn
against tens of megabytes). A bulk response lists one item per action, in request order; an item with a
status of 429 (the engine's indexing queue is full: ``es_rejected_execution_exception`` /
``rejected_execution_exception``) or 502/503/504 is sent again, alone with the other failed items, after a
growing pause, up to :attr:`BulkWriter.attempts` times; the items that succeeded are never sent twice.
Any other item error (a mapping refusal, 400) will not improve by retrying: it is reported with the
record ids and the engine's reason once the rest of the batch is written. Whatever could not be written
travels back to the caller on the error (``unsent``), to be queued again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from archive.errors import StorageError
from archive.index.engines import RETRY_STATUSES, IndexUnavailable


class BulkRefused(StorageError):
    """Raised when the engine refused some records of a bulk write for a reason retrying cannot fix (a
    mapping error); ``record_ids`` names them. The other records of the batch were written."""

    code = "index_bulk_refused"


def action(record_id: str, source: bytes) -> bytes:
    """One record as the two NDJSON lines of a bulk ``index`` action (the target index is in the path)."""
    return b'{"index":{"_id":' + json.dumps(record_id).encode() + b"}}\n" + source + b"\n"


class BulkWriter:
    """Sends prepared actions with ``send(body) -> response`` and retries what the engine asks to retry.
    Holds no state between calls, so two batches may be written from two threads."""

    max_bytes = 5 * 1024 * 1024
    attempts = 6  # the first try and five retries of what was rejected as "later"
    backoff = 0.2  # seconds before the first retry; doubles each time, at most max_backoff
    max_backoff = 5.0

    def __init__(self, *, what: str = "bulk index", sleep: Callable[[float], None] = time.sleep) -> None:
        self.what = what
        self.sleep = sleep

    def batches(self, actions: dict[str, bytes]):
        """``actions`` cut into dicts of at most :attr:`max_bytes` each (a larger action goes alone)."""
        batch: dict[str, bytes] = {}
        size = 0
        for rid, line in actions.items():
            if batch and size + len(line) > self.max_bytes:
                yield batch
                batch, size = {}, 0
            batch[rid] = line
            size += len(line)
        if batch:
            yield batch

    def write(self, actions: dict[str, bytes], send: Callable[[bytes], dict]) -> int:
        """Write every action with ``send``, batch by batch. Returns how many records were written.

        Raises IndexUnavailable when some are still rejected after every retry, or when ``send`` cannot
        reach the engine; BulkRefused when the engine refused some for good (once the rest are written);
        StorageError when ``send`` was refused. The error's ``unsent`` holds every action not written
        that should be sent again later (the refused ones are not among them: the error names them)."""
        unsent = dict(actions)
        refused: dict[str, str] = {}
        written = 0
        try:
            for batch in list(self.batches(actions)):
                written += self._write_batch(batch, send, unsent, refused)
        except StorageError as e:
            e.unsent = unsent
            raise
        if refused:
            for rid in refused:
                unsent.pop(rid, None)
            shown = "; ".join(f"{rid}: {reason}" for rid, reason in list(refused.items())[:5])
            more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            error = BulkRefused(f"{self.what}: the engine refused {len(refused)} record(s): {shown}{more}",
                                record_ids=sorted(refused))
            error.unsent = unsent
            raise error
        return written

    def _write_batch(self, batch: dict[str, bytes], send, unsent: dict, refused: dict) -> int:
        todo = batch
        pause = self.backoff
        written = 0
        for attempt in range(self.attempts):
            resp = send(b"".join(todo.values()))
            retry: dict[str, bytes] = {}
            outcomes = _outcomes(todo, resp) if resp.get("errors") else ((rid, 201, "") for rid in todo)
            for rid, status, reason in outcomes:
                if status < 300:
                    written += 1
                    unsent.pop(rid, None)
                elif status in RETRY_STATUSES:
                    retry[rid] = todo[rid]
                else:
                    refused[rid] = f"{status} {reason}"
            if not retry:
                return written
            todo = retry
            if attempt + 1 < self.attempts:
                self.sleep(pause)
                pause = min(pause * 2, self.max_backoff)
        first = next(iter(todo))
        raise IndexUnavailable(f"{self.what}: the engine still rejected {len(todo)} record(s) after "
                               f"{self.attempts} attempts (first: {first}); they stay queued for the next flush",
                               record_ids=sorted(todo))


def _outcomes(todo: dict[str, bytes], resp: dict):
    """(record id, status, reason) for each item of a bulk response, matched to the request by position
    (the engines answer in request order) and checked against the item's _id."""
    items = resp.get("items") or []
    if len(items) != len(todo):
        raise StorageError(f"bulk response has {len(items)} items for {len(todo)} actions")
    for rid, item in zip(todo, items):
        result = next(iter(item.values())) if isinstance(item, dict) and item else {}
        if result.get("_id") not in (None, rid):
            raise StorageError(f"bulk response item for {result.get('_id')!r} where {rid!r} was sent")
        status = int(result.get("status", 500))
        error = result.get("error") or {}
        reason = f"{error.get('type')}: {error.get('reason')}" if isinstance(error, dict) else str(error)
        yield rid, status, reason
