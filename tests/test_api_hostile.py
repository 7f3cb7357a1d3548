"""The HTTP API against hostile content and hostile clients, on a real server (``archive serve`` in its
own process, or uvicorn in this one where a failure has to be injected):

* an e-mail's parts are served as attachments, never as the sender's type; every part response is
  sandboxed; a part asked for as a script is refused and audited; the HTML view is fenced;
* a download that fails mid-way (a tampered sealed segment) is cut short and audited as an error, and
  one the client abandons is not audited ``ok``; a rejected upload is audited with its true outcome;
* an upload is not read before its token is checked, a body larger than the limit is refused before it
  is read or at the byte it passes the limit, and nothing is kept;
* the console's cookie is an opaque session id that sign-out, revocation and cross-site use end;
* any failure inside an attempt — an exception the library did not mean — is audited and answered as
  JSON, never a bare 500.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import wave
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.apikit import free_port, served, upload
from tests.test_cli import cli_env, run
from tests.workerkit import wav_bytes

LIMIT = 4 * 1024 * 1024  # the server's ARCHIVE_MAX_INPUT_BYTES


def noise_wav(seconds: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(os.urandom(32000 * seconds))
    return buf.getvalue()


def sidecar(iid: str) -> str:
    return json.dumps({"schema": "archive-record/1", "source": {"system": "t", "interaction_id": iid},
                       "channel": "phone", "started_at": "2024-03-01T09:00:00Z",
                       "participants": [{"role": "agent", "id": "1042"}]})


def email() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@vendor.example", "b@bank.example", "Invoice"
    msg["Date"], msg["Message-ID"] = "Mon, 03 Jun 2024 09:00:00 +0000", "<inv-1@vendor.example>"
    msg.set_content("plain text\n")
    msg.add_alternative("<p>html <script>alert(1)</script></p>", subtype="html")
    msg.add_attachment(b"<script>alert(2)</script>", maintype="text", subtype="html", filename="Rechnung für März.html")
    return msg.as_bytes()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    env = cli_env(tmp / "home", "admin")
    inbox = tmp / "inbox"
    inbox.mkdir()
    (inbox / "call-1.wav").write_bytes(wav_bytes(200.0, 3))  # 3.2 MB: four sealed segments
    (inbox / "call-1.json").write_text(sidecar("call-1"))
    (inbox / "long-1.wav").write_bytes(noise_wav(640))  # 20 MB: more than socket buffers hold
    (inbox / "long-1.json").write_text(sidecar("long-1"))
    (inbox / "invoice.eml").write_bytes(email())
    run(env, "init")
    for actor, role in (("ann", "auditor"), ("rec", "ingest"), ("lee", "legal")):
        run(env, "identity", "add", actor, "--role", role)
    run(env, "ingest", str(inbox))  # (the CLI with the default limit; the server's is LIMIT)
    ids = {r["source"]["interaction_id"]: r["record_id"]
           for r in json.loads(run(env, "search", "", "--json").stdout)["records"]}
    tokens = {actor: run(env, "token", "create", actor, "--role", role).stdout.decode().strip()
              for actor, role in (("ann", "auditor"), ("rec", "ingest"), ("lee", "legal"))}
    server_env = {**env, "ARCHIVE_MAX_INPUT_BYTES": str(LIMIT)}
    with served(server_env, tmp / "server.log") as base:
        yield {"base": base, "env": env, "home": Path(env["ARCHIVE_HOME"]), "ids": ids, "tokens": tokens,
               "log": tmp / "server.log", "tmp": tmp}


def call(api, path: str, token: str | None = None, headers: dict | None = None, body: dict | None = None,
         method: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(api["base"] + "/api/v1" + path, data=None if body is None else json.dumps(body).encode(),
                                 method=method or ("GET" if body is None else "POST"), headers={
        **({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {}),
        **({"Content-Type": "application/json"} if body is not None else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def events(api) -> list[dict]:
    from archive.services import open_archive
    from archive.settings import Settings

    return [e.event for e in open_archive(Settings.from_env(api["env"])).audit.events()]


def wait_for_event(api, match, what: str) -> dict:
    """The first audit event ``match`` accepts, once the server has written it (it writes a streamed
    response's event when the stream ends, after the client has seen its last byte)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [e for e in events(api) if match(e)]
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"no audit event: {what}")


# --- parts: attachments, sandboxed, never scripts --------------------------------------------------


def test_an_emails_parts_are_attachments_and_a_part_is_never_a_script(api):
    rid, token = api["ids"]["inv-1@vendor.example"], api["tokens"]["ann"]
    status, _, body = call(api, f"/records/{rid}", token, {"X-Archive-Reason": "check"})
    parts = {p["name"]: p for p in json.loads(body)["parts"]}
    assert parts["body-html"]["media_type"].startswith("text/html")  # what the sender said stays on record
    for name in ("body-html", "attachment-1", "message"):
        status, headers, _ = call(api, f"/records/{rid}/parts/{name}?reason=check", token)
        assert status == 200 and headers["content-type"] == "application/octet-stream", (name, headers)
        assert headers["content-disposition"].startswith("attachment; filename=")
        assert headers["content-security-policy"].startswith("sandbox; default-src 'none'")
        assert headers["x-content-type-options"] == "nosniff"
    _, headers, _ = call(api, f"/records/{rid}/parts/attachment-1?reason=check", token)
    assert headers["content-disposition"] == (f"attachment; filename=\"{rid}-Rechnung_f_r_M_rz.html\"; "
                                              f"filename*=UTF-8''{rid}-Rechnung%20f%C3%BCr%20M%C3%A4rz.html")
    _, headers, _ = call(api, f"/records/{rid}/parts/body?reason=check", token)
    assert headers["content-type"] == "text/plain; charset=utf-8" and headers["content-disposition"].startswith("inline")
    # asked for as a script, a style sheet, a worker or a frame: refused, and the refusal is on record
    for dest in ("script", "style", "worker", "iframe", "object"):
        status, _, body = call(api, f"/records/{rid}/parts/attachment-1?reason=check", token, {"Sec-Fetch-Dest": dest})
        assert status == 403 and json.loads(body)["code"] == "content_use_refused", (dest, body)
    refused = [e for e in events(api) if e["action"] == "retrieve" and e["outcome"] == "denied"
               and e["target"].get("part") == "attachment-1"]
    assert len(refused) == 5 and all("Sec-Fetch-Dest" in e["details"]["denied"] for e in refused)
    # the players keep their type, inline, and their ranges
    call_id = api["ids"]["call-1"]
    for dest in ("audio", "video", "empty", None):
        status, headers, body = call(api, f"/records/{call_id}/parts/audio?reason=play", token,
                                     {"Range": "bytes=1000-1999", **({"Sec-Fetch-Dest": dest} if dest else {})})
        assert status == 206 and len(body) == 1000 and headers["content-type"] == "audio/wav", (dest, headers)
        assert headers["content-disposition"].startswith("inline")


def test_the_html_view_is_fenced_audited_and_needs_a_reason(api):
    rid, token = api["ids"]["inv-1@vendor.example"], api["tokens"]["ann"]
    status, _, body = call(api, f"/records/{rid}/html", token)
    assert status == 403 and "reason" in json.loads(body)["message"]
    status, headers, body = call(api, f"/records/{rid}/html?reason=read%20the%20invoice", token)
    assert status == 200 and b"<p>html" in body and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == ("sandbox; default-src 'none'; style-src 'unsafe-inline'; "
                                                  "img-src data:; frame-ancestors 'self'; base-uri 'none'; "
                                                  "form-action 'none'")
    assert headers["x-frame-options"] == "SAMEORIGIN" and headers["x-content-type-options"] == "nosniff"
    status, _, body = call(api, f"/records/{rid}/html?reason=x", token, {"Sec-Fetch-Dest": "script"})
    assert status == 403 and json.loads(body)["code"] == "content_use_refused"
    status, _, body = call(api, f"/records/{api['ids']['call-1']}/html?reason=x", token)
    assert status == 404 and "body-html" in json.loads(body)["message"]
    viewed = wait_for_event(api, lambda e: e["action"] == "retrieve" and e.get("reason") == "read the invoice",
                            "the HTML view")
    assert viewed["outcome"] == "ok" and viewed["target"]["part"] == "body-html" and viewed["actor"] == "ann"


# --- streamed downloads: audited when they end ---------------------------------------------------------


def test_a_download_cut_short_by_a_tampered_segment_is_audited_as_an_error(api):
    rid, token = api["ids"]["call-1"], api["tokens"]["ann"]
    status, _, body = call(api, f"/records/{rid}", token, {"X-Archive-Reason": "check"})
    size = next(p["size"] for p in json.loads(body)["parts"] if p["name"] == "audio")
    [stored] = [p for p in api["home"].rglob("*#data") if str(p).endswith(f"records/{rid}/part.audio#data")]
    os.chmod(stored, 0o644)  # an insider with file access: one bit of the third segment (index 2) flipped
    with open(stored, "r+b") as f:
        assert f.read(8) == b"ARCFSv1\n"  # the filesystem store's header, then the sealed object
        sealed_at = 12 + int.from_bytes(f.read(4), "big")
        segment = 1024 * 1024  # (docs/sealed-format.md: an 85-byte header, then segments of S + 16 bytes)
        f.seek(sealed_at + 85 + 2 * (segment + 16) + 500)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    req = urllib.request.Request(f"{api['base']}/api/v1/records/{rid}/parts/audio?reason=tamper%20check",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == size
        with pytest.raises(http.client.IncompleteRead) as e:  # the client sees a truncated response
            r.read()
    assert 0 < len(e.value.partial) <= 2 * segment
    event = wait_for_event(api, lambda e: e["action"] == "retrieve" and e.get("reason") == "tamper check",
                           "the tampered download")
    assert event["outcome"] == "error" and event["details"]["error"] == "integrity_error", event
    assert event["details"]["sent_bytes"] < size and event["target"]["records"] == [rid]
    # a range that starts in the tampered segment fails before its status: a JSON error, audited too
    status, _, body = call(api, f"/records/{rid}/parts/audio?reason=tamper%20range", token,
                           {"Range": f"bytes={2 * segment + 100}-{2 * segment + 200}"})
    assert status == 422 and json.loads(body)["code"] == "integrity_error"
    assert "Traceback" not in api["log"].read_text()


def test_a_download_the_client_abandons_is_not_audited_ok(api):
    rid, token = api["ids"]["long-1"], api["tokens"]["ann"]
    host, port = api["base"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET /api/v1/records/{rid}/parts/audio?reason=abandoned HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
    event = wait_for_event(api, lambda e: e["action"] == "retrieve" and e.get("reason") == "abandoned",
                           "the abandoned download")
    assert event["outcome"] == "error" and event["details"]["error"] == "transfer_interrupted", event
    assert event["details"]["sent_bytes"] < event["details"]["size"]
    status, _, body = call(api, f"/records/{rid}/parts/audio?reason=whole", token)  # a whole one: ok, at its end
    assert status == 200 and len(body) == event["details"]["size"]
    assert wait_for_event(api, lambda e: e.get("reason") == "whole", "the whole download")["outcome"] == "ok"


# --- uploads -----------------------------------------------------------------------------------------


def raw_upload(api, headers: dict, body_start: bytes) -> bytes:
    """Send an upload's headers and the start of its body, and read the response without sending the
    rest: a server that wanted the whole body first would never answer."""
    host, port = api["base"].removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "x", **headers}.items())
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(f"POST /api/v1/ingest HTTP/1.1\r\n{head}\r\n".encode() + body_start)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            chunk = s.recv(65536)
            assert chunk, got
            body += chunk
        return head + b"\r\n\r\n" + body


def nothing_kept(api) -> bool:
    uploads = api["home"] / "uploads"
    return not uploads.exists() or not any(uploads.iterdir())


def test_an_upload_without_a_valid_token_is_refused_before_its_body_is_read(api):
    start = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.wav\"\r\n\r\n" + b"x" * 1024**2)
    for auth in ({}, {"Authorization": "Bearer arc_nope_nope"}):
        answer = raw_upload(api, {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(500 * 1024**2),
                                  **auth}, start)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    # a valid token without the ingest role: refused too, before the body
    answer = raw_upload(api, {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(500 * 1024**2),
                              "Authorization": f"Bearer {api['tokens']['ann']}"}, start)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert nothing_kept(api)
    refused = [e for e in events(api) if e["action"] == "ingest" and e["outcome"] == "denied"]
    assert {e["actor"] for e in refused} >= {"(none)", "ann"}


def test_an_upload_larger_than_the_limit_is_refused_and_nothing_is_kept(api):
    token = api["tokens"]["rec"]
    start = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.wav\"\r\n\r\n"
    answer = raw_upload(api, {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(600 * 1024**2),
                              "Authorization": f"Bearer {token}"}, start)
    assert answer.startswith(b"HTTP/1.1 413") and b"input_too_large" in answer, answer[:400]
    # no Content-Length (chunked): refused at the byte that passes the limit
    host, port = api["base"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def body():
        yield start
        for _ in range(LIMIT // 65536 + 2):
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"
    conn.request("POST", "/api/v1/ingest", body=body(), encode_chunked=True,
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "multipart/form-data; boundary=b"})
    response = conn.getresponse()
    doc = json.loads(response.read())
    conn.close()
    assert response.status == 413 and doc["code"] == "input_too_large" and "big.wav" in doc["message"], doc
    assert nothing_kept(api)
    refused = [e for e in events(api) if e["action"] == "ingest" and e["outcome"] == "error"
               and e["details"].get("error") == "input_too_large"]
    assert len(refused) == 2


def test_a_rejected_upload_is_audited_with_its_true_outcome(api):
    status, doc = upload(api["base"], api["tokens"]["rec"], [("bad-1.wav", b"RIFF not really"),
                                                             ("bad-1.json", sidecar("bad-1").encode())])
    assert status == 422 and doc["code"] == "input_rejected", doc
    event = wait_for_event(api, lambda e: e["action"] == "ingest" and "bad-1.wav" in e["target"].get("upload", []),
                           "the rejected upload")
    assert event["outcome"] == "error" and event["details"]["error"] == "input_rejected", event
    assert event["target"]["rejected"] == 1 and event["target"]["archived"] == 0


def test_a_hostile_input_through_the_api_is_audited_and_answered_as_json(api):
    """A JSON integer of 5,000 digits or JSON nested 100,000 deep is quarantined (422, never a 500): the
    client gets a JSON error and the attempt is in the audit trail with the same code."""
    hostile = {"huge-number.json": ('{"schema": "archive-record/1", "duration_s": ' + "9" * 5000 + "}").encode(),
               "deep-nesting.json": b"[" * 100_000 + b"]" * 100_000}
    for name, data in hostile.items():
        status, doc = upload(api["base"], api["tokens"]["rec"], [(name, data)])
        assert status == 422 and doc["code"] == "input_rejected", (name, status, doc)
        event = wait_for_event(api, lambda e, n=name: e["action"] == "ingest" and n in e["target"].get("upload", []),
                               f"the upload of {name}")
        assert event["outcome"] == "error" and event["details"]["error"] == doc["code"], (name, event, doc)


# --- the console's session ------------------------------------------------------------------------------


def sign_in(api, token: str, headers: dict | None = None) -> tuple[str, str]:
    status, headers, body = call(api, "/session", body={"token": token}, headers=headers)
    assert status == 200, body
    return headers["set-cookie"], headers["set-cookie"].split(";")[0]


def test_the_session_cookie_is_an_opaque_id_that_sign_out_and_revocation_end(api):
    secret = api["tokens"]["ann"]
    header, cookie = sign_in(api, secret)
    value = cookie.split("=", 1)[1]
    assert value.startswith("ses_") and secret not in header and secret.split("_", 2)[2] not in header
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/api/v1" in header
    assert "Secure" not in header
    status, _, body = call(api, "/session", headers={"Cookie": cookie})
    assert status == 200 and json.loads(body)["actor"] == "ann"
    # a browser that marks the request as from another site, or from a sandboxed frame, gets nothing
    status, _, body = call(api, "/search?q=", headers={"Cookie": cookie, "Sec-Fetch-Site": "cross-site"})
    assert status == 403 and json.loads(body)["code"] == "cross_site_request"
    status, _, _ = call(api, "/search?q=", headers={"Cookie": cookie, "Sec-Fetch-Site": "same-origin"})
    assert status == 200
    # sign-out ends it on the server: the same cookie, replayed, is refused
    status, headers, _ = call(api, "/session", headers={"Cookie": cookie, "X-Archive-Console": "1"}, method="DELETE")
    assert status == 204 and "Max-Age=0" in headers["set-cookie"]
    status, _, body = call(api, "/session", headers={"Cookie": cookie})
    assert status == 401 and "signed out" in json.loads(body)["message"]
    # revoking the token ends every session started with it
    extra = run(api["env"], "token", "create", "ann", "--role", "auditor").stdout.decode().strip()
    _, cookie = sign_in(api, extra)
    assert call(api, "/search?q=", headers={"Cookie": cookie})[0] == 200
    run(api["env"], "token", "revoke", extra.split("_")[1])
    status, _, body = call(api, "/search?q=", headers={"Cookie": cookie})
    assert status == 401 and "revoked" in json.loads(body)["message"]
    # a raw token in the cookie (what the cookie used to hold) is no session
    status, _, _ = call(api, "/session", headers={"Cookie": f"archive_session={secret}"})
    assert status == 401
    # behind a TLS-terminating proxy (X-Forwarded-Proto from loopback) the cookie is Secure
    header, _ = sign_in(api, secret, {"X-Forwarded-Proto": "https"})
    assert "Secure" in header
    actions = [(e["action"], e["outcome"]) for e in events(api) if e["actor"] == "ann"]
    assert ("session-start", "ok") in actions and ("session-end", "ok") in actions
    assert not any(value in json.dumps(e) for e in events(api))  # the id itself is never recorded


# --- unexpected failures --------------------------------------------------------------------------------


@contextmanager
def in_process(env: dict, log: Path, patch):
    """``archive serve``'s app under uvicorn in this process, after ``patch(app)``: to make the library
    fail in ways it does not mean to."""
    import logging

    import uvicorn

    from archive.api import create_app
    from archive.settings import Settings

    app = create_app(Settings.from_env(env))
    patch(app)
    handler = logging.FileHandler(log)
    logging.getLogger("archive.api").addHandler(handler)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)
        logging.getLogger("archive.api").removeHandler(handler)


def test_an_exception_the_library_did_not_mean_is_audited_and_answered_as_json(api):
    def patch(app):
        def ingest(found, journal=None):
            raise RecursionError("maximum recursion depth exceeded (injected)")
        app.state.services.ingestor.ingest = ingest

    log = api["tmp"] / "in-process.log"
    with in_process(api["env"], log, patch) as base:
        status, doc = upload(base, api["tokens"]["rec"], [("boom-1.wav", wav_bytes(1.0, 1)),
                                                          ("boom-1.json", sidecar("boom-1").encode())])
    assert status == 500 and doc == {"code": "internal_error", "message": "the server failed; the error is in its log"}
    event = wait_for_event(api, lambda e: e["action"] == "ingest" and "boom-1.wav" in e["target"].get("upload", []),
                           "the failed ingest")
    assert event["outcome"] == "error" and event["details"]["error"] == "internal_error", event
    assert "RecursionError" in log.read_text()  # the operator finds the cause in the log
    assert nothing_kept(api)
