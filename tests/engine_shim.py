"""A strict front door for osmem-server that answers as one real search engine does (test code).

osmem-server (the in-memory stand-in the ``es`` tests run against) is lenient where the real engines are
not: it sends ``X-Elastic-Product: Elasticsearch`` whatever it claims to be, answers ``GET /`` as
OpenSearch 3.8, and refuses the media type Elasticsearch clients send. This shim sits in front of it as a
separate process and enforces, per profile, what each engine documents, then forwards the request to
osmem in plain JSON:

* **Elasticsearch 8 / 9** (``elasticsearch-8``, ``elasticsearch-9``): ``Accept`` and ``Content-Type``
  checked by the rules of the server's ``RestCompatibleVersionHelper.getCompatibleVersion`` — a
  ``compatible-with`` of the server's major or the one before, the same on both headers when a body is
  sent, both versioned or neither — and a refusal answered as ``RestRequest.MediaTypeHeaderException``
  is: ``400``, ``media_type_header_exception`` "Invalid media-type value on headers [Accept,
  Content-Type]" caused by a ``status_exception`` such as "Accept version must be either version 8 or 7,
  but found 9. Accept=application/vnd.elasticsearch+json; compatible-with=9" (the body users report
  against elasticsearch-py 9.0, elastic/elasticsearch-py#2927, elastic/elasticsearch-ruby#2665). A body
  whose Content-Type is no known media type gets ``406`` ("Content-Type header [...] is not supported").
  Every answer carries ``X-Elastic-Product: Elasticsearch`` (what the client's product check wants), and
  a versioned request is answered as ``application/vnd.elasticsearch+json;compatible-with=N``.
* **OpenSearch** (``opensearch-3``): no product header at all; a body sent as any
  ``application/vnd.elasticsearch+…`` type is refused with ``406`` ``{"error": "Content-Type header [...]
  is not supported", "status": 406}`` (``RestController.sendContentTypeErrorMessage``; OpenSearch's
  ``MediaTypeRegistry`` knows json, x-ndjson, smile, yaml and cbor only), while an unknown ``Accept`` is
  ignored and answered in JSON (``AbstractRestChannel``), as OpenSearch does.
* ``GET /`` is answered with the engine's documented root body (Elasticsearch: ``version.number``,
  ``build_flavor: default``, ``tagline: "You Know, for Search"``; OpenSearch: ``version.distribution:
  "opensearch"`` and its tagline); fields other than the version number and flavour are placeholders.

Test controls, never forwarded: ``POST /_shim/bulk-faults`` ``{"ids": [...], "status": 429, "times": 1}``
makes the next bulk actions for those ids fail with that status (``times`` null: always) — they are
taken out of the request before osmem sees it, and their error items put back in their places in the
answer, typed as the engine types them (``es_rejected_execution_exception`` on Elasticsearch,
``rejected_execution_exception`` on OpenSearch, ``document_parsing_exception`` / ``mapper_parsing_exception``
for 400); ``GET /_shim/log`` lists every request (method, path, media headers, size, status, the JSON body
of small requests, the ids of a bulk request);
``DELETE`` on either clears it.

Run as ``python tests/engine_shim.py --upstream URL --profile NAME [--version V] --port N`` (standard
library only); tests/servers.py starts it.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import threading
from urllib.parse import urlsplit

PROFILES = {  # profile → (engine, version it reports)
    "elasticsearch-8": ("elasticsearch", "8.19.16"),
    "elasticsearch-9": ("elasticsearch", "9.1.0"),
    "opensearch-3": ("opensearch", "3.3.0"),
}
ENGINE_PROFILES = tuple(PROFILES)  # every es test runs once per profile (tests/conftest.py)
KNOWN = {"application/json", "application/x-ndjson", "application/smile", "application/yaml", "application/cbor"}
VND = {f"application/vnd.elasticsearch+{x}" for x in ("json", "x-ndjson", "smile", "yaml", "cbor")}


def root_body(engine: str, version: str) -> dict:
    major = int(version.split(".")[0])
    if engine == "opensearch":
        return {"name": "opensearch-node1", "cluster_name": "opensearch-cluster", "cluster_uuid": "shim-cluster-uuid",
                "version": {"distribution": "opensearch", "number": version, "build_type": "tar",
                            "build_hash": "0" * 40, "build_date": "2025-01-01T00:00:00.000000000Z",
                            "build_snapshot": False, "lucene_version": "10.2.1",
                            "minimum_wire_compatibility_version": "2.19.0",
                            "minimum_index_compatibility_version": "2.0.0"},
                "tagline": "The OpenSearch Project: https://opensearch.org/"}
    return {"name": "es-node-1", "cluster_name": "docker-cluster", "cluster_uuid": "shim-cluster-uuid",
            "version": {"number": version, "build_flavor": "default", "build_type": "docker", "build_hash": "0" * 40,
                        "build_date": "2025-01-01T00:00:00.000000000Z", "build_snapshot": False,
                        "lucene_version": {7: "8.11.3", 8: "9.12.1", 9: "10.2.2"}.get(major, "10.2.2"),
                        "minimum_wire_compatibility_version": {7: "6.8.0", 8: "7.17.0"}.get(major, "8.18.0"),
                        "minimum_index_compatibility_version": {7: "6.0.0-beta1", 8: "7.0.0"}.get(major, "8.0.0")},
            "tagline": "You Know, for Search"}


class Refusal(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(json.dumps(body))
        self.status, self.body = status, body


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """(type/subtype, parameters) as the engines' ParsedMediaType reads them; ValueError when malformed."""
    parts = value.lower().split(";")
    kind = parts[0].strip()
    if kind.count("/") != 1:
        raise ValueError(value)
    params = {}
    for part in parts[1:]:
        if not part.strip():
            continue
        kv = part.strip().split("=")
        if len(kv) != 2 or kv[0] != kv[0].strip() or kv[1] != kv[1].strip():
            raise ValueError(value)
        params[kv[0]] = kv[1]
    return kind, params


def _media_exception(detail: str) -> Refusal:
    reason = "Invalid media-type value on headers [Accept, Content-Type]"
    return Refusal(400, {"error": {"root_cause": [{"type": "media_type_header_exception", "reason": reason}],
                                   "type": "media_type_header_exception", "reason": reason,
                                   "caused_by": {"type": "status_exception", "reason": detail}}, "status": 400})


def _not_supported(content_type: str | None) -> Refusal:
    message = "Content-Type header is missing" if content_type is None else \
        f"Content-Type header [{content_type}] is not supported"
    return Refusal(406, {"error": message, "status": 406})


def check_elasticsearch(major: int, accept: str | None, content_type: str | None, has_content: bool) -> int | None:
    """The compatible version a request asks of an Elasticsearch of ``major`` (None: not versioned), or a
    Refusal as that server would answer."""
    def version(header):
        if header is None:
            return None
        try:
            return parse_media_type(header)[1].get("compatible-with")
        except ValueError:
            raise _media_exception(f"invalid media type [{header}]") from None

    lo = major - 1
    a, c = version(accept), version(content_type)
    try:
        av = int(a) if a is not None else major
        cv = int(c) if c is not None else major
    except ValueError:
        raise _media_exception(f"invalid compatible-with in Accept={accept}, Content-Type={content_type}") from None
    if av > major or av < lo:
        raise _media_exception(f"Accept version must be either version {major} or {lo}, but found {av}. "
                               f"Accept={accept}")
    if has_content:
        kind = parse_media_type(content_type)[0] if content_type else None
        if kind not in KNOWN | VND:
            raise _not_supported(content_type)
        if cv > major or cv < lo:
            raise _media_exception(f"Content-Type version must be either version {major} or {lo}, but found {cv}. "
                                   f"Content-Type={content_type}")
        if cv != av:
            raise _media_exception("A compatible version is required on both Content-Type and Accept headers if "
                                   "either one has requested a compatible version and the compatible versions must "
                                   f"match. Accept={accept}, Content-Type={content_type}")
        if (a is None) != (c is None):
            raise _media_exception("A compatible version is required on both Content-Type and Accept headers if "
                                   "either one has requested a compatible version. "
                                   f"Accept={accept}, Content-Type={content_type}")
    return av if a is not None else None


def check_opensearch(content_type: str | None, has_content: bool) -> None:
    if not has_content:
        return
    try:
        kind = parse_media_type(content_type)[0] if content_type else None
    except ValueError:
        kind = "?"
    if kind not in KNOWN and kind != "application/*":
        raise _not_supported(content_type)


def plain(content_type: str | None) -> str:
    """The media type osmem accepts for the same body."""
    if content_type and "ndjson" in content_type:
        return "application/x-ndjson"
    return "application/json"


class Faults:
    """Bulk item failures to inject, by record id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[dict] = []

    def take(self, rid: str) -> dict | None:
        with self.lock:
            for rule in self.rules:
                if rid in rule["ids"] and (rule.get("times") is None or rule["left"].get(rid, 0) > 0):
                    if rule.get("times") is not None:
                        rule["left"][rid] -= 1
                    return rule
        return None


def fault_error(engine: str, rule: dict, index: str, rid: str) -> dict:
    status = int(rule["status"])
    if status == 429:
        kind = "es_rejected_execution_exception" if engine == "elasticsearch" else "rejected_execution_exception"
        reason = ("rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, "
                  "all_bytes=0, coordinating_operation_bytes=1048576, max_coordinating_and_primary_bytes=1024]")
    elif status >= 500:
        kind, reason = "unavailable_shards_exception", f"[{index}][0] primary shard is not active"
    else:
        kind = "document_parsing_exception" if engine == "elasticsearch" else "mapper_parsing_exception"
        reason = f"[1:2] failed to parse field [started_utc] of type [keyword] in document with id '{rid}'"
    return {"type": rule.get("type") or kind, "reason": reason}


class Shim(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream: str, engine: str, version: str) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.upstream = urlsplit(upstream)
        self.engine, self.version = engine, version
        self.major = int(version.split(".")[0])
        self.faults = Faults()
        self.log: list[dict] = []
        self.log_lock = threading.Lock()
        self.local = threading.local()

    def connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port,
                                                                timeout=300)
        return conn


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without it every answer waits for a delayed ACK
    server: Shim

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self):
        self.handle_any()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def reply_json(self, status: int, body, extra: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(body).encode(), {"Content-Type": "application/json; charset=UTF-8",
                                                        **(extra or {})})

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        if path.startswith("/_shim/"):
            return self.control(path, body)
        server = self.server
        accept, content_type = self.headers.get("Accept"), self.headers.get("Content-Type")
        entry = {"method": self.command, "path": path, "query": query, "accept": accept,
                 "content_type": content_type if body else None, "bytes": len(body)}
        if body and not path.endswith("/_bulk") and len(body) < 65536:
            entry["body"] = json.loads(body)
        product = {"X-Elastic-Product": "Elasticsearch"} if server.engine == "elasticsearch" else {}
        try:
            if server.engine == "elasticsearch":
                compat = check_elasticsearch(server.major, accept, content_type, bool(body))
            else:
                check_opensearch(content_type, bool(body))
                compat = None
        except Refusal as r:
            entry["status"] = r.status
            self.record(entry)
            return self.reply_json(r.status, r.body, product)
        answer_type = f"application/vnd.elasticsearch+json;compatible-with={compat}" if compat else \
            "application/json; charset=UTF-8"
        if path in ("/", ""):
            entry["status"] = 200
            self.record(entry)
            return self.reply(200, json.dumps(root_body(server.engine, server.version)).encode(),
                              {"Content-Type": answer_type, **product})
        faulted: list[tuple[int, dict]] = []
        if path.endswith("/_bulk") and body:
            body, faulted, entry["bulk_ids"] = self.take_faults(path, body)
        if body or not faulted:
            status, data, headers = self.forward(self.command, self.path, body, plain(content_type))
        else:  # every action failed here: nothing to forward
            status, data, headers = 200, json.dumps({"took": 0, "errors": False, "items": []}).encode(), {}
        if faulted:
            answer = json.loads(data)
            items = answer.get("items", [])
            for position, item in faulted:
                items.insert(position, item)
            answer["items"], answer["errors"] = items, True
            data = json.dumps(answer).encode()
        entry["status"] = status
        self.record(entry)
        out = {"Content-Type": answer_type if headers.get("content-type", "").startswith("application/json")
               else headers.get("content-type", "application/json; charset=UTF-8"), **product}
        self.reply(status, data, out)

    def take_faults(self, path: str, body: bytes):
        """The bulk body without the actions a fault rule claims, those actions' error items with their
        positions, and every id the request named."""
        index = path.strip("/").split("/")[0] if path.count("/") > 1 else None
        lines = body.split(b"\n")
        kept, faulted, ids = [], [], []
        i = position = 0
        while i < len(lines):
            if not lines[i].strip():
                i += 1
                continue
            meta = json.loads(lines[i])
            op = next(iter(meta))
            has_source = op in ("index", "create", "update")
            pair = lines[i:i + (2 if has_source else 1)]
            i += len(pair)
            rid = meta[op].get("_id")
            ids.append(rid)
            rule = self.server.faults.take(rid) if rid is not None else None
            if rule:
                target = meta[op].get("_index") or index
                faulted.append((position, {op: {"_index": target, "_id": rid, "status": int(rule["status"]),
                                                "error": fault_error(self.server.engine, rule, target, rid)}}))
            else:
                kept += pair
            position += 1
        return (b"\n".join(kept) + b"\n" if kept else b""), faulted, ids

    def forward(self, method: str, target: str, body: bytes, content_type: str):
        headers = {"Accept": "application/json"}
        if body:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self.server.connection()
            try:
                conn.request(method, target, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
            except (http.client.HTTPException, OSError):
                conn.close()
                self.server.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def record(self, entry: dict) -> None:
        with self.server.log_lock:
            self.server.log.append(entry)

    def control(self, path: str, body: bytes) -> None:
        server = self.server
        if path == "/_shim/log":
            with server.log_lock:
                if self.command == "DELETE":
                    server.log.clear()
                return self.reply_json(200, list(server.log))
        if path == "/_shim/bulk-faults":
            with server.faults.lock:
                if self.command == "DELETE":
                    server.faults.rules.clear()
                elif self.command == "POST":
                    rule = json.loads(body)
                    rule["left"] = {rid: rule.get("times") or 0 for rid in rule["ids"]}
                    server.faults.rules.append(rule)
                return self.reply_json(200, {"rules": len(server.faults.rules)})
        return self.reply_json(404, {"error": f"no shim control {path}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--profile", required=True, choices=sorted(PROFILES))
    parser.add_argument("--version", help="the version to report, instead of the profile's")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    engine, version = PROFILES[args.profile]
    Shim(args.port, args.upstream, engine, args.version or version).serve_forever()


if __name__ == "__main__":
    main()
