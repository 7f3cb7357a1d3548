"""The index contract every backend keeps (SQLite embedded; Elasticsearch or OpenSearch at scale).

An index is a derived view: documents built by :mod:`archive.search.document` from records in the store,
queried with the parsed language of :mod:`archive.search.query`. Both backends answer the same query with
the same records in the same order, the same facet counts and the same timeline (tests/test_search.py
asserts it over a shared corpus). Methods:

    upsert(view) / flush()          index a record (batched; visible after flush)
    delete(record_id)               a disposed record
    rebuilding()                    context manager: a fresh, empty index to fill; it replaces the old
                                    one when the block ends (Elasticsearch: an alias swap, no downtime)
    get(record_id)                  the stored view, or None
    query(q, limit, cursor, facets, total) → Page
    search(q, limit) / ids(q)       the first records / ids matching
    timeline(field, value)          one customer's records, oldest first
    find(kind, value)               records an event selects (account, contract, customer)
    count() / record_ids()
    describe()                      the engine, its version and schema or template version (archive status)
    entry_of(view) / entries()      what the index would hold for a view, and what it holds: compared
                                    by archive/index/check.py (``archive reindex --check``)
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from archive.errors import InputError

# Facets the query language offers: counts by these over every match (month is the UTC start month).
FACETS = ("channel", "agent", "policy", "hold", "finding", "month")
FACET_FIELD = {"agent": "agent.id"}  # the field a facet counts, where it is not the facet's own name
FACET_SIZE = 50
MONTHS = 120
# what an event's selector names, as an index field
FIND_FIELD = {"account": "customer.account", "customer": "customer.id", "contract": "contract"}


@dataclass
class Page:
    """One page of results: records (stored views), the cursor for the next page (None at the end), and
    facet counts over every match (not only this page) when asked for."""

    records: list[dict]
    next: str | None = None
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    total: int | None = None


class CursorError(InputError):
    code = "cursor_invalid"
    http_status = 400


def check_facets(facets) -> None:
    for name in facets:
        if name not in FACETS:
            raise InputError(f"unknown facet {name!r}; facets are {', '.join(FACETS)}", facet=name)


def encode_cursor(started: str, rid: str) -> str:
    """A cursor after (start time, record id): the same for every backend."""
    return base64.urlsafe_b64encode(json.dumps([started, rid]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        started, rid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(started, str) and isinstance(rid, str)):
            raise ValueError
        return started, rid
    except (ValueError, TypeError):
        raise CursorError(f"not a cursor from this index: {cursor[:40]!r}") from None
