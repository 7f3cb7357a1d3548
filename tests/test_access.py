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


# --- files and settings ----------------------------------------------------------------------------------


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
