"""The search engines the index supports — Elasticsearch 8 and 9, OpenSearch — as the real ones behave:
the strict shim in front of osmem-server refuses what each engine refuses (so a test cannot pass on the
stand-in's leniency), the backend finds the engine at start and sends each its own media type, a server
or client it cannot use is refused naming both versions, and bulk writes are sized by bytes, retry only
the items the engine rejected, and switch refresh off while a rebuild fills a new index."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from archive.errors import ConfigError, StorageError
from archive.index import engines
from archive.index.bulk import BulkRefused
from archive.index.elastic import ElasticIndex
from archive.index.engines import Client, Engine, IncompatibleEngine, IndexUnavailable

VND = "application/vnd.elasticsearch+json"


def raw(url: str, method: str = "GET", path: str = "/", body: bytes | None = None, **headers):
    """One plain HTTP request: (status, headers, decoded body)."""
    req = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def view(rid: str, started: str = "2024-01-01T08:00:00+00:00", text: str = "a refund please") -> dict:
    return {"record_id": rid, "metadata": {"source": {"system": "t", "interaction_id": rid}, "channel": "chat",
                                           "started_at": started, "participants": [],
                                           "messages": [{"at": started, "text": text}]}, "parts": []}


def fresh_index(shim, **kw) -> ElasticIndex:
    return ElasticIndex(shim.url, alias=f"t{uuid.uuid4().hex[:12]}", **kw)


# --- the shim is as strict as the engines ----------------------------------------------------------------


def test_each_profile_answers_get_root_as_its_engine_documents(engine):
    status, headers, body = raw(engine.url, Accept="application/json")
    assert status == 200 and body["version"]["number"] == engine.version
    if engine.engine == "elasticsearch":
        assert body["tagline"] == "You Know, for Search" and body["version"]["build_flavor"] == "default"
        assert "distribution" not in body["version"] and headers["X-Elastic-Product"] == "Elasticsearch"
    else:
        assert body["version"]["distribution"] == "opensearch" and "X-Elastic-Product" not in headers
    assert engines.identify(body) == Engine(engine.engine, engine.version, body["version"].get("build_flavor"),
                                            body["cluster_name"])


@pytest.mark.es
@pytest.mark.parametrize("profile, accept, content_type, status, reason", [
    # Elasticsearch 8: compatible-with 7 or 8
    ("elasticsearch-8", 9, None, 400, "Accept version must be either version 8 or 7, but found 9. "
                                      f"Accept={VND}; compatible-with=9"),
    ("elasticsearch-8", 9, 9, 400, "Accept version must be either version 8 or 7, but found 9."),
    ("elasticsearch-8", 8, 8, 200, None),
    ("elasticsearch-8", 7, 7, 200, None),
    ("elasticsearch-8", 8, 7, 400, "the compatible versions must match"),
    ("elasticsearch-8", 8, "plain", 400, "A compatible version is required on both Content-Type and Accept"),
    # Elasticsearch 9: compatible-with 8 or 9
    ("elasticsearch-9", 7, 7, 400, "Accept version must be either version 9 or 8, but found 7."),
    ("elasticsearch-9", 8, 8, 200, None),
    ("elasticsearch-9", 9, 9, 200, None),
])
def test_elasticsearch_profiles_refuse_what_the_server_refuses(shims, profile, accept, content_type, status, reason):
    shim = shims(profile)
    headers = {"Accept": f"{VND}; compatible-with={accept}"}
    body = None
    if content_type is not None:
        body = json.dumps({"query": {"match_all": {}}}).encode()
        headers["Content-Type"] = "application/json" if content_type == "plain" else \
            f"{VND}; compatible-with={content_type}"
    got, answer_headers, answer = raw(shim.url, "POST" if body else "GET", "/_search" if body else "/", body,
                                      **headers)
    assert got == status, answer
    assert answer_headers["X-Elastic-Product"] == "Elasticsearch"
    if status == 400:  # as Elasticsearch answers it (RestRequest.MediaTypeHeaderException)
        assert answer["error"]["type"] == "media_type_header_exception"
        assert answer["error"]["reason"] == "Invalid media-type value on headers [Accept, Content-Type]"
        assert answer["error"]["root_cause"] == [{"type": "media_type_header_exception",
                                                  "reason": answer["error"]["reason"]}]
        assert answer["error"]["caused_by"]["type"] == "status_exception"
        assert reason in answer["error"]["caused_by"]["reason"] and answer["status"] == 400
    else:
        assert answer_headers["Content-Type"] == f"{VND};compatible-with={accept}"


@pytest.mark.es
def test_the_opensearch_profile_refuses_the_elasticsearch_media_type_and_sends_no_product_header(shims):
    shim = shims("opensearch-3")
    body = json.dumps({"query": {"match_all": {}}}).encode()
    status, headers, answer = raw(shim.url, "POST", "/_search", body, **{
        "Content-Type": f"{VND}; compatible-with=8", "Accept": f"{VND}; compatible-with=8"})
    assert (status, answer) == (406, {"error": f"Content-Type header [{VND}; compatible-with=8] is not supported",
                                      "status": 406})
    # an unknown Accept alone is ignored, as OpenSearch's AbstractRestChannel does
    status, headers, answer = raw(shim.url, Accept=f"{VND}; compatible-with=8")
    assert status == 200 and answer["version"]["distribution"] == "opensearch"
    assert "X-Elastic-Product" not in headers and headers["Content-Type"].startswith("application/json")
    # so the Elasticsearch client's product check refuses it, as it refuses a real OpenSearch
    from elasticsearch import Elasticsearch, UnsupportedProductError

    with pytest.raises(UnsupportedProductError):
        Elasticsearch(shim.url).info()
    from opensearchpy import OpenSearch

    assert OpenSearch([shim.url]).info()["version"]["distribution"] == "opensearch"


# --- the backend finds the engine and speaks its media type ------------------------------------------------


def test_the_backend_sends_each_engine_its_own_media_type(engine):
    index = fresh_index(engine)
    engine.clear_log()
    index.upsert(view("r1"))
    assert [r["record_id"] for r in index.query("refund").records] == ["r1"]
    index.delete("r1")
    assert index.count() == 0
    log = engine.requests()
    assert {r["path"].rsplit("/", 1)[-1] for r in log} >= {"_bulk", "_refresh", "_search", "_count"}
    assert all(r["status"] < 300 or r["method"] == "DELETE" for r in log), log
    for r in log:
        if engine.engine == "elasticsearch":  # the 8.x client's compatible-with=8, on both headers
            assert r["accept"] == f"{VND}; compatible-with=8", r
            assert r["content_type"] in (None, f"{VND}; compatible-with=8",
                                         "application/vnd.elasticsearch+x-ndjson; compatible-with=8"), r
        else:
            assert "vnd.elasticsearch" not in f"{r['accept']} {r['content_type']}", r
            assert r["content_type"] in (None, "application/json", "application/x-ndjson"), r
    described = index.describe()
    assert (described["engine"], described["version"]) == (engine.engine, engine.version)
    assert described["template_version"] == 1 and described["index_template_versions"] == [1]
    assert described["client"].startswith("elasticsearch-py 8." if engine.engine == "elasticsearch"
                                          else "opensearch-py 3.")


@pytest.mark.es
@pytest.mark.parametrize("profile, version, wanted, words", [
    ("elasticsearch-8", "7.17.29", "auto", ["Elasticsearch 7.17.29", "elasticsearch-py 8.", "compatible-with=8",
                                            "accepts only compatible-with=7 or 6"]),
    ("elasticsearch-9", "10.0.0", "auto", ["Elasticsearch 10.0.0", "elasticsearch-py 8.", "Elasticsearch 8 and 9"]),
    ("opensearch-3", "2.11.1", "auto", ["OpenSearch 2.11.1", "2.15 or later", "wildcard"]),
    ("elasticsearch-8", None, "opensearch", ["ARCHIVE_INDEX_ENGINE=opensearch", "Elasticsearch 8.19.16"]),
    ("opensearch-3", None, "elasticsearch", ["ARCHIVE_INDEX_ENGINE=elasticsearch", "OpenSearch 3.3.0"]),
])
def test_an_engine_the_archive_cannot_use_is_refused_at_start_naming_both(shims, profile, version, wanted, words):
    shim = shims(profile, version)
    shim.clear_log()
    with pytest.raises(IncompatibleEngine) as e:
        fresh_index(shim, engine=wanted)
    for word in words:
        assert word in str(e.value), str(e.value)
    assert [r["path"] for r in shim.requests()] == ["/"]  # found out with GET / alone: nothing was written


def test_an_unreachable_engine_is_transient():
    with pytest.raises(IndexUnavailable, match="cannot be reached"):
        ElasticIndex("http://127.0.0.1:1", alias="x", timeout=1)


@pytest.mark.es
@pytest.mark.parametrize("profile, wrong", [("elasticsearch-8", 9), ("elasticsearch-9", 7), ("opensearch-3", 8)])
def test_the_wrong_media_type_for_a_profile_fails_at_the_first_request(shims, monkeypatch, profile, wrong):
    """What a user met before this check: elasticsearch-py 9.x (compatible-with=9) against Elasticsearch
    8, a compatible-with=7 client against 9, the Elasticsearch client against OpenSearch. With the start-up
    check bypassed, the shim refuses the first request as the real engine would."""
    shim = shims(profile)
    import elasticsearch._sync.client._base as base

    monkeypatch.setattr(base, "_COMPAT_MIMETYPE_SUB", base._COMPAT_MIMETYPE_TEMPLATE.replace(
        str(engines.installed_client("elasticsearch").major), str(wrong)) % (r"\g<1>",))
    monkeypatch.setattr(engines, "check", lambda *a, **k: None)
    monkeypatch.setattr(engines, "OpenSearchClient", engines.ElasticsearchClient)  # the ES client, everywhere
    with pytest.raises(StorageError) as e:
        fresh_index(shim)
    if profile.startswith("elasticsearch"):
        assert "refused (400)" in str(e.value) and "media_type_header_exception" in str(e.value)
        assert f"but found {wrong}" in str(e.value)
    else:
        assert "refused (406)" in str(e.value) and "is not supported" in str(e.value)


@pytest.mark.es
def test_the_9x_client_is_refused_by_elasticsearch_8_before_any_request(shims, monkeypatch):
    import elasticsearch

    monkeypatch.setattr(elasticsearch, "__versionstr__", "9.1.0")
    shim = shims("elasticsearch-8")
    with pytest.raises(IncompatibleEngine) as e:
        fresh_index(shim)
    assert "Elasticsearch 8.19.16" in str(e.value) and "elasticsearch-py 9.1.0" in str(e.value)
    assert "compatible-with=9" in str(e.value) and "pip install 'elasticsearch>=8.13,<9'" in str(e.value)
    # the same client and Elasticsearch 9 could talk (9 accepts compatible-with=9)
    engines.check(engines.probe(shims("elasticsearch-9").url), engines.installed_client("elasticsearch"))


@pytest.mark.parametrize("engine_name, version, flavor, client, ok", [
    ("elasticsearch", "8.0.0", "default", "8.19.3", True),
    ("elasticsearch", "8.19.16", "default", "8.13.0", True),
    ("elasticsearch", "9.1.0", "default", "8.19.3", True),   # REST compatibility: 9 accepts compatible-with=8
    ("elasticsearch", "9.1.0", "default", "9.1.0", True),
    ("elasticsearch", "8.19.16", "default", "9.0.0", False),  # 8 refuses compatible-with=9
    ("elasticsearch", "7.17.29", "default", "8.19.3", False),
    ("elasticsearch", "10.0.0", "default", "9.1.0", False),   # not a major the archive has met
    ("elasticsearch", "8.11.0", "default", "7.17.13", False),  # a client this code does not use
    ("elasticsearch", "8.11.0", "serverless", "8.19.3", False),
    ("opensearch", "2.15.0", None, "3.2.0", True),
    ("opensearch", "3.3.0", None, "3.2.0", True),
    ("opensearch", "2.14.0", None, "3.2.0", False),  # no wildcard field type
    ("opensearch", "1.3.20", None, "3.2.0", False),
    ("opensearch", "4.0.0", None, "3.2.0", False),
    ("opensearch", "3.3.0", None, "2.8.0", False),
])
def test_the_supported_matrix(engine_name, version, flavor, client, ok):
    package = "elasticsearch-py" if engine_name == "elasticsearch" else "opensearch-py"
    check = lambda: engines.check(Engine(engine_name, version, flavor), Client(package, client))  # noqa: E731
    if ok:
        check()
    else:
        with pytest.raises(IncompatibleEngine) as e:
            check()
        assert version in str(e.value) and client in str(e.value)


def test_opensearch_takes_no_elasticsearch_api_key():
    with pytest.raises(ConfigError, match="ARCHIVE_ES_API_KEY"):
        engines.OpenSearchClient("http://x", Engine("opensearch", "3.3.0"), Client("opensearch-py", "3.2.0"),
                                 api_key="k")


# --- bulk writes ---------------------------------------------------------------------------------------------


def _bulks(shim) -> list[list[str]]:
    return [r["bulk_ids"] for r in shim.requests() if r["path"].endswith("/_bulk")]


def test_partial_bulk_failures_are_retried_for_the_failed_items_only(engine):
    index = fresh_index(engine)
    index.writer.backoff = 0.001
    ids = [f"r{i:02d}" for i in range(10)]
    engine.clear_log()
    engine.fail_bulk_items(["r02", "r05", "r07"], 429)  # the engine's queue is full, once, for these three
    engine.fail_bulk_items(["r05"], 503, times=1)  # and r05 a second time
    for rid in ids:
        index.upsert(view(rid))
    index.flush()
    assert _bulks(engine) == [ids, ["r02", "r05", "r07"], ["r05"]]
    assert sorted(index.record_ids()) == ids
    assert index.count() == 10


def test_records_the_engine_refuses_for_good_are_named_and_the_rest_written(engine):
    index = fresh_index(engine)
    index.writer.backoff = 0.001
    ids = [f"r{i:02d}" for i in range(6)]
    engine.fail_bulk_items(["r03"], 400, times=None)  # a mapping refusal: retrying cannot help
    engine.fail_bulk_items(["r04"], 429)
    engine.clear_log()
    for rid in ids:
        index.upsert(view(rid))
    with pytest.raises(BulkRefused) as e:
        index.flush()
    assert e.value.details["record_ids"] == ["r03"] and "r03: 400" in str(e.value)
    assert ("document_parsing_exception" if engine.engine == "elasticsearch" else "mapper_parsing_exception") \
        in str(e.value)
    assert _bulks(engine) == [ids, ["r04"]]  # r03 is not sent again
    index.flush()
    assert sorted(index.record_ids()) == [rid for rid in ids if rid != "r03"]
    assert _bulks(engine) == [ids, ["r04"]]


def test_records_still_rejected_after_every_retry_stay_queued_for_the_next_flush(engine):
    index = fresh_index(engine)
    index.writer.backoff = 0.001
    engine.fail_bulk_items(["r1"], 429, times=None)
    engine.clear_log()
    index.upsert(view("r0"))
    index.upsert(view("r1"))
    with pytest.raises(IndexUnavailable, match="still rejected 1 record"):
        index.flush()
    assert _bulks(engine) == [["r0", "r1"]] + [["r1"]] * (index.writer.attempts - 1)
    engine.clear_faults()
    assert index.count() == 2  # the next flush (every read flushes) writes it
    assert _bulks(engine)[-1] == ["r1"]


def test_bulk_requests_are_sized_by_bytes(engine):
    index = fresh_index(engine)
    index.writer.max_bytes = 8_000
    engine.clear_log()
    ids = [f"r{i:03d}" for i in range(60)]
    for i, rid in enumerate(ids):
        index.upsert(view(rid, text="word " * (10 + 40 * (i % 3))))  # documents of different sizes
    sent_while_upserting = _bulks(engine)
    index.flush()
    bulks = [r for r in engine.requests() if r["path"].endswith("/_bulk")]
    # full batches went out while upserting: each waits only for the one before it (the last may be in flight)
    assert len(bulks) >= 4 and len(sent_while_upserting) >= len(bulks) - 2
    assert [rid for r in bulks for rid in r["bulk_ids"]] == ids
    assert all(r["bytes"] <= index.writer.max_bytes for r in bulks)
    assert all(r["bytes"] > index.writer.max_bytes - 2_000 for r in bulks[:-1])  # full: the next would not fit
    assert sum(r["path"].endswith("/_refresh") for r in engine.requests()) == 1  # once, at flush
    assert index.count() == 60


def test_a_batch_written_behind_that_fails_is_queued_again_and_its_error_raised(engine):
    index = fresh_index(engine)
    index.writer.max_bytes, index.writer.attempts, index.writer.backoff = 3_000, 2, 0.001
    ids = [f"r{i:03d}" for i in range(40)]
    engine.fail_bulk_items(["r000"], 503, times=None)  # the first batch, written behind, cannot complete
    errors = []
    for rid in ids:
        try:
            index.upsert(view(rid))
        except IndexUnavailable as e:  # raised by a later upsert (or the flush), naming the record
            errors.append(e)
    with pytest.raises(IndexUnavailable) as e:
        index.flush()
    errors.append(e.value)
    assert all(err.details["record_ids"] == ["r000"] for err in errors)
    engine.clear_faults()
    index.flush()
    assert sorted(index.record_ids()) == ids


def test_refresh_is_off_while_rebuilding_and_restored_after(engine):
    index = fresh_index(engine)
    index.upsert(view("old"))
    index.flush()
    engine.clear_log()
    with index.rebuilding() as fresh:
        for i in range(5):
            fresh.upsert(view(f"r{i}"))
        fresh.flush()  # written to the new index, not refreshed, and not yet searched
        assert [r["record_id"] for r in index.query("").records] == ["old"]
    log = [(r["method"], r["path"], r.get("body")) for r in engine.requests()]
    new = next(p.strip("/") for m, p, _ in log if m == "PUT" and p.count("/") == 1)
    settings = [(i, b) for i, (m, p, b) in enumerate(log) if p == f"/{new}/_settings" and m == "PUT"]
    assert [b for _, b in settings] == [{"index": {"refresh_interval": "-1"}}, {"index": {"refresh_interval": None}}]
    first_bulk = next(i for i, (m, p, _) in enumerate(log) if p == f"/{new}/_bulk")
    refreshes = [i for i, (m, p, _) in enumerate(log) if p == f"/{new}/_refresh"]
    swap = next(i for i, (m, p, _) in enumerate(log) if p == "/_aliases")
    assert settings[0][0] < first_bulk < settings[1][0] < refreshes[0] < swap and len(refreshes) == 1
    status, _, answer = raw(engine.url, path=f"/{new}/_settings?flat_settings=true", Accept="application/json")
    assert "index.refresh_interval" not in answer[new]["settings"]  # back to the engine's default
    assert sorted(index.record_ids()) == [f"r{i}" for i in range(5)]


# --- archive status -------------------------------------------------------------------------------------------


def test_archive_status_names_the_engine_its_version_and_the_template_version(engine, tmp_path):
    from tests.test_cli import cli_env, run

    alias = f"t{uuid.uuid4().hex[:12]}"
    env = {**cli_env(tmp_path / "home", "tester"), "ARCHIVE_INDEX_URL": engine.url, "ARCHIVE_ES_INDEX": alias}
    run(env, "init")
    index = json.loads(run(env, "status", "--json").stdout)["index"]
    assert (index["engine"], index["version"], index["template_version"]) == (engine.engine, engine.version, 1)
    assert index["alias"] == alias and index["indexes"][0].startswith(f"{alias}-v1-")
    line = next(x for x in run(env, "status").stdout.decode().splitlines() if x.startswith("index "))
    assert line.split(None, 1)[1].startswith(f"{engine.engine} {engine.version} ({index['client']}, ")
    assert f"template v1, {alias} -> {alias}-v1-" in line and line.endswith("(v1)")
    wrong = "opensearch" if engine.engine == "elasticsearch" else "elasticsearch"
    proc = run({**env, "ARCHIVE_INDEX_ENGINE": wrong}, "status", check=False)
    assert proc.returncode == 78 and b"index_engine_incompatible" in proc.stderr, proc.stderr
    assert engine.version.encode() in proc.stderr


def test_archive_status_names_the_embedded_index(tmp_path):
    import sqlite3

    from tests.test_cli import cli_env, run

    env = cli_env(tmp_path / "home", "tester")
    run(env, "init")
    index = json.loads(run(env, "status", "--json").stdout)["index"]
    assert (index["engine"], index["version"], index["schema"]) == ("sqlite", sqlite3.sqlite_version,
                                                                    "0005_trigram_stats")
    assert f"index             sqlite {sqlite3.sqlite_version}, schema 0005_trigram_stats" in \
        run(env, "status").stdout.decode()


def test_processes_opening_a_new_index_together_make_one_index_behind_its_alias(engine):
    """Workers starting at once each find the alias missing: they must make one index between them (an
    alias over several indexes has no write index, and the engine refuses every write through it)."""
    import threading

    alias = f"t{uuid.uuid4().hex[:12]}"
    start = threading.Barrier(4)
    opened: list[ElasticIndex] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(ElasticIndex(engine.url, alias=alias))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(opened[0]._behind_alias()) == 1
    for i, index in enumerate(opened):  # each of them writes through the alias
        index.upsert(view(f"r{i}"))
        index.flush()
    assert sorted(r["record_id"] for r in opened[0].query("refund").records) == ["r0", "r1", "r2", "r3"]
