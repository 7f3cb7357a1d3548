"""The HTTP API against a real server (``archive serve`` in its own process, uvicorn): tokens (missing,
unknown, expired, revoked, wrong role), reasons for content, search, record detail, part download with
HTTP Range (206 with exactly the bytes asked for, suffix ranges, 416), JSON errors that are never stack
traces, the OpenAPI document, and every request in the audit trail."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import apikit
from tests.apikit import served
from tests.test_cli import cli_env, run
from tests.workerkit import wav_bytes


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from archive.access import Identities
    from archive.tokens import Tokens

    tmp = tmp_path_factory.mktemp("api")
    env = cli_env(tmp / "home", "admin")
    inbox = tmp / "inbox"
    inbox.mkdir()
    audio = wav_bytes(200.0, 3)  # 3.2 MB: several sealed segments
    (inbox / "call-1.wav").write_bytes(audio)
    (inbox / "call-1.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "t", "interaction_id": "call-1"}, "channel": "phone",
        "started_at": "2024-03-01T09:00:00Z", "participants": [{"role": "agent", "id": "1042"},
                                                               {"role": "customer", "id": "C-1"}]}))
    run(env, "init")
    run(env, "identity", "add", "ann", "--role", "auditor")
    run(env, "identity", "add", "rec", "--role", "ingest")
    run(env, "identity", "add", "lee", "--role", "legal")
    run(env, "ingest", str(inbox))
    rid = json.loads(run(env, "search", "", "--json").stdout)["records"][0]["record_id"]
    auditor = run(env, "token", "create", "ann", "--role", "auditor").stdout.decode().strip()
    ingest = run(env, "token", "create", "rec", "--role", "ingest").stdout.decode().strip()
    legal = run(env, "token", "create", "lee", "--role", "legal").stdout.decode().strip()
    revoked = run(env, "token", "create", "ann", "--role", "auditor").stdout.decode().strip()
    run(env, "token", "revoke", revoked.split("_")[1])
    tokens = Tokens(tmp / "home" / "tokens.json", Identities(tmp / "home" / "identities.json"))
    expired, _ = tokens.create("ann", "auditor", expires="PT1H", now=datetime.now(UTC) - timedelta(hours=2))
    with served(env, tmp / "server.log") as server:
        yield {"base": server + "/api/v1", "env": env, "rid": rid, "audio": audio, "auditor": auditor, "ingest": ingest,
               "legal": legal, "revoked": revoked, "expired": expired, "log": tmp / "server.log"}


def call(api, path: str, token: str | None = None, headers: dict | None = None,
         body: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(api["base"] + path, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST", headers={
        **({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {}),
        **({"Content-Type": "application/json"} if body is not None else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_tokens_missing_unknown_expired_revoked_or_of_the_wrong_role_are_refused_and_recorded(api):
    for token, words in [(None, "authentication required"), ("arc_nope_secret", "unknown token"),
                         (api["expired"], "expired"), (api["revoked"], "revoked"), ("Basic xyz", "not an archive")]:
        status, headers, body = call(api, "/search?q=refund", token)
        doc = json.loads(body)
        assert status == 401 and doc["code"] == "token_invalid" and words in doc["message"], (token, doc)
        assert headers.get("www-authenticate") == "Bearer"
    status, _, body = call(api, "/search?q=refund", api["ingest"])  # an ingest token may not search
    assert status == 403 and json.loads(body)["code"] == "access_denied"
    trail = run(api["env"], "audit", "show", "--json", "--record", "x", check=False)  # (no record named)
    assert trail.returncode == 0
    from archive.services import open_archive
    from archive.settings import Settings

    events = [e.event for e in open_archive(Settings.from_env(api["env"])).audit.events()]
    denied = [e for e in events if e["outcome"] == "denied" and e["target"].get("via") == "api"]
    assert len(denied) >= 6 and {"(none)", "rec"} <= {e["actor"] for e in denied}


def test_search_and_content_with_a_reason(api):
    token, rid = api["auditor"], api["rid"]
    status, _, body = call(api, "/search?q=agent:1042&facets=channel,month&total=true", token)
    doc = json.loads(body)
    assert status == 200 and doc["total"] == 1 and doc["records"][0]["record_id"] == rid
    assert doc["facets"]["channel"] == [{"value": "phone", "count": 1}]
    status, _, body = call(api, f"/records/{rid}", token)  # content needs a reason
    assert status == 403 and "reason" in json.loads(body)["message"]
    status, _, body = call(api, f"/records/{rid}", token, {"X-Archive-Reason": "QA%20sample"})
    doc = json.loads(body)
    assert status == 200 and doc["record_id"] == rid and doc["retention"]["retain_until"]
    assert all("inline" not in p for p in doc["parts"])
    status, _, body = call(api, f"/records/{rid}/retention", token)
    assert status == 200 and json.loads(body)["explanation"]
    audit = run(api["env"], "audit", "show", "--record", rid).stdout.decode()
    assert "ann (auditor)  view ok  reason: QA sample" in audit


def test_parts_stream_whole_and_serve_ranges_from_any_point(api):
    token, rid, audio = api["auditor"], api["rid"], api["audio"]
    status, headers, body = call(api, f"/records/{rid}/parts/audio?reason=playback", token)
    assert status == 200 and body == audio and headers["accept-ranges"] == "bytes"
    assert headers["content-type"].startswith("audio/")
    middle = len(audio) // 2
    status, headers, body = call(api, f"/records/{rid}/parts/audio?reason=seek", token,
                                 {"Range": f"bytes={middle}-{middle + 65535}"})
    assert status == 206 and body == audio[middle:middle + 65536]
    assert headers["content-range"] == f"bytes {middle}-{middle + 65535}/{len(audio)}"
    # an open range, as a player asks after a seek: answered to the end of that sealed segment (1 MiB)
    status, headers, body = call(api, f"/records/{rid}/parts/audio?reason=seek", token, {"Range": f"bytes={middle}-"})
    end = max(middle + 256 * 1024, (middle // 2**20 + 1) * 2**20)
    assert status == 206 and headers["content-range"] == f"bytes {middle}-{end - 1}/{len(audio)}"
    assert body == audio[middle:end]
    status, headers, body = call(api, f"/records/{rid}/parts/audio?reason=seek", token,
                                 {"Range": f"bytes={len(audio) - 10}-"})
    assert status == 206 and body == audio[-10:]
    status, headers, body = call(api, f"/records/{rid}/parts/audio?reason=tail", token, {"Range": "bytes=-100"})
    assert status == 206 and body == audio[-100:]
    status, headers, body = call(api, f"/records/{rid}/parts/audio?reason=x", token,
                                 {"Range": f"bytes={len(audio)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(audio)}"
    audit = run(api["env"], "audit", "show", "--record", rid).stdout.decode()
    assert "retrieve ok  reason: seek" in audit


def test_bad_requests_get_json_errors_never_a_stack_trace(api):
    token = api["auditor"]
    cases = [("/records/rnot-a-record?reason=x", 404), (f"/records/r{'a' * 32}?reason=x", 404),
             (f"/records/{api['rid']}/parts/nothing?reason=x", 404), ("/search?q=(unclosed", 400),
             ("/search?cursor=junk", 400), ("/search?facets=colour", 422), ("/search?limit=0", 422),
             ("/timeline", 422), ("/timeline?customer=C-1&account=A", 422)]
    for path, expected in cases:
        status, _, body = call(api, path, token)
        assert status == expected, (path, status, body)
        doc = json.loads(body)
        assert "Traceback" not in body.decode() and ("code" in doc or "detail" in doc), (path, doc)
    searches = lambda: run(api["env"], "audit", "show", "--record", api["rid"]).stdout.decode().count("search ok")  # noqa: E731
    before = searches()
    status, _, body = call(api, "/timeline?customer=C-1", token)
    assert status == 200 and [r["record_id"] for r in json.loads(body)["records"]] == [api["rid"]]
    assert "Traceback" not in api["log"].read_text()
    assert searches() == before + 1  # the timeline is in the record's access history


def test_the_openapi_document_describes_every_endpoint(api):
    status, _, body = call(api, "/openapi.json")
    paths = json.loads(body)["paths"]
    assert status == 200
    assert {"/api/v1/search", "/api/v1/timeline", "/api/v1/records/{record_id}",
            "/api/v1/records/{record_id}/parts/{part}", "/api/v1/records/{record_id}/retention", "/api/v1/holds",
            "/api/v1/status"} <= set(paths)


def test_holds_events_and_a_records_audit_history_over_http(api):
    rid = api["rid"]
    status, _, body = call(api, "/holds", api["auditor"], body={"case": "CASE-9", "records": [rid], "reason": "r"})
    assert status == 403  # an auditor may not place holds
    status, _, body = call(api, "/holds", api["legal"], body={"case": "CASE-9", "records": [rid], "reason": "dispute"})
    assert status == 201 and json.loads(body)["records"] == [rid]
    status, _, body = call(api, "/holds", api["legal"])
    assert status == 200 and json.loads(body)["holds"][0]["case"] == "CASE-9"
    status, _, body = call(api, "/search?q=hold:case-9", api["auditor"])
    assert [r["record_id"] for r in json.loads(body)["records"]] == [rid]
    status, _, body = call(api, "/holds/CASE-9/release-requests", api["legal"], body={"reason": "settled"})
    assert status == 202 and "approve" in json.loads(body)["next"]
    status, _, body = call(api, "/holds", api["legal"], body={"case": "CASE-9", "records": [rid]})
    assert status == 422 and "Traceback" not in body.decode()  # no reason: refused by the schema
    status, _, body = call(api, "/events", api["legal"], body={"kind": "dispute-opened", "date": "2024-06-01",
                                                                "customer": "C-1", "dispute": "D-1"})
    assert status == 201, body
    status, _, body = call(api, "/events", api["legal"], body={"kind": "dispute-opened", "date": "2999-01-01",
                                                                "customer": "C-1", "dispute": "D-2"})
    assert status in (400, 422) and "future" in json.loads(body)["message"]
    status, _, body = call(api, f"/records/{rid}/audit", api["auditor"])
    actions = [(e["actor"], e["action"]) for e in json.loads(body)["events"]]
    assert ("lee", "hold") in actions and ("ann", "retrieve") in actions


def upload(api, token: str, files: list[tuple[str, bytes]]) -> tuple[int, dict]:
    return apikit.upload(api["base"].removesuffix("/api/v1"), token, files)


def test_an_upload_is_ingested_once_and_bad_uploads_are_refused_with_their_reason(api):
    audio = wav_bytes(20.0, 5)
    sidecar = json.dumps({"schema": "archive-record/1", "source": {"system": "t", "interaction_id": "up-1"},
                          "channel": "phone", "started_at": "2024-04-02T09:00:00Z",
                          "participants": [{"role": "agent", "id": "77"}]}).encode()
    status, doc = upload(api, api["auditor"], [("up-1.wav", audio), ("up-1.json", sidecar)])
    assert status == 403  # an auditor may not ingest
    status, doc = upload(api, api["ingest"], [("up-1.wav", audio), ("up-1.json", sidecar)])
    assert status == 201 and doc["archived"] == 1, doc
    rid = doc["outcomes"][0]["record_ids"][0]
    assert doc["outcomes"][0]["origin"] == "upload:up-1.wav"
    status, doc = upload(api, api["ingest"], [("up-1.wav", audio), ("up-1.json", sidecar)])
    assert status == 200 and doc["duplicate"] == 1 and doc["outcomes"][0]["record_ids"] == [rid]
    status, _, body = call(api, f"/records/{rid}/parts/audio?reason=check", api["auditor"])
    assert status == 200 and body == audio
    status, doc = upload(api, api["ingest"], [("broken.wav", audio[:2000]), ("broken.json", sidecar)])
    assert status == 422 and doc["code"] == "input_rejected" and "upload:broken.wav" in doc["message"], doc
    assert doc["details"]["outcomes"][0]["code"] in ("corrupt_media", "media_error")
    for hostile in ("../evil.json", "a\x07b.json", ".hidden.json"):
        status, doc = upload(api, api["ingest"], [(hostile, sidecar)])
        assert status == 422 and doc["code"] == "input_error", (hostile, doc)
    assert not any((Path(api["env"]["ARCHIVE_HOME"]) / "uploads").iterdir())  # nothing left behind
    status, _, body = call(api, "/quarantine", api["auditor"])
    assert any(e["origin"] == "upload:broken.wav" for e in json.loads(body)["rejected"])


def test_registering_an_inbox_file_needs_an_inbox(api):
    status, _, body = call(api, "/ingest/register", api["ingest"], body={"name": "calls/c-1.wav"})
    assert status == 409 and json.loads(body)["code"] == "inbox_not_configured"


def test_the_console_session_cookie_and_its_cross_site_guard(api):
    status, headers, body = call(api, "/session", body={"token": api["auditor"]})
    assert status == 200 and json.loads(body)["role"] == "auditor"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/api/v1" in cookie
    session = {"Cookie": cookie.split(";")[0]}
    status, _, body = call(api, "/session", headers=session)
    assert status == 200 and json.loads(body)["actor"] == "ann"
    status, _, body = call(api, "/search?q=agent:1042", headers=session)
    assert status == 200 and json.loads(body)["records"]
    # a state-changing request with only the cookie (what a cross-site form could send) is refused
    status, _, body = call(api, "/holds", headers=session, body={"case": "X", "records": [api["rid"]], "reason": "r"})
    assert status == 403 and json.loads(body)["code"] == "console_header_missing"
    status, _, body = call(api, "/session", body={"token": "arc_x_nope"})
    assert status == 401
    status, headers, _ = call(api, "/openapi.json")
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"


def test_search_results_are_summaries_without_content(api):
    status, _, body = call(api, "/search?q=", api["auditor"])
    for r in json.loads(body)["records"]:
        assert "metadata" not in r and isinstance(r["messages"], int)  # how many, not what they say
        assert set(r) >= {"record_id", "started_at", "channel", "participants", "parts", "findings", "holds"}


def test_an_export_job_interrupted_by_a_restart_is_marked_failed(tmp_path):
    from archive.jobs import ExportJobs

    root = tmp_path / "exports"
    (root / "x-20240101-0123456789ab").mkdir(parents=True)
    job = {"id": "x-20240101-0123456789ab", "state": "running", "created_at": "2024-01-01T00:00:00+00:00",
           "host": __import__("socket").gethostname(), "pid": 2**22 + 12345, "records": []}
    (root / job["id"] / "job.json").write_text(json.dumps(job))
    (root / job["id"] / ".bundle.zip.1.tmp").write_bytes(b"half")
    jobs = ExportJobs(root, services=None)
    assert jobs.get(job["id"])["state"] == "failed" and "interrupted" in jobs.get(job["id"])["error"]
    assert not (root / job["id"] / ".bundle.zip.1.tmp").exists()


def test_parts_of_a_record_disposed_of_are_no_longer_served(tmp_path):
    """The server remembers a record's manifest to serve its parts quickly; once the record is disposed
    of, neither its sealed audio nor its transcript, carried inside the manifest, is served any more."""
    from archive.clock import FixedClock
    from archive.index.sqlite import SqliteIndex
    from archive.ingest.discover import Limits
    from archive.ingest.pipeline import Ingestor
    from archive.retention.service import Retention
    from archive.services import open_archive
    from archive.settings import Settings

    env = cli_env(tmp_path / "home", "admin")
    run(env, "init")
    run(env, "identity", "add", "ann", "--role", "auditor")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    old = {"started_at": "2010-03-01T09:00:00Z", "participants": [{"role": "agent", "id": "7"}]}
    (inbox / "call-9.wav").write_bytes(wav_bytes(200.0, 2))
    (inbox / "call-9.json").write_text(json.dumps({**old, "schema": "archive-record/1", "channel": "phone",
                                                   "source": {"system": "t", "interaction_id": "call-9"}}))
    (inbox / "chat-9.json").write_text(json.dumps({**old, "schema": "archive-record/1", "channel": "chat",
                                                   "source": {"system": "t", "interaction_id": "chat-9"},
                                                   "messages": [{"at": "2010-03-01T09:00:01Z", "from": "7",
                                                                 "text": "hello"}]}))
    # ingested in 2015: kept ten years from 2010 (the default policy), so due now
    settings = Settings.from_env(env)
    archive = open_archive(settings)
    clock = FixedClock(datetime(2015, 1, 1, tzinfo=UTC))
    archive.store.clock = clock
    index = SqliteIndex(settings.index_path)
    summary = Ingestor(archive, index, retention=Retention(archive, index, clock=clock)).run([inbox], limits=Limits())
    index.close()
    assert summary.archived == 2, summary.outcomes
    ids = {o.origin.rsplit("/", 1)[1].split(".")[0]: o.record_ids[0] for o in summary.outcomes}
    token = run(env, "token", "create", "ann", "--role", "auditor").stdout.decode().strip()
    with served(env, tmp_path / "server.log") as server:
        api = {"base": server + "/api/v1"}
        for rid, part in ((ids["call-9"], "audio"), (ids["chat-9"], "transcript")):
            for headers in ({}, {"Range": "bytes=0-"}):
                status, _, _ = call(api, f"/records/{rid}/parts/{part}?reason=check", token, headers)
                assert status in (200, 206), (part, status)
        disposed = run(env, "dispose", "--reviewed", ids["call-9"], "--reviewed", ids["chat-9"], "--json")
        assert sorted(r["record_id"] for r in json.loads(disposed.stdout)["results"]
                      if r["action"] == "deleted") == sorted(ids.values())
        for rid, part in ((ids["call-9"], "audio"), (ids["chat-9"], "transcript")):
            for headers in ({}, {"Range": "bytes=0-"}):
                status, _, body = call(api, f"/records/{rid}/parts/{part}?reason=check", token, headers)
                assert status == 404, (part, headers, status, body[:200])
