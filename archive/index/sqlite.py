"""Embedded SQLite index: a derived, rebuildable view of committed records for search.

The object store is the system of record; this index can be deleted and rebuilt from it (``archive
reindex``). Only committed records are ever written here, as search documents
(:mod:`archive.search.document`: masked text, no content bytes). Schema migrations are registered in
``MIGRATIONS``, applied in order inside a transaction on open and recorded in ``schema_migrations``.

Tables: ``records`` (one row per record: start time in UTC, the stored view as JSON), ``record_fields``
(field, value) pairs the query language filters and facets on, and ``records_fts``, an FTS5 trigram
index over the masked, case-folded text (rowid = the record's ``rec``), which serves words and phrases
of three or more characters as phrases of trigrams (shorter ones, such as two-character Chinese names, are scanned). Queries
come parsed (:mod:`archive.search.query`) and are translated to SQL here; pages are cursors over (start
time, record id), so deep pages cost the same as the first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from contextlib import closing
from contextlib import contextmanager
from pathlib import Path

from archive.files import private_file
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
    # Facet counts rolled up by UTC day and month, kept current on every write: a date-range facet sums a
    # month's or a day's counts instead of counting every record in it (a month is ~40,000 records at a
    # million). The month facet is counted here too, under the field 'month'.
    ("0004_facet_counts", """
        CREATE TABLE facet_counts (
            field  TEXT NOT NULL,
            grain  TEXT NOT NULL,
            bucket TEXT NOT NULL,
            value  TEXT NOT NULL,
            n      INTEGER NOT NULL,
            PRIMARY KEY (field, grain, bucket, value)
        ) WITHOUT ROWID;
        INSERT INTO facet_counts
            SELECT field, 'd', substr(started_utc, 1, 10), value, count(*) FROM record_facets GROUP BY 1, 2, 3, 4;
        INSERT INTO facet_counts
            SELECT field, 'm', substr(started_utc, 1, 7), value, count(*) FROM record_facets GROUP BY 1, 2, 3, 4;
        INSERT INTO facet_counts
            SELECT 'month', 'd', substr(started_utc, 1, 10), substr(started_utc, 1, 7), count(*) FROM records
            GROUP BY 1, 2, 3, 4;
        INSERT INTO facet_counts
            SELECT 'month', 'm', substr(started_utc, 1, 7), substr(started_utc, 1, 7), count(*) FROM records
            GROUP BY 1, 2, 3, 4;
    """),
    # How many records hold each trigram (counted when written; not decremented on delete — it only steers
    # which trigrams a text search reads first, see _Compiler.text). Filled from the existing text.
    ("0005_trigram_stats", lambda db: _fill_trigram_stats(db)),
]


class SqliteIndex:
    """Committed records, searchable. One connection per instance, shared by threads under a lock."""

    BATCH = 64

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # it holds message text: 0600, and SQLite gives its -wal and -shm files the database file's mode
        private_file(self.path, "-wal", "-shm")
        # One connection shared by the ingest threads, serialised by a lock (SQLite writes one at a time).
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.RLock()
        self._pending: dict[str, dict] = {}
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")  # the store, not the index, is the system of record
        self._migrate()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
        done = {row[0] for row in self.db.execute("SELECT name FROM schema_migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if callable(sql):
                    sql(self.db)
                for statement in [] if callable(sql) else filter(str.strip, sql.split(";")):
                    self.db.execute(statement)
                self.db.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (name,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection: searches from many threads (the API's) run side by side, as
        SQLite's WAL lets readers do, instead of queueing on the writer's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            db.execute("CREATE TEMP TABLE hits (rec INTEGER PRIMARY KEY)")  # one query's matches (facets)
            self._local.db = db
            with self._lock:
                self._readers.append(db)
        return db

    def describe(self) -> dict:
        """The engine (SQLite and its version) and the schema migration applied last (``archive status``)."""
        with self._lock:
            [schema] = self.db.execute("SELECT max(name) FROM schema_migrations").fetchone()
        return {"engine": "sqlite", "version": sqlite3.sqlite_version, "schema": schema}  # no path: the API shows it

    def close(self) -> None:
        self.flush()
        self.db.close()
        with self._lock:
            for db in self._readers:
                db.close()
            self._readers.clear()

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
        """Write every queued record to the index in one transaction: each table's rows for all of them
        in one statement (a call into SQLite per table, not per record and table)."""
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
            self.db.execute("BEGIN IMMEDIATE")
            try:
                counts: Counter = Counter()
                grams: Counter = Counter()
                ids = list(pending)
                for i in range(0, len(ids), 500):  # records indexed before (a re-ingest, a reindex): replaced
                    chunk = ids[i:i + 500]
                    for row in self.db.execute(f"SELECT rec, started_utc FROM records WHERE record_id IN "
                                               f"({','.join('?' * len(chunk))})", chunk).fetchall():
                        self._remove_rec(*row, counts)
                # new recs: the writer holds the database (BEGIN IMMEDIATE), so nobody else takes these
                (last,) = self.db.execute("SELECT coalesce(max(rec), 0) FROM records").fetchone()
                records, texts, fields_rows, facet_rows = [], [], [], []
                for rec, (rid, view) in enumerate(pending.items(), last + 1):
                    meta = view["metadata"]
                    started = document.started_utc(view)
                    records.append((rec, rid, meta["started_at"], meta["channel"], meta["source"]["system"],
                                    meta["source"]["interaction_id"],
                                    json.dumps(document.stored(view), ensure_ascii=False), started))
                    text = document.text(view)
                    texts.append((rec, text))
                    grams.update(trigrams(text))
                    fields = document.fields(view)
                    fields_rows += [(f, v, rec) for f, vs in fields.items() for v in vs]
                    facets = {(f, v) for f in FACETED for v in fields.get(f, ())}
                    facet_rows += [(f, started, v, rec) for f, v in facets]
                    _count(counts, started, facets, +1)
                insert = self._insert
                insert("INSERT INTO records (rec, record_id, started_at, channel, source_system, interaction_id, "
                       "manifest, started_utc)", records)
                insert("INSERT INTO records_fts (rowid, text)", texts)
                insert("INSERT OR IGNORE INTO record_fields", fields_rows)
                insert("INSERT INTO record_facets", facet_rows)
                self._add_counts(counts)
                insert("INSERT INTO trigram_stats", list(grams.items()), "ON CONFLICT DO UPDATE SET n = n + excluded.n")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                self._pending = {**pending, **self._pending}
                raise

    def _remove(self, record_id: str, counts: Counter) -> None:
        row = self.db.execute("SELECT rec, started_utc FROM records WHERE record_id = ?", (record_id,)).fetchone()
        if row is not None:
            self._remove_rec(*row, counts)

    def _remove_rec(self, rec: int, started: str, counts: Counter) -> None:
        row = (rec,)
        facets = self.db.execute("SELECT field, value FROM record_facets WHERE rec = ?", row).fetchall()
        _count(counts, started, facets, -1)
        self.db.execute("DELETE FROM records_fts WHERE rowid = ?", row)
        self.db.execute("DELETE FROM record_fields WHERE rec = ?", row)
        self.db.execute("DELETE FROM record_facets WHERE rec = ?", row)
        self.db.execute("DELETE FROM records WHERE rec = ?", row)

    def _insert(self, head: str, rows: list[tuple], tail: str = "", chunk: int = 256) -> None:
        """``head VALUES (…), (…), … tail`` for ``rows``, ``chunk`` rows a statement. One statement for many
        rows, not executemany: executemany takes the GIL back between rows, and an index written beside
        the ingest thread would queue for it at every row."""
        if not rows:
            return
        one = f"({', '.join('?' * len(rows[0]))})"
        for i in range(0, len(rows), chunk):
            part = rows[i:i + chunk]
            self.db.execute(f"{head} VALUES {', '.join([one] * len(part))} {tail}", [v for row in part for v in row])

    def _add_counts(self, counts: Counter) -> None:
        self._insert("INSERT INTO facet_counts", [(*key, n) for key, n in counts.items() if n],
                     "ON CONFLICT DO UPDATE SET n = n + excluded.n")
        self.db.executemany("DELETE FROM facet_counts WHERE field = ? AND grain = ? AND bucket = ? AND value = ? "
                            "AND n <= 0", [key for key, n in counts.items() if n < 0])

    def delete(self, record_id: str) -> None:
        """Remove a disposed record."""
        def remove():
            counts: Counter = Counter()
            self._remove(record_id, counts)
            self._add_counts(counts)
        self._write(remove)

    @contextmanager
    def rebuilding(self):
        """Empty the index and yield it to be filled. (The embedded index is briefly empty meanwhile; the
        Elasticsearch backend builds aside and swaps.)"""
        self._write(lambda: [self.db.execute(f"DELETE FROM {t}") for t in ("records", "records_fts", "record_fields",
                                                                            "record_facets", "facet_counts",
                                                                            "trigram_stats")])
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
        newest = q.sort == "newest"
        order, beyond = ("DESC", "<") if newest else ("ASC", ">")
        after = decode_cursor(cursor) if cursor else None
        if self._pending:
            self.flush()
        db = self._reader()
        db.execute("BEGIN")  # one snapshot for the page, the counts and the total
        try:
            compiler = _Compiler(db, db.execute("SELECT max(rec) FROM records").fetchone()[0] or 0)
            where, params = compiler.sql(q.tree)
            listed = bool(facets or total) and not _bounds(q.tree)[2]
            if listed:  # counts need every match: listed once, and the page is taken from the list
                where, params = self._list(db, where, params)
                compiler.walk = False
            recs = self._window(db, compiler, q.tree, order, beyond, after, limit) if compiler.walk else None
            if recs is None:
                page_where, page_params = where, list(params)
                if after:
                    page_where = f"({where}) AND (r.started_utc, r.record_id) {beyond} (?, ?)"
                    page_params += after
                # Text matching many records: walk the start-time index and stop at a page, rather than list
                # every match and sort it (SQLite cannot tell how many will match; the trigram counts can).
                walk = " INDEXED BY records_started" if compiler.walk else ""
                recs = [r[0] for r in db.execute(
                    f"SELECT r.rec FROM records r{walk} WHERE {page_where} "
                    f"ORDER BY r.started_utc {order}, r.record_id {order} LIMIT ?", (*page_params, limit + 1))]
            # The stored documents are read for the page only.
            rows = db.execute(
                f"SELECT manifest, started_utc, record_id FROM records WHERE rec IN ({','.join('?' * len(recs))}) "
                f"ORDER BY started_utc {order}, record_id {order}", recs).fetchall()
            counts, count = self._counts(db, q.tree, where, params, facets, total)
        finally:
            db.execute("COMMIT")
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1][1], rows[-1][2]) if more and rows else None
        return Page([json.loads(r[0]) for r in rows], nxt, counts, count)

    WINDOW_MAX = 5000

    def _window(self, db, compiler: _Compiler, tree, order: str, beyond: str, after, limit: int) -> list[int] | None:
        """A page of a text query that matches a large share of the archive ("refund"): the newest (or
        oldest) entries of the start-time index, each checked for the text, until the page is full —
        a few hundred checks instead of listing every match. None when a bounded window does not fill the
        page (the text is rarer than its trigrams suggest); the query then runs whole."""
        size = compiler.records  # (read once per query, in its snapshot)
        if compiler.estimate * 20 < size:
            return None
        budget = min(self.WINDOW_MAX, max(1000, 4 * (limit + 1) * size // max(compiler.estimate, 1)))
        nodes = tree.nodes if isinstance(tree, And) else (tree,)
        span, span_params = compiler._sql(And(tuple(n for n in nodes if isinstance(n, Range)))) \
            if any(isinstance(n, Range) for n in nodes) else ("1", [])
        if after:
            span += f" AND (r.started_utc, r.record_id) {beyond} (?, ?)"
            span_params = [*span_params, *after]
        texts = [n.text for n in nodes if isinstance(n, Text)]
        window = (f"SELECT r.rec, r.started_utc, r.record_id FROM records r INDEXED BY records_started WHERE {span} "
                  f"ORDER BY r.started_utc {order}, r.record_id {order} LIMIT ?")
        check = " AND ".join(["(SELECT instr(text, ?) FROM records_fts WHERE rowid = r.rec) > 0"] * len(texts))
        recs = [row[0] for row in db.execute(
            f"SELECT r.rec FROM ({window}) AS r WHERE {check} ORDER BY r.started_utc {order}, r.record_id {order} "
            f"LIMIT ?", (*span_params, budget, *texts, limit + 1))]
        if len(recs) > limit:
            return recs
        scanned = db.execute(f"SELECT count(*) FROM ({window})", (*span_params, budget)).fetchone()[0]
        return recs if scanned < budget else None

    @staticmethod
    def _list(db, where: str, params: list) -> tuple[str, list]:
        """Every match into a temporary table; the condition that reads it back."""
        db.execute("DELETE FROM temp.hits")
        db.execute(f"INSERT INTO temp.hits SELECT r.rec FROM records r WHERE {where}", params)
        return "r.rec IN (SELECT rec FROM temp.hits)", []

    def _counts(self, db, tree, where: str, params: list, facets, total: bool):
        """Facet counts and the total over every match. Unless the query is a date range alone (rolled-up
        counts serve it), the matches were ``listed`` in a temporary table every count reads."""
        if not facets and not total:
            return {}, None
        counts = {name: self._facet(db, name, tree) for name in facets}
        count = db.execute(f"SELECT count(*) FROM records r WHERE {where}", params).fetchone()[0] \
            if total else None
        return counts, count

    def _facet(self, db, name: str, tree) -> list[tuple[str, int]]:
        field_name = FACET_FIELD.get(name, name)
        lo, hi, only_range = _bounds(tree)
        order = f"ORDER BY value DESC LIMIT {MONTHS}" if name == "month" else \
            f"ORDER BY n DESC, value LIMIT {FACET_SIZE}"
        if not only_range:
            # Any other condition: count the matching records' facet rows (the matches are listed in
            # temp.hits, see _counts; each one's facet rows are found by record).
            if name == "month":
                sql = ("SELECT substr(r.started_utc, 1, 7) AS value, count(*) AS n FROM temp.hits h "
                       f"CROSS JOIN records r ON r.rec = h.rec GROUP BY value {order}")
                return [(v, n) for v, n in db.execute(sql)]
            sql = ("SELECT f.value, count(*) AS n FROM temp.hits h CROSS JOIN record_facets f INDEXED BY "
                   f"record_facets_rec ON f.rec = h.rec WHERE f.field = ? GROUP BY f.value {order}")
            return [(v, n) for v, n in db.execute(sql, (field_name,))]
        # A date range alone (or everything): whole months and whole days are summed from facet_counts;
        # only the partial days at either end are counted record by record.
        parts, args = [], []
        for kind, start, end in _spans(lo, hi):
            if kind == "raw" and name == "month":
                parts.append("SELECT substr(started_utc, 1, 7) AS value, count(*) AS n FROM records "
                             "WHERE started_utc >= ? AND started_utc < ? GROUP BY value")
                args += [start, end]
            elif kind == "raw":
                parts.append("SELECT value, count(*) AS n FROM record_facets WHERE field = ? AND started_utc >= ? "
                             "AND started_utc < ? GROUP BY value")
                args += [field_name, start, end]
            else:
                bounds = "".join([" AND bucket >= ?" if start else "", " AND bucket < ?" if end else ""])
                parts.append(f"SELECT value, n FROM facet_counts WHERE field = ? AND grain = ?{bounds}")
                args += [field_name, kind, *(b for b in (start, end) if b)]
        if not parts:
            return []
        sql = (f"SELECT value, sum(n) AS n FROM ({' UNION ALL '.join(parts)}) GROUP BY value HAVING n > 0 {order}")
        return [(v, n) for v, n in db.execute(sql, args)]

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

    # --- checking against the store (archive/index/check.py) ---------------------------------------------

    @staticmethod
    def entry_of(view: dict) -> dict:
        """What this index keeps of ``view``, in the shape :meth:`entries` reads it back."""
        meta = view["metadata"]
        fields = document.fields(view)
        return {"record_id": view["record_id"], "started_at": meta["started_at"],
                "started_utc": document.started_utc(view), "channel": meta["channel"],
                "source_system": meta["source"]["system"], "interaction_id": meta["source"]["interaction_id"],
                "stored": json.loads(json.dumps(document.stored(view), ensure_ascii=False)),
                "fields": fields, "text": document.text(view),
                "facets": sorted([f, v] for f in FACETED for v in fields.get(f, ()))}

    def entries(self, chunk: int = 500) -> Iterator[dict]:
        """Every record as the index holds it — its row, its field values, its facets, its text — in
        :meth:`entry_of`'s shape, ``chunk`` records at a time."""
        with self._lock:
            self.flush()
        db = self._reader()
        after = 0
        while True:
            rows = db.execute("SELECT rec, record_id, started_at, started_utc, channel, source_system, "
                              "interaction_id, manifest FROM records WHERE rec > ? ORDER BY rec LIMIT ?",
                              (after, chunk)).fetchall()
            if not rows:
                return
            lo, hi = rows[0][0], rows[-1][0]
            fields: dict[int, dict[str, list[str]]] = {}
            for rec, name, value in db.execute("SELECT rec, field, value FROM record_fields WHERE rec BETWEEN ? "
                                               "AND ? ORDER BY rec, field, value", (lo, hi)):
                fields.setdefault(rec, {}).setdefault(name, []).append(value)
            facets: dict[int, list[list[str]]] = {}
            for rec, name, value in db.execute("SELECT rec, field, value FROM record_facets WHERE rec BETWEEN ? "
                                               "AND ? ORDER BY rec, field, value", (lo, hi)):
                facets.setdefault(rec, []).append([name, value])
            texts = dict(db.execute("SELECT rowid, text FROM records_fts WHERE rowid BETWEEN ? AND ?", (lo, hi)))
            for rec, rid, started_at, started_utc, channel, system, interaction, manifest in rows:
                try:
                    stored = json.loads(manifest)
                except ValueError:
                    stored = None
                yield {"record_id": rid, "started_at": started_at, "started_utc": started_utc, "channel": channel,
                       "source_system": system, "interaction_id": interaction, "stored": stored,
                       "fields": fields.get(rec, {}), "text": texts.get(rec), "facets": sorted(facets.get(rec, []))}
            after = hi


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



def _count(counts: Counter, started: str, facets, sign: int) -> None:
    """Add (or with sign -1, take away) one record's facet values to the day and month roll-ups."""
    day, month = started[:10], started[:7]
    for f, v in (*facets, ("month", month)):
        counts[(f, "d", day, v)] += sign
        counts[(f, "m", month, v)] += sign


_UTC = "%Y-%m-%dT%H:%M:%SZ"


def _spans(lo: str | None, hi: str | None) -> list[tuple[str, str | None, str | None]]:
    """[lo, hi) as spans of facet_counts buckets — ('m', first month, end month), ('d', first day, end day)
    — and ('raw', start, end) time spans for the partial days at either end. None is open."""
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
    lo_t, hi_t = (at(lo) if lo else None), (at(hi) if hi else None)
    if lo_t and hi_t and lo_t >= hi_t:
        return []
    floor_day = lambda t: t.replace(hour=0, minute=0, second=0, microsecond=0)  # noqa: E731
    d0 = lo_t and (lo_t if lo_t == floor_day(lo_t) else floor_day(lo_t) + timedelta(days=1))
    d1 = hi_t and floor_day(hi_t)
    if d0 and d1 and d0 >= d1:
        return [("raw", lo, hi)]
    spans = []
    if lo_t and lo_t != d0:
        spans.append(("raw", lo, d0.strftime(_UTC)))
    if hi_t and hi_t != d1:
        spans.append(("raw", d1.strftime(_UTC), hi))
    m0 = d0 and (d0 if d0.day == 1 else (d0.replace(day=1) + timedelta(days=32)).replace(day=1))
    m1 = d1 and d1.replace(day=1)
    day = lambda t: t and t.strftime("%Y-%m-%d")  # noqa: E731
    month = lambda t: t and t.strftime("%Y-%m")  # noqa: E731
    if m0 and m1 and m0 >= m1:
        return [*spans, ("d", day(d0), day(d1))]
    if d0 and d0 < m0:
        spans.append(("d", day(d0), day(m0)))
    spans.append(("m", month(m0), month(m1)))
    if d1 and m1 < d1:
        spans.append(("d", day(m1), day(d1)))
    return spans


def trigrams(text: str) -> set[str]:
    """The distinct trigrams of ``text``, as the FTS5 trigram tokenizer cuts them (by character)."""
    return {text[i:i + 3] for i in range(len(text) - 2)}


def _fill_trigram_stats(db) -> None:
    db.execute("CREATE TABLE trigram_stats (gram TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
    grams: Counter = Counter()
    for (text,) in db.execute("SELECT text FROM records_fts"):
        grams.update(trigrams(text))
    db.executemany("INSERT INTO trigram_stats VALUES (?, ?)", grams.items())


class _Compiler:
    """A query tree → a WHERE clause over ``records r`` and its parameters.

    Text of three or more characters is found through the trigram index. Its two rarest trigrams (by
    ``trigram_stats``) select candidates — FTS5 reads only their short posting lists, not those of common
    trigrams ("the", "ent") — and each candidate is checked for the whole text in its stored text. Text
    of at most four characters is the phrase of its trigrams, exact on its own. ``walk`` is set when the
    query is text alone (with a date range, perhaps) that matches many records."""

    WALK_MIN = 2000  # matches (or a twentieth of the archive, if less) from which a text query walks
    GRAMS = 2

    def __init__(self, db, records: int = 0) -> None:
        self.db = db
        self.records = records  # about how many the index holds
        self.walk = False
        self.estimate = 0  # at most this many records hold the rarest trigram of the query's text
        self._ranked: dict[str, list[tuple[str, int]]] = {}

    def sql(self, node) -> tuple[str, list]:
        sql, params = self._sql(node)
        texts = [node] if isinstance(node, Text) else \
            [n for n in node.nodes if isinstance(n, Text)] if isinstance(node, And) and \
            all(isinstance(n, (Text, Range)) for n in node.nodes) else []
        self.estimate = min((self._estimate(n.text) for n in texts), default=0)
        self.walk = bool(texts) and self.estimate >= min(self.WALK_MIN, max(1, self.records // 20))
        return sql, params

    def _stats(self, text: str) -> list[tuple[str, int]]:
        """The text's trigrams, rarest first, with how many records hold each."""
        if text in self._ranked:
            return self._ranked[text]
        grams = sorted(trigrams(text))
        known = dict(self.db.execute(f"SELECT gram, n FROM trigram_stats WHERE gram IN ({','.join('?' * len(grams))})",
                                     grams))
        ranked = self._ranked[text] = sorted(((g, known.get(g, 0)) for g in grams), key=lambda gn: (gn[1], gn[0]))
        return ranked

    def _estimate(self, text: str) -> int:
        return self._stats(text)[0][1] if len(text) >= 3 else 0

    def _text(self, node: Text) -> tuple[str, list]:
        if len(node.text) < 3:  # no trigram: a scan (a two-character Chinese name)
            return "r.rec IN (SELECT rowid FROM records_fts WHERE instr(text, ?) > 0)", [node.text]
        ranked = self._stats(node.text)
        quote = lambda g: '"' + g.replace('"', '""') + '"'  # noqa: E731
        if len(ranked) <= self.GRAMS:
            return "r.rec IN (SELECT rowid FROM records_fts WHERE records_fts MATCH ?)", [quote(node.text)]
        rare = " AND ".join(quote(g) for g, _ in ranked[:self.GRAMS])
        return ("r.rec IN (SELECT rowid FROM records_fts WHERE records_fts MATCH ?) "
                "AND (SELECT instr(text, ?) FROM records_fts WHERE rowid = r.rec) > 0", [rare, node.text])

    def _sql(self, node) -> tuple[str, list]:
        if isinstance(node, All):
            return "1", []
        if isinstance(node, Field):
            if node.prefix:
                return ("r.rec IN (SELECT rec FROM record_fields WHERE field = ? AND value >= ? "
                        "AND value < ?)", [node.field, node.value, node.value + "\U0010ffff"])
            return "r.rec IN (SELECT rec FROM record_fields WHERE field = ? AND value = ?)", \
                [node.field, node.value]
        if isinstance(node, Text):
            return self._text(node)
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
            inner, params = self._sql(node.node)
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
                    sql, p = self._sql(child)
                joined.append(f"({sql})")
                params += p
            return " AND ".join(joined), params
        if isinstance(node, Or):
            joined, params = [], []
            for child in node.nodes:
                sql, p = self._sql(child)
                joined.append(f"({sql})")
                params += p
            return " OR ".join(joined), params
        raise TypeError(f"not a query node: {node!r}")
