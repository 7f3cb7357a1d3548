"""Elasticsearch index: the same documents and the same query language as the embedded SQLite index, for
archives that outgrow one machine. Through the official ``elasticsearch`` client.

* A versioned **index template** (``<alias>-template``, :data:`TEMPLATE_VERSION`) maps every physical
  index ``<alias>-v<version>-<created>``; searches and writes go through the **alias** ``<alias>``. A
  rebuild fills a new physical index and swaps the alias in one ``_aliases`` call, so search never sees
  an empty or half-built index.
* Documents: ``record_id`` and ``started_utc`` (keywords; ISO UTC strings sort and compare like the
  SQLite index's), ``month``, one keyword field ``f_<field>`` per query field (dots become ``__``), the
  masked, case-folded ``text`` as a ``wildcard`` field (substring matching, as the SQLite trigram index
  does, in any language) and the stored view (``record``, not indexed).
* Writes go through ``helpers.bulk``; pages use ``search_after`` on (started_utc, record_id), never
  ``from``, so deep pages never hit ``max_result_window``. Facets are ``terms`` aggregations ordered as
  the SQLite backend orders them. No scripts and no point-in-time are used.

``media_type`` chooses the wire format: ``compat`` (the client's default
``application/vnd.elasticsearch+json; compatible-with=N``, what Elasticsearch 8/9 expect) or ``json``
(plain ``application/json``: OpenSearch and OpenSearch-API-compatible servers, which answer the compat
media type with 406). Setting: ``ARCHIVE_ES_MEDIA_TYPE``.
"""

from __future__ import annotations

import json

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from archive.errors import StorageError
from archive.index.base import (FACET_FIELD, FACET_SIZE, FIND_FIELD, MONTHS, Page, check_facets, decode_cursor,
                                encode_cursor)
from archive.search import document
from archive.search.query import FIELDS, All, And, Field, Not, Or, Query, Range, Text, parse

TEMPLATE_VERSION = 1
_VND = re.compile(r"application/vnd\.elasticsearch\+(json|x-ndjson); compatible-with=\d+")
_CHUNK = 1000  # hits per request when a page or an id scan is larger


class IndexUnavailable(StorageError):
    code = "index_unavailable"
    http_status = 503
    transient = True


def _client(url: str, media_type: str, api_key: str | None, timeout: float):
    from elastic_transport import Transport
    from elasticsearch import Elasticsearch

    class PlainJSONTransport(Transport):
        """Sends application/json instead of the client's compatibility media type."""

        def perform_request(self, method, target, *, headers=None, **kw):
            if headers:
                headers = headers.copy()
                for name in ("accept", "content-type"):
                    if name in headers:
                        headers[name] = _VND.sub(r"application/\1", headers[name])
            return super().perform_request(method, target, headers=headers, **kw)

    options = {"request_timeout": timeout, "api_key": api_key} if api_key else {"request_timeout": timeout}
    if media_type == "json":
        options["transport_class"] = PlainJSONTransport
    return Elasticsearch(url, **options)


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
    """The index on Elasticsearch (or an OpenSearch-API-compatible cluster)."""

    BATCH = 500

    def __init__(self, url: str, *, alias: str = "archive-records", media_type: str = "compat",
                 api_key: str | None = None, timeout: float = 30.0) -> None:
        self.alias = alias
        self.es = _client(url, media_type, api_key, timeout)
        self._lock = threading.RLock()
        self._pending: dict[str, dict] = {}
        self._target = alias  # where upserts go: the alias, or a new index while rebuilding
        self._ensure()

    # --- setup -------------------------------------------------------------------------------------------

    def _call(self, what: str, fn, *args, **kw):
        from elasticsearch import ApiError, TransportError

        try:
            return fn(*args, **kw)
        except TransportError as e:
            raise IndexUnavailable(f"Elasticsearch at {self._where()}: {what} failed: {e}") from e
        except ApiError as e:
            raise StorageError(f"Elasticsearch {what} refused ({e.meta.status}): {e.message}",
                               status=e.meta.status) from e

    def _where(self) -> str:
        try:
            return ", ".join(str(n.base_url) for n in self.es.transport.node_pool.all())
        except Exception:  # noqa: BLE001 - only for the message
            return "(configured URL)"

    def _ensure(self) -> None:
        """Install the template and, when the alias is missing, a first physical index behind it."""
        self._call("template install", self.es.indices.put_index_template, name=f"{self.alias}-template",
                   index_patterns=[f"{self.alias}-v*"], version=TEMPLATE_VERSION,
                   template={"settings": {"number_of_shards": 1}, "mappings": _mappings()})
        if not self._call("alias check", self.es.indices.exists_alias, name=self.alias):
            index = self._new_index()
            self._call("alias create", self.es.indices.update_aliases,
                       actions=[{"add": {"index": index, "alias": self.alias}}])

    def _new_index(self) -> str:
        name = f"{self.alias}-v{TEMPLATE_VERSION}-{datetime.now(UTC):%Y%m%d%H%M%S%f}"
        self._call("index create", self.es.indices.create, index=name)
        return name

    def close(self) -> None:
        self.flush()
        self.es.close()

    # --- writing -------------------------------------------------------------------------------------------

    def upsert(self, view: dict) -> None:
        with self._lock:
            self._pending[view["record_id"]] = view
            if len(self._pending) >= self.BATCH:
                self.flush()

    def flush(self) -> None:
        """Bulk-write every queued record, then refresh so searches see them."""
        from elasticsearch import helpers

        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
            actions = [{"_op_type": "index", "_index": self._target, "_id": rid, "_source": self._doc(view)}
                       for rid, view in pending.items()]
            try:
                self._call("bulk index", helpers.bulk, self.es, actions, raise_on_error=True)
                self._call("refresh", self.es.indices.refresh, index=self._target)
            except BaseException:
                self._pending = {**pending, **self._pending}
                raise

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
        self._call("delete", self.es.options(ignore_status=404).delete, index=self.alias, id=record_id,
                   refresh=True)

    @contextmanager
    def rebuilding(self):
        """A new physical index to fill; when the block ends the alias moves to it in one call and the old
        indexes are dropped. Search keeps answering from the old index until then."""
        self.flush()
        fresh = self._new_index()
        old = list(self._call("alias lookup", self.es.indices.get_alias, name=self.alias).body)
        with self._lock:
            self._target = fresh
        try:
            yield self
            self.flush()
        except BaseException:
            with self._lock:
                self._target = self.alias
                self._pending.clear()
            self._call("index drop", self.es.options(ignore_status=404).indices.delete, index=fresh)
            raise
        actions = [{"add": {"index": fresh, "alias": self.alias}}] + \
                  [{"remove": {"index": name, "alias": self.alias}} for name in old]
        self._call("alias swap", self.es.indices.update_aliases, actions=actions)
        with self._lock:
            self._target = self.alias
        for name in old:
            self._call("index drop", self.es.options(ignore_status=404).indices.delete, index=name)

    # --- reading -------------------------------------------------------------------------------------------

    def get(self, record_id: str) -> dict | None:
        self.flush()
        resp = self._call("get", self.es.options(ignore_status=404).get, index=self.alias, id=record_id)
        return resp["_source"]["record"] if resp.get("found") else None

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
            resp = self._call("search", self.es.search, index=self.alias, query=body, sort=sort, size=size,
                              search_after=after, track_total_hits=bool(total and first),
                              aggs=aggs if (aggs and first) else None, source=["record"])
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
        return self._call("count", self.es.count, index=self.alias)["count"]

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
            hits = self._call("scan", self.es.search, index=self.alias, query={"match_all": {}},
                              sort=[{"record_id": "asc"}], size=_CHUNK, search_after=after)["hits"]["hits"]
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
            hits = self._call("scan", self.es.search, index=self.alias, query=query, sort=[{"record_id": "asc"}],
                              size=_CHUNK, search_after=after, source=False)["hits"]["hits"]
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

