"""Access control against hostile input, careless operators and insiders, as a user meets it: real
``archive`` processes (and a real API server), real files, the audit trail read back.

Covers issue 25 — reasons that say nothing (spaces, zero-width and format characters) refused for every
hold action and approval on the CLI, in the library and through the API; an approval request tampered
with or rewritten to name another requester refused; search output without a reason showing no content,
and search and object access named in the record's history; outputs that never overwrite a file without
``--force`` nor any of the archive's own; every failure, expected or not, recorded with its true outcome;
control, C1 and bidi characters escaped on the terminal; private file modes; credentials in URLs never
echoed; identity changes that never lose each other — and issue 23's refused attempts by unknown
identities recorded with their reason and case.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from tests.apikit import served
from tests.test_cli import cli_env, run
from tests.workerkit import wav_bytes

BLANK_REASONS = ["", "   ", "\u200b\u200b", "\u3000\u2060\t", "\u202e", "\u00a0\u180e\ufeff"]
HOSTILE = "settled\u202eevil\u0085\x1b[2J\u2066x"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An archive with a chat (message text, an account number) and a call, and four identities."""
    tmp = tmp_path_factory.mktemp("access")
    env = cli_env(tmp / "home", "admin")
    inbox = tmp / "inbox"
    inbox.mkdir()
    (inbox / "chat-1.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": "chat-1"}, "channel": "chat",
        "started_at": "2024-04-01T10:00:00Z",
        "participants": [{"role": "customer", "id": "u77", "account": "AC-7788"}, {"role": "agent", "id": "9"}],
        "messages": [{"at": "2024-04-01T10:00:00Z", "from": "u77", "text": "please refund my deposit of 900"}]}))
    (inbox / "call-1.wav").write_bytes(wav_bytes(6.0, 1))  # over 64 KiB: a sealed object of its own
    (inbox / "call-1.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "pbx", "interaction_id": "call-1"}, "channel": "phone",
        "started_at": "2024-04-02T10:00:00Z", "participants": [{"role": "agent", "id": "9"},
                                                               {"role": "customer", "id": "u77"}]}))
    run(env, "init")
    for actor, role in (("lee", "legal"), ("kim", "legal"), ("ann", "auditor")):
        run(env, "identity", "add", actor, "--role", role)
    run(env, "ingest", str(inbox))
    found = json.loads(run(env, "search", "", "--json", "--reason", "test setup").stdout)["records"]
    ids = {r["metadata"]["source"]["interaction_id"]: r["record_id"] for r in found}
    return {"env": env, "tmp": tmp, "home": tmp / "home", "chat": ids["chat-1"], "call": ids["call-1"]}


def as_(world, actor: str) -> dict:
    return {**world["env"], "ARCHIVE_ACTOR": actor}


def events(env: dict) -> list[dict]:
    from archive.services import open_archive
    from archive.settings import Settings

    return [e.event for e in open_archive(Settings.from_env(env)).audit.events()]


def request_id(proc) -> str:
    return proc.stdout.split(b"requested: ")[1].split()[0].decode()


# --- what reaches the terminal -------------------------------------------------------------------------


def test_control_c1_and_bidi_characters_are_shown_escaped(world):
    lee = as_(world, "lee")
    run(lee, "hold", "place", "CASE-B1", world["chat"], "--reason", HOSTILE)
    for out in (run(lee, "hold", "list").stdout,
                run(world["env"], "audit", "show", "--record", world["chat"]).stdout):
        text = out.decode()
        assert not any(c in text for c in "\u202e\u0085\x1b\u2066"), repr(text)
        assert "settled\\u202eevil\\x85\\x1b[2J\\u2066x" in text
    raw = run(lee, "hold", "list", "--json").stdout
    assert not any(c.encode() in raw for c in "\u202e\u0085\x1b\u2066")
    assert HOSTILE in {c["history"][0]["reason"] for c in json.loads(raw)}  # JSON keeps the exact value
    refused = run(as_(world, "mallory\u202e"), "hold", "list", check=False)  # an error message quoting a name
    assert refused.returncode == 77 and "\u202e".encode() not in refused.stderr and b"\\u202e" in refused.stderr


# --- files and settings ----------------------------------------------------------------------------------


def test_credentials_in_urls_are_never_echoed(world):
    secret = "hunter2pw"
    proc = run({**world["env"], "ARCHIVE_S3_ENDPOINT_URL": f"ftp://user:{secret}@example.com"}, "object", "ls",
               check=False)
    assert proc.returncode == 78 and b"ARCHIVE_S3_ENDPOINT_URL" in proc.stderr and secret.encode() not in proc.stderr
    from tests.apikit import free_port

    unreachable = {**world["env"], "ARCHIVE_STORE": "s3://evidence", "ARCHIVE_S3_ENDPOINT_URL":
                   f"http://user:{secret}@127.0.0.1:{free_port()}", "ARCHIVE_S3_ACCESS_KEY_ID": "AK",
                   "ARCHIVE_S3_SECRET_ACCESS_KEY": "SK"}
    proc = run(unreachable, "object", "ls", check=False)
    assert proc.returncode != 0 and b"127.0.0.1" in proc.stderr, proc.stderr
    assert secret.encode() not in proc.stdout + proc.stderr
    from archive.settings import Settings

    assert secret not in repr(Settings.from_env(unreachable))


def test_identity_changes_by_many_writers_at_once_are_all_kept(tmp_path):
    from archive.access import Identities

    path = tmp_path / "identities.json"

    def add(n: int) -> None:
        ids = Identities(path)  # each writer with its own view, as separate admins' processes have
        for i in range(15):
            ids.set(f"user-{n}-{i}", ["auditor"])

    threads = [threading.Thread(target=add, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(Identities(path).all()) == 6 * 15
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identities.json", "identities.json.lock"]
