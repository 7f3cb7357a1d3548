"""The index on a search engine — Elasticsearch 8 or 9, or OpenSearch 2.15+ and 3 — with the same
documents and the same query language as the embedded SQLite index, for archives that outgrow one
machine. Each engine through its own official client (archive/index/engines.py: which engine answers,
the supported matrix, the media types); the requests are the same REST calls on both.

* A versioned **index template** (``<alias>-template``, :data:`TEMPLATE_VERSION`) maps every physical
  index ``<alias>-v<version>-<created>``; searches and writes go through the **alias** ``<alias>``. A
  rebuild fills a new physical index and swaps the alias in one ``_aliases`` call, so search never sees
  an empty or half-built index; while it is filled its refresh is off (``index.refresh_interval: -1``)
  and it is restored and refreshed once before the swap.
* Documents: ``record_id`` and ``started_utc`` (keywords; ISO UTC strings sort and compare like the
  SQLite index's), ``month``, one keyword field ``f_<field>`` per query field (dots become ``__``), the
  masked, case-folded ``text`` as a ``wildcard`` field (substring matching, as the SQLite trigram index
  does, in any language) and the stored view (``record``, not indexed).
* Writes are serialised once, at upsert, and sent in ``_bulk`` requests sized by bytes, with failed items
  retried alone (archive/index/bulk.py); a batch that fills up is written by a thread of its own without
  a refresh while the next fills (one request in flight), and :meth:`ElasticIndex.flush` writes the rest
  and refreshes once. Pages use ``search_after`` on (started_utc, record_id), never
  ``from``, so deep pages never hit ``max_result_window``. Facets are ``terms`` aggregations ordered as
  the SQLite backend orders them. No scripts and no point-in-time are used.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import quote

from archive.errors import StorageError
from archive.index.base import (FACET_FIELD, FACET_SIZE, FIND_FIELD, MONTHS, Page, check_facets, decode_cursor,
                                encode_cursor)
from archive.index.bulk import BulkWriter, action
from archive.index.engines import EngineClient, IndexUnavailable, connect  # noqa: F401 - IndexUnavailable re-exported
from archive.search import document
from archive.search.query import FIELDS, All, And, Field, Not, Or, Query, Range, Text, parse

TEMPLATE_VERSION = 1
_CHUNK = 1000  # hits per request when a page or an id scan is larger


def _f(field_name: str) -> str:
    return "f_" + field_name.replace(".", "__")


def _mappings() -> dict:
    return {
        "dynamic": "strict",
        "_meta": {"archive_template_version": TEMPLATE_VERSION},
        "properties": {
            "record_id": {"type": "keyword"},
            "started_utc": {"type": "keyword"},
            "month": {"type": "keyword"},
            "text": {"type": "wildcard"},
            "record": {"type": "object", "enabled": False},
            **{_f(name): {"type": "keyword"} for name in sorted(set(FIELDS.values()))},
        },
    }


class ElasticIndex:
    """The index on Elasticsearch or OpenSearch; ``engine`` is ``auto`` (what answers at ``url``),
    ``elasticsearch`` or ``opensearch`` (refused when something else answers)."""

    def __init__(self, url: str, *, alias: str = "archive-records", engine: str = "auto",
                 api_key: str | None = None, username: str | None = None, password: str | None = None,
                 timeout: float = 30.0, client: EngineClient | None = None) -> None:
        self.alias = alias
        self.client = client or connect(url, wanted=engine, api_key=api_key, username=username, password=password,
                                        timeout=timeout)
        self.engine = self.client.engine
        self._lock = threading.RLock()
        self._pending: dict[str, bytes] = {}  # record id → its bulk action, serialised
        self._pending_bytes = 0
        self._unrefreshed = False
        self._target = alias  # where upserts go: the alias, or a new index while rebuilding
        self.writer = BulkWriter(what=f"{self.engine.title} bulk index")
        self._writer_thread: ThreadPoolExecutor | None = None
        self._in_flight: tuple[Future, dict[str, bytes]] | None = None
        self._ensure()

    # --- setup -------------------------------------------------------------------------------------------

    def _call(self, what: str, method: str, path: str, **kw):
        return self.client.request(what, method, path, **kw)

    def _ensure(self) -> None:
        """Install the template and, when the alias is missing, a first physical index behind it."""
        self._call("template install", "PUT", f"/_index_template/{self.alias}-template", body={
            "index_patterns": [f"{self.alias}-v*"], "version": TEMPLATE_VERSION,
            "template": {"settings": {"number_of_shards": 1}, "mappings": _mappings()}})
        if not self._call("alias check", "HEAD", f"/_alias/{self.alias}"):
            # The first index has one name and is made with its alias in one request: workers starting
            # together make one index between them. (Each making its own and adding it left the alias over
            # several indexes with no write index: every bulk write was refused.)
            first = f"{self.alias}-v{TEMPLATE_VERSION}-{0:020d}"
            resp = self._call("index create", "PUT", f"/{first}", body={"aliases": {self.alias: {}}}, ok=(400,))
            error = resp.get("error") if isinstance(resp, dict) else None
            if error is not None and not (isinstance(error, dict)
                                          and error.get("type") == "resource_already_exists_exception"):
                raise self.client._failed("index create", 400, resp, RuntimeError(str(error)))

    def _new_index(self) -> str:
        name = f"{self.alias}-v{TEMPLATE_VERSION}-{datetime.now(UTC):%Y%m%d%H%M%S%f}"
        self._call("index create", "PUT", f"/{name}")
        return name

    def _behind_alias(self) -> list[str]:
        return sorted(self._call("alias lookup", "GET", f"/_alias/{self.alias}"))

    def describe(self) -> dict:
        """The engine, its version, the client and media type, the installed template's version, and the
        physical index behind the alias with the template version it was made from (``archive status``)."""
        templates = self._call("template lookup", "GET", f"/_index_template/{self.alias}-template")
        installed = [t["index_template"].get("version") for t in templates.get("index_templates", [])]
        indexes = self._behind_alias()
        mappings = self._call("mapping lookup", "GET", f"/{self.alias}/_mapping")
        made_from = sorted({(m.get("mappings", {}).get("_meta") or {}).get("archive_template_version")
                            for m in mappings.values()}, key=str)
        return {"engine": self.engine.name, "version": self.engine.version, "client": self.client.client.title,
                "media_type": self.client.media_type, "template_version": installed[0] if installed else None,
                "alias": self.alias, "indexes": indexes, "index_template_versions": made_from}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._writer_thread is not None:
                self._writer_thread.shutdown()
            self.client.close()

    # --- writing -------------------------------------------------------------------------------------------

    def upsert(self, view: dict) -> None:
        """Queue a record (serialised now); when the queue would pass a batch's size, the batch goes out on
        the writer thread while the next one fills. An error of the batch before is raised here."""
        rid = view["record_id"]
        line = action(rid, json.dumps(self._doc(view), ensure_ascii=False, separators=(",", ":")).encode())
        with self._lock:
            old = self._pending.pop(rid, None)
            if old:
                self._pending_bytes -= len(old)
            try:
                if self._pending and self._pending_bytes + len(line) > self.writer.max_bytes:
                    self._send_behind()
            finally:  # queued even when the batch before failed: that error is about other records
                self._pending[rid] = line
                self._pending_bytes += len(line)

    def _bulk_sender(self, target: str):
        return lambda body: self._call("bulk index", "POST", f"/{target}/_bulk", body=body, ndjson=True)

    def _send_behind(self) -> None:
        """Hand the queue, a full batch, to the writer thread (the lock held), once the batch before it is
        done: one bulk request in flight while the next batch is built, none left unaccounted for."""
        self._collect()
        batch, self._pending, self._pending_bytes = self._pending, {}, 0
        if self._writer_thread is None:
            self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix=f"index-bulk-{self.alias}")
        future = self._writer_thread.submit(self.writer.write, batch, self._bulk_sender(self._target))
        self._in_flight = (future, batch)

    def _collect(self) -> None:
        """Wait for the batch in flight (the lock held); what it could not write is queued again (behind
        anything newer for the same record) and its error raised."""
        if self._in_flight is None:
            return
        (future, batch), self._in_flight = self._in_flight, None
        self._unrefreshed = True
        try:
            future.result()
        except StorageError as e:
            self._requeue(getattr(e, "unsent", batch))
            raise
        except BaseException:
            self._requeue(batch)
            raise

    def _requeue(self, unsent: dict[str, bytes]) -> None:
        self._pending = {**unsent, **self._pending}
        self._pending_bytes = sum(map(len, self._pending.values()))

    def flush(self) -> None:
        """Write every queued record, then refresh so searches see them (not while rebuilding: the new
        index is refreshed once, before the alias moves to it)."""
        with self._lock:
            self._collect()
            if self._pending:
                batch, self._pending, self._pending_bytes = self._pending, {}, 0
                self._unrefreshed = True
                try:
                    self.writer.write(batch, self._bulk_sender(self._target))
                except StorageError as e:
                    self._requeue(getattr(e, "unsent", {}))
                    raise
            if self._unrefreshed and self._target == self.alias:
                self._call("refresh", "POST", f"/{self.alias}/_refresh")
                self._unrefreshed = False

    @staticmethod
    def _doc(view: dict) -> dict:
        started = document.started_utc(view)
        doc = {"record_id": view["record_id"], "started_utc": started, "month": started[:7],
               "text": document.text(view), "record": document.stored(view)}
        for name, values in document.fields(view).items():
            doc[_f(name)] = values
        return doc

    def delete(self, record_id: str) -> None:
        self.flush()
        rid = quote(record_id, safe="")
        self._call("delete", "DELETE", f"/{self.alias}/_doc/{rid}", params={"refresh": "true"}, ok=(404,))
        if self._target != self.alias:  # being rebuilt: the new index may hold it already
            self._call("delete", "DELETE", f"/{self._target}/_doc/{rid}", ok=(404,))

    def _refresh_interval(self, index: str, value) -> None:
        self._call("settings update", "PUT", f"/{index}/_settings", body={"index": {"refresh_interval": value}})

    @contextmanager
    def rebuilding(self):
        """A new physical index to fill, with refresh off; when the block ends its refresh interval is
        restored, it is refreshed, the alias moves to it in one call and the old indexes are dropped.
        Search keeps answering from the old index until then."""
        self.flush()
        fresh = self._new_index()
        old = self._behind_alias()
        settings = self._call("settings lookup", "GET", f"/{fresh}/_settings", params={"flat_settings": "true"})
        before = settings.get(fresh, {}).get("settings", {}).get("index.refresh_interval")  # None: the default
        self._refresh_interval(fresh, "-1")
        with self._lock:
            self._target = fresh
        try:
            yield self
            self.flush()
            self._refresh_interval(fresh, before)
            self._call("refresh", "POST", f"/{fresh}/_refresh")
            actions = [{"add": {"index": fresh, "alias": self.alias}}] + \
                      [{"remove": {"index": name, "alias": self.alias}} for name in old]
            self._call("alias swap", "POST", "/_aliases", body={"actions": actions})
        except BaseException:
            with self._lock:  # what was queued for the new index goes to the one searched instead
                self._target = self.alias
            with contextlib.suppress(StorageError):
                self._call("index drop", "DELETE", f"/{fresh}", ok=(404,))
            raise
        with self._lock:
            self._target = self.alias
            self._unrefreshed = False
        for name in old:
            self._call("index drop", "DELETE", f"/{name}", ok=(404,))

    # --- reading -------------------------------------------------------------------------------------------

    def get(self, record_id: str) -> dict | None:
        self.flush()
        resp = self._call("get", "GET", f"/{self.alias}/_doc/{quote(record_id, safe='')}", ok=(404,))
        return resp["_source"]["record"] if resp.get("found") else None

    def _search(self, what: str, body: dict) -> dict:
        return self._call(what, "POST", f"/{self.alias}/_search", body=body)

    def query(self, query: str | Query, *, limit: int = 50, cursor: str | None = None,
              facets: tuple[str, ...] = (), total: bool = False) -> Page:
        q = parse(query) if isinstance(query, str) else query
        check_facets(facets)
        self.flush()
        body = _dsl(q.tree)
        order = "desc" if q.sort == "newest" else "asc"
        sort = [{"started_utc": order}, {"record_id": order}]
        after = list(decode_cursor(cursor)) if cursor else None
        aggs = {name: _agg(name) for name in facets}
        records: list[dict] = []
        last = None
        counted = None
        facet_counts: dict = {}
        first = True
        while len(records) < limit + 1:
            size = min(_CHUNK, limit + 1 - len(records))
            request = {"query": body, "sort": sort, "size": size, "track_total_hits": bool(total and first),
                       "_source": ["record"]}
            if after is not None:
                request["search_after"] = after
            if aggs and first:
                request["aggs"] = aggs
            resp = self._search("search", request)
            if first:
                counted = resp["hits"]["total"]["value"] if total else None
                facet_counts = {name: _buckets(resp["aggregations"][name]) for name in facets}
                first = False
            hits = resp["hits"]["hits"]
            for hit in hits:
                records.append(hit["_source"]["record"])
                last = hit["sort"]
            if len(hits) < size:
                break
            after = last
        more = len(records) > limit
        records = records[:limit]
        nxt = None
        if more and records:
            nxt = encode_cursor(document.started_utc(records[-1]), records[-1]["record_id"])
        return Page(records, nxt, facet_counts, counted)

    def search(self, query: str, limit: int = 50) -> list[dict]:
        return self.query(query, limit=limit).records

    def ids(self, query: str, limit: int = 100_000) -> list[str]:
        return [m["record_id"] for m in self.search(query, limit=limit)]

    def timeline(self, field_name: str, value: str) -> list[dict]:
        return self.query(Query(Field(field_name, value.casefold()), sort="oldest"), limit=1_000_000).records

    def find(self, kind: str, value: str) -> list[str]:
        return sorted(self._scan({"term": {_f(FIND_FIELD[kind]): value.casefold()}}))

    def count(self) -> int:
        self.flush()
        return self._call("count", "GET", f"/{self.alias}/_count")["count"]

    def record_ids(self) -> Iterator[str]:
        yield from sorted(self._scan({"match_all": {}}))

    # --- checking against the store (archive/index/check.py) ---------------------------------------------

    @classmethod
    def entry_of(cls, view: dict) -> dict:
        """What this index keeps of ``view`` (its document), in the shape :meth:`entries` reads it back."""
        return json.loads(json.dumps(cls._doc(view), ensure_ascii=False))

    def entries(self) -> Iterator[dict]:
        """Every document as the index holds it, paging with search_after."""
        self.flush()
        after = None
        while True:
            request = {"query": {"match_all": {}}, "sort": [{"record_id": "asc"}], "size": _CHUNK}
            if after is not None:
                request["search_after"] = after
            hits = self._search("scan", request)["hits"]["hits"]
            for hit in hits:
                yield {"record_id": hit["_id"], **hit["_source"]}
            if len(hits) < _CHUNK:
                return
            after = hits[-1]["sort"]

    def _scan(self, query: dict) -> list[str]:
        """Every matching record id, paging with search_after."""
        self.flush()
        out, after = [], None
        while True:
            request = {"query": query, "sort": [{"record_id": "asc"}], "size": _CHUNK, "_source": False}
            if after is not None:
                request["search_after"] = after
            hits = self._search("scan", request)["hits"]["hits"]
            out += [h["_id"] for h in hits]
            if len(hits) < _CHUNK:
                return out
            after = hits[-1]["sort"]


# --- query tree → query DSL ---------------------------------------------------------------------------------


def _wildcard_escape(text: str) -> str:
    return re.sub(r"([*?\\])", r"\\\1", text)


def _dsl(node) -> dict:
    if isinstance(node, All):
        return {"match_all": {}}
    if isinstance(node, Field):
        if node.prefix:
            return {"prefix": {_f(node.field): node.value}}
        return {"term": {_f(node.field): node.value}}
    if isinstance(node, Text):
        return {"wildcard": {"text": {"value": f"*{_wildcard_escape(node.text)}*"}}}
    if isinstance(node, Range):
        bounds = {}
        if node.after:
            bounds["gte"] = node.after
        if node.before:
            bounds["lt"] = node.before
        return {"range": {"started_utc": bounds}} if bounds else {"match_all": {}}
    if isinstance(node, Not):
        return {"bool": {"must_not": [_dsl(node.node)]}}
    if isinstance(node, And):
        return {"bool": {"filter": [_dsl(n) for n in node.nodes]}}
    if isinstance(node, Or):
        return {"bool": {"should": [_dsl(n) for n in node.nodes], "minimum_should_match": 1}}
    raise TypeError(f"not a query node: {node!r}")


def _agg(name: str) -> dict:
    if name == "month":
        return {"terms": {"field": "month", "size": MONTHS, "order": {"_key": "desc"}}}
    return {"terms": {"field": _f(FACET_FIELD.get(name, name)), "size": FACET_SIZE,
                      "order": [{"_count": "desc"}, {"_key": "asc"}]}}


def _buckets(agg: dict) -> list[tuple[str, int]]:
    return [(b["key"], b["doc_count"]) for b in agg["buckets"]]

