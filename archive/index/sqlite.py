"""Embedded SQLite index: a derived, rebuildable view of committed records for search.

The object store is the system of record; this index can be deleted and rebuilt from it (``archive
reindex``). Only committed records are ever written here, as search documents
(:mod:`archive.search.document`: masked text, no content bytes). Schema migrations are registered in
``MIGRATIONS``, applied in order inside a transaction on open and recorded in ``schema_migrations``.

Tables: ``records`` (one row per record: start time in UTC, the stored view as JSON), ``record_fields``
(field, value) pairs the query language filters and facets on, and ``records_text``, an FTS5 trigram
index over the masked text, which serves words and phrases of three or more characters (shorter ones,
such as two-character Chinese names, are scanned). Queries come parsed (:mod:`archive.search.query`) and
are translated to SQL here; pages are cursors over (start time, record id), so deep pages cost the same as
the first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from contextlib import contextmanager
from pathlib import Path

from archive.index.base import (FACET_FIELD, FACET_SIZE, FIND_FIELD, MONTHS, Page, check_facets, decode_cursor,
                                encode_cursor)
from archive.search import document
from archive.search.query import All, And, Field, Not, Or, Query, Range, Text, parse

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_records", """
        CREATE TABLE records (
            record_id      TEXT PRIMARY KEY,
            started_at     TEXT NOT NULL,
            channel        TEXT NOT NULL,
            source_system  TEXT NOT NULL,
            interaction_id TEXT NOT NULL,
            manifest       TEXT NOT NULL
        );
        CREATE INDEX records_started ON records (started_at);
        CREATE INDEX records_source ON records (source_system, interaction_id);
        CREATE VIRTUAL TABLE records_text USING fts5 (record_id UNINDEXED, text, tokenize = 'trigram');
    """),
    # Which records an event names: by account, contract or customer id (retention triggers, holds).
    ("0002_record_keys", """
        CREATE TABLE record_keys (
            record_id TEXT NOT NULL,
            kind      TEXT NOT NULL,
            value     TEXT NOT NULL,
            PRIMARY KEY (kind, value, record_id)
        );
        CREATE INDEX record_keys_record ON record_keys (record_id);
    """),
    # The query language: every filterable field (record_keys generalised), and start times in UTC so
    # ranges compare correctly across offsets. Rows indexed before this carry their keys over; run
    # 'archive reindex' to fill every field.
    ("0003_query_fields", """
        CREATE TABLE record_fields (
            record_id TEXT NOT NULL,
            field     TEXT NOT NULL,
            value     TEXT NOT NULL,
            PRIMARY KEY (field, value, record_id)
        );
        CREATE INDEX record_fields_record ON record_fields (record_id, field);
        INSERT OR IGNORE INTO record_fields
            SELECT record_id, CASE kind WHEN 'account' THEN 'customer.account' WHEN 'customer' THEN 'customer.id'
                                        WHEN 'phone' THEN 'customer.phone' ELSE kind END, lower(value)
            FROM record_keys;
        DROP TABLE record_keys;
        ALTER TABLE records ADD COLUMN started_utc TEXT;
        UPDATE records SET started_utc = strftime('%Y-%m-%dT%H:%M:%SZ', started_at);
        CREATE INDEX records_started_utc ON records (started_utc, record_id);
    """),
]

class SqliteIndex:
    """Committed records, searchable. One connection per instance, shared by threads under a lock."""

    BATCH = 64

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the ingest threads, serialised by a lock (SQLite writes one at a time).
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.RLock()
        self._pending: dict[str, dict] = {}
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")  # the store, not the index, is the system of record
        self._migrate()

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
        done = {row[0] for row in self.db.execute("SELECT name FROM schema_migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, sql.split(";")):
                    self.db.execute(statement)
                self.db.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (name,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.flush()
        self.db.close()

    # --- writing -------------------------------------------------------------------------------------------

    def upsert(self, view: dict) -> None:
        """Index a committed record (idempotent). Writes are batched — one transaction per ``BATCH``
        records — and reach the index at the latest on :meth:`flush`; the store is the system of record,
        so a crash loses only index entries that re-ingesting or reindexing restores."""
        with self._lock:
            self._pending[view["record_id"]] = view
            if len(self._pending) >= self.BATCH:
                self.flush()

    def flush(self) -> None:
        """Write every queued record to the index in one transaction."""
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for rid, view in pending.items():
                    meta = view["metadata"]
                    self.db.execute("INSERT OR REPLACE INTO records (record_id, started_at, channel, source_system, "
                                    "interaction_id, manifest, started_utc) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    (rid, meta["started_at"], meta["channel"], meta["source"]["system"],
                                     meta["source"]["interaction_id"],
                                     json.dumps(document.stored(view), ensure_ascii=False),
                                     document.started_utc(view)))
                    self.db.execute("DELETE FROM records_text WHERE record_id = ?", (rid,))
                    self.db.execute("INSERT INTO records_text VALUES (?, ?)", (rid, document.text(view)))
                    self.db.execute("DELETE FROM record_fields WHERE record_id = ?", (rid,))
                    self.db.executemany("INSERT OR IGNORE INTO record_fields VALUES (?, ?, ?)",
                                        [(rid, f, v) for f, vs in document.fields(view).items() for v in vs])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                self._pending = {**pending, **self._pending}
                raise

    def delete(self, record_id: str) -> None:
        """Remove a disposed record."""
        self._write(lambda: [self.db.execute(f"DELETE FROM {t} WHERE record_id = ?", (record_id,))
                             for t in ("records", "records_text", "record_fields")])

    @contextmanager
    def rebuilding(self):
        """Empty the index and yield it to be filled. (The embedded index is briefly empty meanwhile; the
        Elasticsearch backend builds aside and swaps.)"""
        self._write(lambda: [self.db.execute(f"DELETE FROM {t}") for t in ("records", "records_text", "record_fields")])
        yield self
        self.flush()

    def _write(self, do) -> None:
        with self._lock:
            self.flush()
            self.db.execute("BEGIN IMMEDIATE")
            try:
                do()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    # --- reading -------------------------------------------------------------------------------------------

    def get(self, record_id: str) -> dict | None:
        with self._lock:
            self.flush()
            row = self.db.execute("SELECT manifest FROM records WHERE record_id = ?", (record_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def query(self, query: str | Query, *, limit: int = 50, cursor: str | None = None,
              facets: tuple[str, ...] = (), total: bool = False) -> Page:
        """One page of the records matching ``query`` (text or parsed), in its sort order."""
        q = parse(query) if isinstance(query, str) else query
        check_facets(facets)
        where, params = _sql(q.tree)
        newest = q.sort == "newest"
        order = "DESC" if newest else "ASC"
        page_where, page_params = where, list(params)
        if cursor:
            started, rid = decode_cursor(cursor)
            page_where = f"({where}) AND (r.started_utc, r.record_id) {'<' if newest else '>'} (?, ?)"
            page_params += [started, rid]
        with self._lock:
            self.flush()
            rows = self.db.execute(
                f"SELECT r.manifest, r.started_utc, r.record_id FROM records r WHERE {page_where} "
                f"ORDER BY r.started_utc {order}, r.record_id {order} LIMIT ?", (*page_params, limit + 1)).fetchall()
            counts = {name: self._facet(name, where, params) for name in facets}
            count = self.db.execute(f"SELECT count(*) FROM records r WHERE {where}", params).fetchone()[0] \
                if total else None
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1][1], rows[-1][2]) if more and rows else None
        return Page([json.loads(r[0]) for r in rows], nxt, counts, count)

    def _facet(self, name: str, where: str, params: list) -> list[tuple[str, int]]:
        if name == "month":
            sql = (f"SELECT substr(r.started_utc, 1, 7) AS v, count(*) FROM records r WHERE {where} "
                   f"GROUP BY v ORDER BY v DESC LIMIT {MONTHS}")
            return [(v, n) for v, n in self.db.execute(sql, params)]
        sql = (f"SELECT f.value, count(*) AS n FROM record_fields f JOIN records r ON r.record_id = f.record_id "
               f"WHERE f.field = ? AND ({where}) GROUP BY f.value ORDER BY n DESC, f.value LIMIT {FACET_SIZE}")
        return [(v, n) for v, n in self.db.execute(sql, (FACET_FIELD.get(name, name), *params))]

    def search(self, query: str, limit: int = 50) -> list[dict]:
        """The first ``limit`` records matching ``query``."""
        return self.query(query, limit=limit).records

    def ids(self, query: str, limit: int = 100_000) -> list[str]:
        """Record ids matching ``query``."""
        return [m["record_id"] for m in self.search(query, limit=limit)]

    def timeline(self, field_name: str, value: str) -> list[dict]:
        """Every record of one customer (``customer.id``, ``customer.account`` or ``customer.phone``), all
        channels, oldest first."""
        return self.query(Query(Field(field_name, value.casefold()), sort="oldest"), limit=1_000_000).records

    def find(self, kind: str, value: str) -> list[str]:
        """Records naming ``value`` as their ``kind`` (account, contract or customer): what an event covers."""
        field_name = FIND_FIELD[kind]
        with self._lock:
            self.flush()
            rows = self.db.execute("SELECT record_id FROM record_fields WHERE field = ? AND value = ? "
                                   "ORDER BY record_id", (field_name, value.casefold())).fetchall()
        return [r[0] for r in rows]

    def count(self) -> int:
        with self._lock:
            self.flush()
            return self.db.execute("SELECT count(*) FROM records").fetchone()[0]

    def record_ids(self) -> Iterator[str]:
        with closing(self.db.execute("SELECT record_id FROM records ORDER BY record_id")) as cur:
            for row in cur:
                yield row[0]


# --- query tree → SQL ---------------------------------------------------------------------------------------


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _sql(node) -> tuple[str, list]:
    """A WHERE clause over ``records r`` and its parameters."""
    if isinstance(node, All):
        return "1", []
    if isinstance(node, Field):
        if node.prefix:
            return ("r.record_id IN (SELECT record_id FROM record_fields WHERE field = ? AND value >= ? "
                    "AND value < ?)", [node.field, node.value, node.value + "\U0010ffff"])
        return "r.record_id IN (SELECT record_id FROM record_fields WHERE field = ? AND value = ?)", \
            [node.field, node.value]
    if isinstance(node, Text):
        # The trigram index serves LIKE for three or more characters; shorter text needs a scan.
        if len(node.text) >= 3:
            return "r.record_id IN (SELECT record_id FROM records_text WHERE text LIKE ? ESCAPE '\\')", \
                [_like(node.text)]
        return "r.record_id IN (SELECT record_id FROM records_text WHERE instr(lower(text), lower(?)) > 0)", \
            [node.text]
    if isinstance(node, Range):
        parts, params = [], []
        if node.after:
            parts.append("r.started_utc >= ?")
            params.append(node.after)
        if node.before:
            parts.append("r.started_utc < ?")
            params.append(node.before)
        return " AND ".join(parts) or "1", params
    if isinstance(node, Not):
        inner, params = _sql(node.node)
        return f"NOT ({inner})", params
    if isinstance(node, And | Or):
        joined, params = [], []
        for child in node.nodes:
            sql, p = _sql(child)
            joined.append(f"({sql})")
            params += p
        return (" AND " if isinstance(node, And) else " OR ").join(joined), params
    raise TypeError(f"not a query node: {node!r}")
