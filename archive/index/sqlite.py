"""Embedded SQLite index: a derived, rebuildable view of committed records for search.

The object store is the system of record; this index can be deleted and rebuilt from it (``archive
reindex``). Only committed records are ever written here, as search documents
(:mod:`archive.search.document`: masked text, no content bytes). Schema migrations are registered in
``MIGRATIONS``, applied in order inside a transaction on open and recorded in ``schema_migrations``.

Tables: ``records`` (one row per record: start time in UTC, the stored view as JSON), ``record_fields``
(field, value) pairs the query language filters and facets on, and ``records_fts``, an FTS5 trigram
index over the masked, case-folded text (rowid = the record's ``rec``), which serves words and phrases
of three or more characters (shorter ones, such as two-character Chinese names, are scanned). Queries
come parsed (:mod:`archive.search.query`) and are translated to SQL here; pages are cursors over (start
time, record id), so deep pages cost the same as the first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from contextlib import contextmanager
from pathlib import Path

from archive.index.base import (FACET_FIELD, FACET_SIZE, FACETS, FIND_FIELD, MONTHS, Page, check_facets,
                                decode_cursor, encode_cursor)
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
    # The query language (issue 5). Records get an integer key (rec) that the field and text indexes use:
    # smaller than the record id, and stable (an INTEGER PRIMARY KEY survives VACUUM). record_keys
    # generalises into record_fields — every filterable field, clustered by (field, value) for filters
    # and covered by (rec, field, value) for facets; the text index is keyed by rec, so replacing one
    # record's text is a key lookup (records_text needed a scan of the whole text index); start times are
    # kept in UTC so ranges compare across offsets. record_facets repeats the facet fields ordered by
    # start time, so counting a date range's facets scans one index range instead of joining per record.
    # Existing rows carry over; 'archive reindex' fills every field.
    ("0003_query_language", """
        CREATE TABLE records_v3 (
            rec            INTEGER PRIMARY KEY,
            record_id      TEXT NOT NULL UNIQUE,
            started_at     TEXT NOT NULL,
            started_utc    TEXT NOT NULL,
            channel        TEXT NOT NULL,
            source_system  TEXT NOT NULL,
            interaction_id TEXT NOT NULL,
            manifest       TEXT NOT NULL
        );
        INSERT INTO records_v3 (record_id, started_at, started_utc, channel, source_system, interaction_id, manifest)
            SELECT record_id, started_at, strftime('%Y-%m-%dT%H:%M:%SZ', started_at), channel, source_system,
                   interaction_id, manifest FROM records;
        CREATE TABLE record_fields (
            field TEXT NOT NULL,
            value TEXT NOT NULL,
            rec   INTEGER NOT NULL,
            PRIMARY KEY (field, value, rec)
        ) WITHOUT ROWID;
        INSERT OR IGNORE INTO record_fields
            SELECT CASE k.kind WHEN 'account' THEN 'customer.account' WHEN 'customer' THEN 'customer.id'
                               WHEN 'phone' THEN 'customer.phone' ELSE k.kind END, lower(k.value), r.rec
            FROM record_keys k JOIN records_v3 r ON r.record_id = k.record_id;
        CREATE TABLE record_facets (
            field       TEXT NOT NULL,
            started_utc TEXT NOT NULL,
            value       TEXT NOT NULL,
            rec         INTEGER NOT NULL,
            PRIMARY KEY (field, started_utc, value, rec)
        ) WITHOUT ROWID;
        CREATE VIRTUAL TABLE records_fts USING fts5 (text, tokenize = 'trigram');
        INSERT INTO records_fts (rowid, text)
            SELECT r.rec, lower(t.text) FROM records_text t JOIN records_v3 r ON r.record_id = t.record_id;
        DROP TABLE records_text;
        DROP TABLE record_keys;
        DROP TABLE records;
        ALTER TABLE records_v3 RENAME TO records;
        CREATE INDEX records_started ON records (started_utc, record_id);
        CREATE INDEX records_source ON records (source_system, interaction_id);
        CREATE INDEX record_fields_rec ON record_fields (rec, field, value);
        INSERT INTO record_facets
            SELECT f.field, r.started_utc, f.value, f.rec FROM record_fields f JOIN records r ON r.rec = f.rec
            WHERE f.field IN ('channel', 'agent.id', 'policy', 'hold', 'finding');
        CREATE INDEX record_facets_rec ON record_facets (rec);
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
                    self._remove(rid)
                    rec = self.db.execute(
                        "INSERT INTO records (record_id, started_at, channel, source_system, interaction_id, manifest, "
                        "started_utc) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (rid, meta["started_at"], meta["channel"], meta["source"]["system"],
                         meta["source"]["interaction_id"], json.dumps(document.stored(view), ensure_ascii=False),
                         document.started_utc(view))).lastrowid
                    self.db.execute("INSERT INTO records_fts (rowid, text) VALUES (?, ?)", (rec, document.text(view)))
                    fields = document.fields(view)
                    started = document.started_utc(view)
                    self.db.executemany("INSERT OR IGNORE INTO record_fields VALUES (?, ?, ?)",
                                        [(f, v, rec) for f, vs in fields.items() for v in vs])
                    self.db.executemany("INSERT OR IGNORE INTO record_facets VALUES (?, ?, ?, ?)",
                                        [(f, started, v, rec) for f in FACETED for v in fields.get(f, ())])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                self._pending = {**pending, **self._pending}
                raise

    def _remove(self, record_id: str) -> None:
        row = self.db.execute("SELECT rec FROM records WHERE record_id = ?", (record_id,)).fetchone()
        if row is not None:
            self.db.execute("DELETE FROM records_fts WHERE rowid = ?", row)
            self.db.execute("DELETE FROM record_fields WHERE rec = ?", row)
            self.db.execute("DELETE FROM record_facets WHERE rec = ?", row)
            self.db.execute("DELETE FROM records WHERE rec = ?", row)

    def delete(self, record_id: str) -> None:
        """Remove a disposed record."""
        self._write(lambda: self._remove(record_id))

    @contextmanager
    def rebuilding(self):
        """Empty the index and yield it to be filled. (The embedded index is briefly empty meanwhile; the
        Elasticsearch backend builds aside and swaps.)"""
        self._write(lambda: [self.db.execute(f"DELETE FROM {t}") for t in ("records", "records_fts", "record_fields",
                                                                            "record_facets")])
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
            counts = {name: self._facet(name, q.tree, where, params) for name in facets}
            count = self.db.execute(f"SELECT count(*) FROM records r WHERE {where}", params).fetchone()[0] \
                if total else None
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1][1], rows[-1][2]) if more and rows else None
        return Page([json.loads(r[0]) for r in rows], nxt, counts, count)

    def _facet(self, name: str, tree, where: str, params: list) -> list[tuple[str, int]]:
        # Counted on record_facets (facet values by start time): a date range is one index range; any other
        # condition narrows it to the matching records.
        lo, hi, only_range = _bounds(tree)
        span, span_params = "", []
        if lo:
            span += " AND started_utc >= ?"
            span_params.append(lo)
        if hi:
            span += " AND started_utc < ?"
            span_params.append(hi)
        if name == "month":
            sql = (f"SELECT substr(r.started_utc, 1, 7) AS v, count(*) FROM records r WHERE {where} "
                   f"GROUP BY v ORDER BY v DESC LIMIT {MONTHS}")
            return [(v, n) for v, n in self.db.execute(sql, params)]
        narrow = "" if only_range else f" AND rec IN (SELECT r.rec FROM records r WHERE {where})"
        sql = (f"SELECT value, count(*) AS n FROM record_facets WHERE field = ?{span}{narrow} "
               f"GROUP BY value ORDER BY n DESC, value LIMIT {FACET_SIZE}")
        return [(v, n) for v, n in self.db.execute(sql, (FACET_FIELD.get(name, name), *span_params,
                                                          *([] if only_range else params)))]

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
            rows = self.db.execute("SELECT r.record_id FROM record_fields f JOIN records r ON r.rec = f.rec "
                                   "WHERE f.field = ? AND f.value = ? ORDER BY r.record_id",
                                   (field_name, value.casefold())).fetchall()
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

# Fields with few distinct values: each value matches many records, so another filter should drive.
_BROAD = frozenset({"channel", "direction", "language", "jurisdiction", "business_line", "product_type", "policy",
                    "part", "source", "tag", "finding", "hold"})
FACETED = tuple(FACET_FIELD.get(name, name) for name in FACETS if name != "month")


def _bounds(tree) -> tuple[str | None, str | None, bool]:
    """(after, before, whether the query is nothing but that range) of a query's top-level date range."""
    if isinstance(tree, All):
        return None, None, True
    if isinstance(tree, Range):
        return tree.after, tree.before, True
    if isinstance(tree, And):
        ranges = [n for n in tree.nodes if isinstance(n, Range)]
        if len(ranges) == 1:
            return ranges[0].after, ranges[0].before, False
    return None, None, False



def _sql(node) -> tuple[str, list]:
    """A WHERE clause over ``records r`` and its parameters."""
    if isinstance(node, All):
        return "1", []
    if isinstance(node, Field):
        if node.prefix:
            return ("r.rec IN (SELECT rec FROM record_fields WHERE field = ? AND value >= ? "
                    "AND value < ?)", [node.field, node.value, node.value + "\U0010ffff"])
        return "r.rec IN (SELECT rec FROM record_fields WHERE field = ? AND value = ?)", \
            [node.field, node.value]
    if isinstance(node, Text):
        # The trigram index serves LIKE for three or more characters; shorter text needs a scan.
        # FTS5 serves LIKE from the trigram index only without an ESCAPE clause, so text holding LIKE's own
        # wildcards (% _) is matched with instr(), a scan, like text under three characters.
        if len(node.text) >= 3 and not any(c in node.text for c in "%_"):
            return "r.rec IN (SELECT rowid FROM records_fts WHERE text LIKE ?)", [f"%{node.text}%"]
        return "r.rec IN (SELECT rowid FROM records_fts WHERE instr(text, ?) > 0)", [node.text]
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
    if isinstance(node, And):
        # One field filter drives (its records are listed); the others are point lookups per candidate
        # (EXISTS on the primary key), not whole lists: channel:chat alone can be a fifth of the archive.
        fields = [n for n in node.nodes if isinstance(n, Field) and not n.prefix]
        driver = next((n for n in fields if n.field not in _BROAD), fields[0] if fields else None)
        joined, params = [], []
        for child in node.nodes:
            if child in fields and child is not driver:
                sql, p = ("EXISTS (SELECT 1 FROM record_fields f WHERE f.field = ? AND f.value = ? AND f.rec = r.rec)",
                          [child.field, child.value])
            else:
                sql, p = _sql(child)
            joined.append(f"({sql})")
            params += p
        return " AND ".join(joined), params
    if isinstance(node, Or):
        joined, params = [], []
        for child in node.nodes:
            sql, p = _sql(child)
            joined.append(f"({sql})")
            params += p
        return " OR ".join(joined), params
    raise TypeError(f"not a query node: {node!r}")
