"""The S3 requests this process sends, counted by operation (``GetObject``, ``PutObject`` …).

botocore announces every HTTP request it is about to send (``before-send``, retries included); a counter
registered on a client adds one for each. The workers add what they counted to the shared counters after
each task (``s3.<Operation>`` in ``archive status`` and in the benchmark), so the requests an input costs
are measured where they are made, not estimated.
"""

from __future__ import annotations

import threading
from collections import Counter

_counts: Counter[str] = Counter()
_lock = threading.Lock()


def _sent(event_name: str = "", **_) -> None:
    operation = event_name.rsplit(".", 1)[-1]
    with _lock:
        _counts[operation] += 1


def count(client) -> None:
    """Count the requests ``client`` (a boto3 S3 client) sends from now on (once per client)."""
    if not getattr(client, "_archive_counted", False):
        client.meta.events.register("before-send.s3", _sent)
        client._archive_counted = True


def take() -> dict[str, int]:
    """The counts since the last call, by operation; starts counting again from zero."""
    global _counts
    with _lock:
        counts, _counts = _counts, Counter()
    return dict(counts)
