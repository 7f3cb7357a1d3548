"""Which search engine answers at ``ARCHIVE_INDEX_URL``, whether this archive can talk to it, and the
official client for it: the supported matrix, enforced once at start.

**The matrix** (docs/search.md keeps the same table):

================  =============================  ==========================================================
engine            server versions                client (pyproject.toml)
================  =============================  ==========================================================
Elasticsearch     8.x and 9.x                    ``elasticsearch>=8.13,<9`` (elasticsearch-py 8.x)
OpenSearch        2.15 and later, 3.x            ``opensearch-py>=3,<4``
================  =============================  ==========================================================

Why one Elasticsearch client for two server majors: elasticsearch-py sends every request as
``application/vnd.elasticsearch+json; compatible-with=<its own major>`` (``_COMPAT_MIMETYPE_TEMPLATE`` in
``elasticsearch/_sync/client/_base.py``), and an Elasticsearch server of major *S* accepts
``compatible-with`` *S* or *S − 1* and refuses anything else with ``400 media_type_header_exception``
(``RestCompatibleVersionHelper.getCompatibleVersion`` in the server; "REST API compatibility" in the
Elasticsearch reference). So the 8.x client (compatible-with=8) talks to Elasticsearch 8 natively and to
Elasticsearch 9 in its REST compatibility mode — the combinations elasticsearch-py's own compatibility
table lists — while the 9.x client (compatible-with=9) is refused by every Elasticsearch 8 ("Accept
version must be either version 8 or 7, but found 9"). :func:`check` applies exactly that rule to the
client that is installed and the server that answers, and names both when they cannot talk.

Why OpenSearch needs its own client: elasticsearch-py refuses every successful response that lacks
``X-Elastic-Product: Elasticsearch`` (the product check in ``_base.py``), which OpenSearch never sends;
and OpenSearch answers a body sent as ``application/vnd.elasticsearch+json`` with ``406`` ("Content-Type
header [...] is not supported", ``RestController.sendContentTypeErrorMessage``; its ``MediaTypeRegistry``
knows no vnd types). opensearch-py sends plain ``application/json``. OpenSearch 2.15 is the first with
the ``wildcard`` field type the archive's mapping uses (OpenSearch docs, "Wildcard field type").

**Finding out** (:func:`probe`): one ``GET /`` with plain ``Accept: application/json`` — accepted by
every engine of every major, so even a server this archive cannot use answers with its version — read as
the engines document it: OpenSearch's body has ``version.distribution: "opensearch"``; Elasticsearch's
has ``version.number``, ``version.build_flavor`` and ``tagline: "You Know, for Search"`` (Root API,
Elasticsearch reference). Elasticsearch Serverless (``build_flavor: serverless``) reports a version number
that means nothing and refuses index settings the archive sets, so it is refused too.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from archive.errors import ConfigError, StorageError

ENGINES = ("elasticsearch", "opensearch")
ELASTICSEARCH_MAJORS = (8, 9)
OPENSEARCH_MINIMUM = (2, 15)  # the wildcard field type
OPENSEARCH_MAJORS = (2, 3)
ES_CLIENT_PIN = "elasticsearch>=8.13,<9"
ES_CLIENT_MAJORS = (8, 9)  # clients whose perform_request/options this code uses (9.x: with Elasticsearch 9 only)
OS_CLIENT_PIN = "opensearch-py>=3,<4"


class IndexUnavailable(StorageError):
    """Raised when the search engine cannot be reached, times out or answers 429/5xx; retry later."""

    code = "index_unavailable"
    http_status = 503
    transient = True


class IncompatibleEngine(ConfigError):
    """Raised when the engine at ARCHIVE_INDEX_URL is not one this archive supports, or not the one
    ARCHIVE_INDEX_ENGINE names, or cannot talk with the client installed here; names both versions."""

    code = "index_engine_incompatible"


@dataclass(frozen=True)
class Engine:
    """What answered ``GET /``: the engine's name (one of :data:`ENGINES`), its version as it reports it,
    and the build flavour (Elasticsearch only)."""

    name: str
    version: str
    build_flavor: str | None = None
    cluster_name: str | None = None

    @property
    def numbers(self) -> tuple[int, ...]:
        return _numbers(self.version)

    @property
    def major(self) -> int:
        return self.numbers[0] if self.numbers else 0

    @property
    def title(self) -> str:
        return f"{'Elasticsearch' if self.name == 'elasticsearch' else 'OpenSearch'} {self.version}"


@dataclass(frozen=True)
class Client:
    """The client library that talks to an engine: its package name and version."""

    package: str
    version: str

    @property
    def major(self) -> int:
        return _numbers(self.version)[0]

    @property
    def title(self) -> str:
        return f"{self.package} {self.version}"


def _numbers(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("-")[0].split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def identify(body: object) -> Engine:
    """The engine a ``GET /`` body describes. Raises IncompatibleEngine for anything else."""
    version = body.get("version") if isinstance(body, dict) else None
    number = version.get("number") if isinstance(version, dict) else None
    if not isinstance(number, str) or not _numbers(number):
        raise IncompatibleEngine("the server at ARCHIVE_INDEX_URL does not answer GET / as Elasticsearch or "
                                 f"OpenSearch do (no version.number): {json.dumps(body)[:200]}")
    cluster = body.get("cluster_name")
    if version.get("distribution") == "opensearch":
        return Engine("opensearch", number, None, cluster)
    return Engine("elasticsearch", number, version.get("build_flavor"), cluster)


def installed_client(engine_name: str) -> Client:
    """The client library installed for ``engine_name``. Raises ConfigError with an install hint when it is
    missing."""
    try:
        if engine_name == "elasticsearch":
            import elasticsearch

            return Client("elasticsearch-py", elasticsearch.__versionstr__)
        import opensearchpy

        return Client("opensearch-py", opensearchpy.__versionstr__)
    except ImportError:
        pin = ES_CLIENT_PIN if engine_name == "elasticsearch" else OS_CLIENT_PIN
        raise ConfigError(f"the {engine_name} client is not installed: pip install '{pin}'",
                          variable="ARCHIVE_INDEX_URL") from None


def check(engine: Engine, client: Client, *, wanted: str = "auto", where: str = "ARCHIVE_INDEX_URL") -> None:
    """Refuse an engine the archive does not support, or that ``client`` cannot talk to, or that is not
    the one ARCHIVE_INDEX_ENGINE asks for. Raises IncompatibleEngine naming the server and the client."""
    if wanted not in ("auto", engine.name):
        other = "opensearch" if wanted == "elasticsearch" else "elasticsearch"
        raise IncompatibleEngine(f"ARCHIVE_INDEX_ENGINE={wanted}, but {where} is {engine.title}; set "
                                 f"ARCHIVE_INDEX_ENGINE={other} (or auto) or point ARCHIVE_INDEX_URL at "
                                 f"{wanted}", variable="ARCHIVE_INDEX_ENGINE")
    if engine.name == "opensearch":
        if not (OPENSEARCH_MINIMUM <= engine.numbers[:2] and engine.major in OPENSEARCH_MAJORS):
            raise IncompatibleEngine(
                f"{engine.title} at {where} is not supported: the archive needs OpenSearch 2.15 or later "
                f"(its mapping uses the wildcard field type) up to 3.x, with {client.title}",
                engine=engine.title, client=client.title)
        if client.major != 3:
            raise IncompatibleEngine(f"{engine.title} at {where} needs opensearch-py 3.x; {client.title} is "
                                     f"installed: pip install '{OS_CLIENT_PIN}'", engine=engine.title,
                                     client=client.title)
        return
    if engine.build_flavor == "serverless":
        raise IncompatibleEngine(f"Elasticsearch Serverless at {where} (reporting {engine.version}) is not "
                                 "supported: it refuses the index settings the archive sets, and its version "
                                 f"number means nothing; use Elasticsearch 8 or 9 with {client.title}",
                                 engine=engine.title, client=client.title)
    accepted = (engine.major - 1, engine.major)  # what an Elasticsearch of this major accepts in compatible-with
    if engine.major not in ELASTICSEARCH_MAJORS or client.major not in accepted or client.major not in ES_CLIENT_MAJORS:
        raise IncompatibleEngine(
            f"{engine.title} at {where} cannot be used with {client.title}: the client sends compatible-with="
            f"{client.major}, and Elasticsearch {engine.major} accepts only compatible-with={accepted[1]} or "
            f"{accepted[0]}. The archive supports Elasticsearch {' and '.join(map(str, ELASTICSEARCH_MAJORS))} "
            f"with the 8.x client: pip install '{ES_CLIENT_PIN}'", engine=engine.title, client=client.title)


def auth_header(*, api_key: str | None = None, username: str | None = None,
                password: str | None = None) -> dict[str, str]:
    """The Authorization header the clients will send, for the probe."""
    if api_key:
        return {"authorization": f"ApiKey {api_key}"}
    if username:
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        return {"authorization": f"Basic {token}"}
    return {}


def probe(url: str, *, headers: dict[str, str] | None = None, timeout: float = 30.0) -> Engine:
    """Ask the server at ``url`` what it is (``GET /`` with plain JSON). Raises IndexUnavailable when it
    cannot be reached or answers 5xx, IncompatibleEngine when it answers as neither engine, StorageError
    when it refuses (401/403: the credentials)."""
    import urllib3

    try:
        import certifi

        pool = urllib3.PoolManager(ca_certs=certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with the clients
        pool = urllib3.PoolManager()
    where = _redacted(url)
    try:
        resp = pool.request("GET", url.rstrip("/") + "/", headers={"accept": "application/json", **(headers or {})},
                            timeout=urllib3.Timeout(total=timeout), retries=False)
    except urllib3.exceptions.HTTPError as e:
        raise IndexUnavailable(f"the search engine at {where} cannot be reached: {e}") from e
    finally:
        pool.clear()
    if resp.status >= 500 or resp.status == 429:
        raise IndexUnavailable(f"the search engine at {where} answered GET / with {resp.status}",
                               status=resp.status)
    if resp.status in (401, 403):
        raise StorageError(f"the search engine at {where} refused the credentials ({resp.status}); check "
                           "ARCHIVE_ES_API_KEY or ARCHIVE_ES_USERNAME/ARCHIVE_ES_PASSWORD", status=resp.status)
    try:
        body = json.loads(resp.data)
    except ValueError:
        body = None
    if resp.status != 200:
        raise IncompatibleEngine(f"the server at {where} answered GET / with {resp.status}: "
                                 f"{resp.data[:200]!r}")
    return identify(body)


def _redacted(url: str) -> str:
    """``url`` without a password in it, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# --- the clients ------------------------------------------------------------------------------------------

RETRY_STATUSES = frozenset({429, 502, 503, 504})  # what the engines mean as "later" (and the clients retry)


class EngineClient:
    """One engine through its official client, as the index uses it: :meth:`request` sends a REST call
    with a JSON (or NDJSON) body and returns the decoded answer, in the media type the engine expects;
    errors become IndexUnavailable (unreachable, 429, 5xx: transient) or StorageError (refused)."""

    engine: Engine
    client: Client
    media_type: str  # what every request carries, for status and the tests

    def request(self, what: str, method: str, path: str, *, body=None, params: dict | None = None,
                ndjson: bool = False, ok: tuple[int, ...] = ()):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _failed(self, what: str, status, body, e: Exception) -> StorageError:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            cause = error.get("caused_by") or {}
            reason = f"{error.get('type')}: {error.get('reason')}" + (
                f" ({cause.get('reason')})" if isinstance(cause, dict) and cause.get("reason") else "")
        else:
            reason = str(error or body or e)[:300]
        message = f"{self.engine.title} {what} failed ({status}): {reason}"
        if status in RETRY_STATUSES:
            return IndexUnavailable(message, status=status)
        return StorageError(message.replace(" failed (", " refused (", 1), status=status)


class ElasticsearchClient(EngineClient):
    """elasticsearch-py. Every request goes out as ``application/vnd.elasticsearch+json;
    compatible-with=<client major>`` (the client rewrites ``application/json`` so, ``_base.py``), which
    :func:`check` has made sure this server accepts; the client's product check stays on."""

    def __init__(self, url: str, engine: Engine, client: Client, *, api_key: str | None = None,
                 username: str | None = None, password: str | None = None, timeout: float = 30.0) -> None:
        from elasticsearch import Elasticsearch

        options: dict = {"request_timeout": timeout}
        if api_key:
            options["api_key"] = api_key
        elif username:
            options["basic_auth"] = (username, password or "")
        self.engine, self.client = engine, client
        self.media_type = f"application/vnd.elasticsearch+json; compatible-with={client.major}"
        self.es = Elasticsearch(url, **options)

    def request(self, what, method, path, *, body=None, params=None, ndjson=False, ok=()):
        from elastic_transport import TransportError
        from elasticsearch import ApiError

        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/x-ndjson" if ndjson else "application/json"
        client = self.es.options(ignore_status=ok) if ok else self.es
        try:
            resp = client.perform_request(method, path, params=params, headers=headers, body=body)
        except ApiError as e:
            raise self._failed(what, e.meta.status, e.body, e) from e
        except TransportError as e:
            raise IndexUnavailable(f"{self.engine.title}: {what} failed: {e}") from e
        if method == "HEAD":
            return 200 <= resp.meta.status < 300
        return resp.body

    def close(self) -> None:
        self.es.close()


class OpenSearchClient(EngineClient):
    """opensearch-py: plain ``application/json`` (``application/x-ndjson`` for bulk), no product check."""

    def __init__(self, url: str, engine: Engine, client: Client, *, api_key: str | None = None,
                 username: str | None = None, password: str | None = None, timeout: float = 30.0) -> None:
        from opensearchpy import OpenSearch

        if api_key:
            raise ConfigError("ARCHIVE_ES_API_KEY is an Elasticsearch API key; OpenSearch takes "
                              "ARCHIVE_ES_USERNAME and ARCHIVE_ES_PASSWORD", variable="ARCHIVE_ES_API_KEY")
        options: dict = {"timeout": timeout}
        if username:
            options["http_auth"] = (username, password or "")
        self.engine, self.client = engine, client
        self.media_type = "application/json"
        self.os = OpenSearch([url], **options)

    def request(self, what, method, path, *, body=None, params=None, ndjson=False, ok=()):
        from opensearchpy.exceptions import ConnectionError as OSConnectionError
        from opensearchpy.exceptions import TransportError

        headers = {"content-type": "application/x-ndjson" if ndjson else "application/json"} if body is not None \
            else None
        try:
            return self.os.transport.perform_request(method, path, params=params, body=body, headers=headers,
                                                     ignore=ok)
        except OSConnectionError as e:
            raise IndexUnavailable(f"{self.engine.title}: {what} failed: {e}") from e
        except TransportError as e:
            raise self._failed(what, e.status_code, e.info, e) from e

    def close(self) -> None:
        self.os.close()


def connect(url: str, *, wanted: str = "auto", api_key: str | None = None, username: str | None = None,
            password: str | None = None, timeout: float = 30.0) -> EngineClient:
    """The engine at ``url``, found with :func:`probe`, checked with :func:`check`, through its client.
    Raises IndexUnavailable, IncompatibleEngine, ConfigError, StorageError."""
    engine = probe(url, headers=auth_header(api_key=api_key, username=username, password=password),
                   timeout=timeout)
    client = installed_client(engine.name)
    check(engine, client, wanted=wanted, where=_redacted(url))
    kind = ElasticsearchClient if engine.name == "elasticsearch" else OpenSearchClient
    return kind(url, engine, client, api_key=api_key, username=username, password=password, timeout=timeout)
