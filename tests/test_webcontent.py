"""Unit tests (no server) of what the API lets a browser do with archived content (archive.webcontent),
of receiving an upload with its limits enforced as it streams (archive.uploads), and of the console's
sessions (archive.tokens.ConsoleSessions): opaque ids stored as hashes, ended by sign-out, idle time, the
token's revocation or expiry, and shared between processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from archive.errors import InputError
from archive.uploads import MAX_FILES, BadUpload, MultipartReceiver, TooLarge, check_length
from archive.webcontent import (HTML_VIEW_CSP, PART_CSP, PART_DESTINATIONS, content_disposition, html_media_type,
                                inline_media_type, part_headers, refused_destination)

ROOT = Path(__file__).resolve().parent.parent


# --- what is served inline, and how ---------------------------------------------------------------


@pytest.mark.parametrize("declared", [
    "text/html", "text/html; charset=utf-8", "application/xhtml+xml", "image/svg+xml", "application/javascript",
    "text/javascript", "application/ecmascript", "text/xml", "application/xml", "application/pdf",
    "message/rfc822", "multipart/related", "text/css", "application/x-shockwave-flash", "application/json",
    "audio/svg+xml", "video/html", "text/plain\r\nContent-Type: text/html", "", "garbage", "text/ plain"])
def test_types_a_browser_could_make_active_are_never_served_as_themselves(declared):
    assert inline_media_type(declared) is None
    media, headers = part_headers("r1", "attachment-1", "x.bin", declared, False)
    assert media == "application/octet-stream"
    assert dict(headers)["Content-Disposition"].startswith("attachment;")


@pytest.mark.parametrize("declared, served", [
    ("audio/wav", "audio/wav"), ("audio/mpeg", "audio/mpeg"), ("video/mp4", "video/mp4"), ("VIDEO/WebM", "video/webm"),
    ("image/png", "image/png"), ("image/jpeg", "image/jpeg"), ("text/plain; charset=utf-8", "text/plain; charset=utf-8"),
    ("text/plain; charset=UTF-7", "text/plain"), ("text/plain; charset=utf-8\r\nSet-Cookie: x=1", "text/plain"),
    ("text/vtt; charset=utf-8", "text/vtt; charset=utf-8")])
def test_media_plain_text_and_raster_images_are_served_inline_with_a_clean_type(declared, served):
    assert inline_media_type(declared) == served
    media, headers = part_headers("r1", "audio", None, declared, False)
    assert media == served and dict(headers)["Content-Disposition"] == 'inline; filename="r1-audio"'
    media, headers = part_headers("r1", "audio", None, declared, True)  # a download is always an attachment
    assert media == "application/octet-stream" and dict(headers)["Content-Disposition"].startswith("attachment;")


def test_every_part_response_is_sandboxed_script_less_and_not_sniffed():
    _, headers = part_headers("r1", "body", None, "text/plain", False)
    headers = dict(headers)
    assert headers["Content-Security-Policy"] == PART_CSP and PART_CSP.startswith("sandbox; default-src 'none'")
    assert "script" not in PART_CSP and headers["X-Content-Type-Options"] == "nosniff"
    assert HTML_VIEW_CSP.startswith("sandbox; default-src 'none'") and "script" not in HTML_VIEW_CSP
    assert "frame-ancestors 'self'" in HTML_VIEW_CSP and "img-src data:;" in HTML_VIEW_CSP


def test_file_names_follow_rfc_6266_without_controls_bidi_or_paths():
    assert content_disposition("attachment", "r1-Rechnung für März.pdf") == \
        "attachment; filename=\"r1-Rechnung_f_r_M_rz.pdf\"; filename*=UTF-8''r1-Rechnung%20f%C3%BCr%20M%C3%A4rz.pdf"
    assert content_disposition("attachment", "r1-invoice\u202egpj.exe") == 'attachment; filename="r1-invoicegpj.exe"'
    hostile = content_disposition("attachment", 'r1-a"; filename="evil.html\r\n\x00.txt')
    assert "\r" not in hostile and "\n" not in hostile and "\x00" not in hostile
    assert hostile.count('"') == 2 and 'filename*=UTF-8\'\'r1-a%22%3B%20filename%3D%22evil.html.txt' in hostile
    assert content_disposition("attachment", "../../etc/passwd") == 'attachment; filename="passwd"'
    assert content_disposition("inline", "") == 'inline; filename="part"'


def test_the_html_body_keeps_its_charset_unless_it_is_utf_7():
    assert html_media_type("text/html; charset=GB2312") == "text/html; charset=gb2312"
    assert html_media_type("text/html; charset=utf-7") == "text/html"
    assert html_media_type("text/html") == "text/html"


@pytest.mark.parametrize("dest", ["script", "style", "worker", "sharedworker", "serviceworker", "audioworklet",
                                  "paintworklet", "embed", "object", "iframe", "frame", "font", "manifest", "xslt",
                                  "json", "something-new"])
def test_parts_are_refused_to_anything_that_runs_styles_or_frames_them(dest):
    assert refused_destination(dest, PART_DESTINATIONS)


@pytest.mark.parametrize("dest", [None, "", "document", "empty", "audio", "video", "track", "image"])
def test_parts_are_served_to_navigation_fetch_players_and_images(dest):
    assert refused_destination(dest, PART_DESTINATIONS) is None


# --- uploads ---------------------------------------------------------------------------------------


def multipart(files: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    out = b""
    for name, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def receive(tmp_path: Path, body: bytes, kind: str, limit: int = 1000, chunk: int = 7) -> list[str]:
    receiver = MultipartReceiver(kind, tmp_path, max_file_bytes=limit)
    try:
        for i in range(0, len(body), chunk):
            receiver.feed(body[i:i + chunk])
        return receiver.finish()
    finally:
        receiver.close()


def fresh(directory: Path) -> Path:
    directory.mkdir()
    return directory


def test_an_upload_is_written_file_by_file_as_it_streams(tmp_path):
    body, kind = multipart([("call.wav", b"RIFF" + bytes(range(256)) * 3), ("call.json", b'{"a": 1}')])
    assert receive(tmp_path, body, kind) == ["call.wav", "call.json"]
    assert (tmp_path / "call.wav").read_bytes() == b"RIFF" + bytes(range(256)) * 3
    assert stat.S_IMODE(os.stat(tmp_path / "call.json").st_mode) == 0o600


def test_a_file_over_the_limit_stops_the_upload_at_that_byte(tmp_path):
    body, kind = multipart([("small.json", b"{}"), ("big.wav", b"x" * 5000), ("after.txt", b"never")])
    with pytest.raises(TooLarge) as e:
        receive(tmp_path, body, kind, limit=1000)
    assert e.value.http_status == 413 and "big.wav" in str(e.value)
    assert (tmp_path / "big.wav").stat().st_size <= 1000 and not (tmp_path / "after.txt").exists()


@pytest.mark.parametrize("name, words", [("../evil.json", "could escape"), ("a\x07b.json", "control"),
                                         (".hidden.json", "hidden"), ("", "empty")])
def test_hostile_file_names_are_refused_before_a_byte_is_written(tmp_path, name, words):
    body, kind = multipart([(name, b"{}")])
    with pytest.raises(InputError) as e:
        receive(tmp_path, body, kind)
    assert words in str(e.value) and list(tmp_path.iterdir()) == []


def test_bodies_that_are_not_one_complete_upload_are_refused(tmp_path):
    body, kind = multipart([("a.json", b"{}")])
    with pytest.raises(BadUpload, match="closing boundary"):
        receive(tmp_path, body[:-30], kind)
    with pytest.raises(BadUpload, match="multipart/form-data"):
        MultipartReceiver("application/json", tmp_path, max_file_bytes=10)
    with pytest.raises(BadUpload, match="no file"):
        receive(fresh(tmp_path / "x"),
                b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--b--\r\n",
                "multipart/form-data; boundary=b")
    dupes, kind = multipart([("a.json", b"{}"), ("a.json", b"{}")])
    with pytest.raises(InputError, match="twice"):
        receive(fresh(tmp_path / "y"), dupes, kind)
    many, kind = multipart([(f"f{i}.json", b"{}") for i in range(MAX_FILES + 1)])
    with pytest.raises(TooLarge, match="at most"):
        receive(fresh(tmp_path / "z"), many, kind)


def test_a_content_length_no_upload_can_have_is_refused_before_reading():
    check_length(None, 1000)
    check_length(str(MAX_FILES * 1000), 1000)
    with pytest.raises(TooLarge):
        check_length(str(500 * 1024**2), 1000)
    with pytest.raises(BadUpload):
        check_length("lots", 1000)


# --- console sessions ------------------------------------------------------------------------------


@pytest.fixture
def sessions(tmp_path):
    from archive.access import Identities
    from archive.tokens import ConsoleSessions, Tokens

    identities = Identities(tmp_path / "identities.json")
    identities.set("ann", ["auditor"])
    tokens = Tokens(tmp_path / "tokens.json", identities)
    return ConsoleSessions(tmp_path / "sessions.sqlite", tokens), tokens


def test_a_session_id_is_opaque_random_and_stored_only_as_a_hash(sessions, tmp_path):
    store, tokens = sessions
    secret, _ = tokens.create("ann", "auditor")
    token = tokens.authenticate(secret)
    session_id, info = store.start(token)
    other, _ = store.start(token)
    assert session_id.startswith("ses_") and session_id != other and secret not in session_id
    assert secret.split("_", 2)[2] not in session_id and len(session_id) > 40
    assert store.authenticate(session_id).actor == "ann"
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("sessions.sqlite*"))
    assert session_id.encode() not in stored and store.reference(session_id).encode() in stored
    assert stat.S_IMODE(os.stat(tmp_path / "sessions.sqlite").st_mode) == 0o600
    assert info["idle_timeout_s"] == store.IDLE and info["max_age_s"] <= store.MAX_AGE


def test_a_session_ends_with_sign_out_idle_time_its_age_and_its_token(sessions):
    from archive.tokens import TokenInvalid

    store, tokens = sessions
    secret, entry = tokens.create("ann", "auditor")
    token = tokens.authenticate(secret)
    t0 = datetime.now(UTC).timestamp()
    used, _ = store.start(token, now=t0)
    store.authenticate(used, now=t0 + store.IDLE - 10)  # in use: the idle clock starts again
    assert store.authenticate(used, now=t0 + 2 * store.IDLE - 20).actor == "ann"
    idle, _ = store.start(token, now=t0)
    with pytest.raises(TokenInvalid, match="without use"):
        store.authenticate(idle, now=t0 + store.IDLE + 1)
    with pytest.raises(TokenInvalid, match="unknown or was signed out"):  # and it is gone for good
        store.authenticate(idle, now=t0)
    aged, _ = store.start(token, now=t0)
    for step in range(1, 13 * 60 // 20):  # used every 20 minutes: still ends 12 hours after it began
        try:
            store.authenticate(aged, now=t0 + step * 1200)
        except TokenInvalid as e:
            assert "expired" in str(e) and step * 1200 >= store.MAX_AGE
            break
    else:
        pytest.fail("a session in use never expired")
    out, _ = store.start(token)
    assert store.end(out) and not store.end(out)
    with pytest.raises(TokenInvalid, match="signed out"):
        store.authenticate(out)
    demoted, _ = store.start(token)
    tokens.identities.set("ann", ["legal"])  # the identity loses the token's role
    with pytest.raises(TokenInvalid, match="no longer holds"):
        store.authenticate(demoted)
    tokens.identities.set("ann", ["auditor"])
    live, _ = store.start(token)
    tokens.revoke(entry["id"])
    with pytest.raises(TokenInvalid, match="revoked"):
        store.authenticate(live)
    for bogus in (None, "", "arc_x_y", secret, "ses_" + "A" * 43, "ses_" + "x" * 200):
        with pytest.raises(TokenInvalid):
            store.authenticate(bogus)


def test_a_session_ends_with_its_tokens_expiry(sessions):
    from archive.tokens import TokenInvalid

    store, tokens = sessions
    secret, _ = tokens.create("ann", "auditor", expires="PT1H", now=datetime.now(UTC) - timedelta(minutes=50))
    session_id, info = store.start(tokens.authenticate(secret))
    assert info["max_age_s"] <= 600  # the cookie lives no longer than the token
    with pytest.raises(TokenInvalid, match="expired"):
        store.authenticate(session_id, now=datetime.now(UTC).timestamp() + 601)


def test_sessions_are_shared_by_the_processes_of_one_archive(sessions, tmp_path):
    """What ``archive serve --workers N`` relies on: a session started in one process is honoured, and
    ended, in another."""
    store, tokens = sessions
    secret, _ = tokens.create("ann", "auditor")
    session_id, _ = store.start(tokens.authenticate(secret))
    code = ("import sys; from pathlib import Path; from archive.access import Identities; "
            "from archive.tokens import ConsoleSessions, Tokens; h = Path(sys.argv[1]); "
            "s = ConsoleSessions(h / 'sessions.sqlite', Tokens(h / 'tokens.json', Identities(h / 'identities.json'))); "
            "print(s.authenticate(sys.argv[2]).actor, s.end(sys.argv[2]))")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path), session_id], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert other.stdout.split() == ["ann", "True"], other.stderr
    from archive.tokens import TokenInvalid

    with pytest.raises(TokenInvalid, match="signed out"):  # ended over there: ended here
        store.authenticate(session_id)


def test_a_damaged_session_store_is_an_archive_error_not_a_crash(sessions, tmp_path):
    from archive.tokens import SessionsUnavailable

    store, tokens = sessions
    (tmp_path / "sessions.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(SessionsUnavailable) as e:
        store.authenticate("ses_" + "x" * 43)
    assert e.value.http_status == 503 and "sessions.sqlite" in str(e.value)
