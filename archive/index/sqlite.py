"""Embedded SQLite index: a derived, rebuildable view of committed records for ``show`` and ``search``.

The object store is the system of record; this index can be deleted and rebuilt from the manifests.
Only committed records (manifest sealed and verified) are ever written here. Schema migrations are
registered in ``MIGRATIONS``, applied in order inside a transaction on open and recorded in
``schema_migrations``.

Search here is deliberately small — FTS5 over participants, identifiers and message text, newest first —
until the search issue brings the query language, facets and the Elasticsearch backend.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

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

    def upsert(self, manifest: dict) -> None:
        """Index a committed record (idempotent). Writes are batched — one transaction per ``BATCH``
        records — and reach the index at the latest on :meth:`flush`; the store is the system of record,
        so a crash loses only index entries that re-ingesting or reindexing restores."""
        with self._lock:
            self._pending[manifest["record_id"]] = manifest
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
                for rid, manifest in pending.items():
                    meta = manifest["metadata"]
                    self.db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?)",
                                    (rid, meta["started_at"], meta["channel"], meta["source"]["system"],
                                     meta["source"]["interaction_id"], json.dumps(manifest, ensure_ascii=False)))
                    self.db.execute("DELETE FROM records_text WHERE record_id = ?", (rid,))
                    self.db.execute("INSERT INTO records_text VALUES (?, ?)", (rid, searchable_text(manifest)))
                    self.db.execute("DELETE FROM record_keys WHERE record_id = ?", (rid,))
                    self.db.executemany("INSERT OR IGNORE INTO record_keys VALUES (?, ?, ?)",
                                        [(rid, kind, value) for kind, value in record_keys(meta)])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                self._pending = {**pending, **self._pending}
                raise

    def get(self, record_id: str) -> dict | None:
        with self._lock:
            self.flush()
            row = self.db.execute("SELECT manifest FROM records WHERE record_id = ?", (record_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def search(self, query: str, limit: int = 50) -> list[dict]:
        """Records whose text contains every word of ``query`` (case-insensitive, any language),
        newest first. An empty query lists the newest records."""
        self.flush()
        words = [w for w in query.split() if w]
        if not words:
            rows = self.db.execute("SELECT manifest FROM records ORDER BY started_at DESC LIMIT ?", (limit,))
        else:
            # The trigram index serves words of three or more characters; shorter ones (two-character
            # Chinese names such as 王芳) need a scan.
            clauses, params = [], []
            for word in words:
                if len(word) >= 3:
                    clauses.append("text LIKE ? ESCAPE '\\'")
                    params.append("%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
                else:
                    clauses.append("instr(lower(text), lower(?)) > 0")
                    params.append(word)
            sql = ("SELECT r.manifest FROM records r WHERE " +
                   " AND ".join(f"r.record_id IN (SELECT record_id FROM records_text WHERE {c})" for c in clauses) +
                   " ORDER BY r.started_at DESC LIMIT ?")
            rows = self.db.execute(sql, (*params, limit))
        return [json.loads(r[0]) for r in rows]

    def find(self, kind: str, value: str) -> list[str]:
        """Records naming ``value`` as their ``kind``: account, contract or customer."""
        with self._lock:
            self.flush()
            rows = self.db.execute("SELECT record_id FROM record_keys WHERE kind = ? AND value = ? ORDER BY record_id",
                                   (kind, value)).fetchall()
        return [r[0] for r in rows]

    def ids(self, query: str, limit: int = 100_000) -> list[str]:
        """Record ids matching ``query`` (as :meth:`search`)."""
        return [m["record_id"] for m in self.search(query, limit=limit)]

    def delete(self, record_id: str) -> None:
        """Remove a disposed record."""
        with self._lock:
            self.flush()
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("records", "records_text", "record_keys"):
                    self.db.execute(f"DELETE FROM {table} WHERE record_id = ?", (record_id,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def count(self) -> int:
        with self._lock:
            self.flush()
            return self.db.execute("SELECT count(*) FROM records").fetchone()[0]

    def record_ids(self) -> Iterator[str]:
        with closing(self.db.execute("SELECT record_id FROM records ORDER BY record_id")) as cur:
            for row in cur:
                yield row[0]


def record_keys(meta: dict) -> list[tuple[str, str]]:
    """(kind, value) pairs events select records by."""
    keys = [("contract", meta["contract_id"])] if meta.get("contract_id") else []
    for p in meta.get("participants", []):
        if p.get("role") == "customer":
            keys += [(k, p[v]) for k, v in (("account", "account"), ("customer", "id"), ("phone", "phone")) if p.get(v)]
    return keys


def searchable_text(manifest: dict) -> str:
    """Identifiers, participants, subject and message text of a record, as one string."""
    meta = manifest["metadata"]
    bits = [manifest["record_id"], meta["source"]["system"], meta["source"]["interaction_id"], meta["channel"],
            *(str(meta[k]) for k in ("business_line", "product", "product_type", "jurisdiction", "subject",
                                     "contract_id") if meta.get(k)),
            *meta.get("tags", [])]
    for p in meta.get("participants", []):
        bits += [str(p[k]) for k in ("role", "id", "name", "phone", "email", "account") if p.get(k)]
    for m in meta.get("messages", []):
        if m.get("text"):
            bits.append(m["text"])
    for part in manifest.get("parts", []):
        bits += [part["name"], part.get("filename") or ""]
    retention = manifest.get("retention") or {}
    bits += [p["id"] for p in retention.get("policies", [])]
    bits += [f["code"] for f in manifest.get("findings", [])]
    bits += manifest.get("holds", [])
    return "\n".join(b for b in bits if b)
