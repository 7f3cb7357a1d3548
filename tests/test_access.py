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


# --- reasons -----------------------------------------------------------------------------------------


def test_hold_actions_and_approvals_need_a_reason_that_says_something(world):
    lee, kim = as_(world, "lee"), as_(world, "kim")
    for reason in [None, *BLANK_REASONS]:
        given = [] if reason is None else ["--reason", reason]
        proc = run(lee, "hold", "place", "CASE-R1", world["chat"], *given, check=False)
        assert proc.returncode == 77 and b"state a reason" in proc.stderr, (reason, proc.stderr)
        proc = run(lee, "object", "hold", f"records/{world['chat']}/manifest", "on", *given, check=False)
        assert proc.returncode == 77 and b"state a reason" in proc.stderr, (reason, proc.stderr)
    assert "CASE-R1" not in {c["case"] for c in json.loads(run(lee, "hold", "list", "--json").stdout)}
    run(lee, "hold", "place", "CASE-R1", world["chat"], "--reason", "complaint R1")
    for reason in [None, "  ", "\u200b"]:
        proc = run(lee, "hold", "release", "CASE-R1", *([] if reason is None else ["--reason", reason]), check=False)
        assert proc.returncode == 77 and b"state a reason" in proc.stderr
    ask = request_id(run(lee, "hold", "release", "CASE-R1", "--reason", "settled"))
    for reason in [None, "\u2060", " \t "]:
        proc = run(kim, "approve", ask, *([] if reason is None else ["--reason", reason]), check=False)
        assert proc.returncode == 77 and b"state a reason" in proc.stderr
    assert json.loads(run(kim, "approve", ask, "--reason", "settlement checked").stdout)["released"] == [world["chat"]]

    denied = [e for e in events(world["env"]) if e["outcome"] == "denied" and e["action"] in
              ("hold", "hold-release-request", "approve")]
    assert ("hold", "\u200b\u200b") in {(e["action"], e.get("reason")) for e in denied}  # recorded as given
    assert {e["action"] for e in denied} == {"hold", "hold-release-request", "approve"}


def test_the_library_the_api_uses_refuses_blank_reasons(tmp_path):
    from archive.access import Identities, Session
    from archive.errors import AccessDenied
    from archive.services import init_archive, services_for
    from archive.settings import Settings

    archive, _ = init_archive(Settings.from_env({"ARCHIVE_HOME": str(tmp_path / "home"), "ARCHIVE_ACTOR": "lee"}))
    Identities(archive.settings.identities_path).set("lee", ["legal"])
    session = Session(archive.audit, Identities(archive.settings.identities_path), "lee")
    called = []
    for operation in ("hold", "hold-release-request", "approve"):
        for reason in [None, *BLANK_REASONS]:
            with pytest.raises(AccessDenied, match="reason"):
                session.run(operation, lambda: called.append(1), target={"case": "X"}, reason=reason)
    assert not called
    retention = services_for(archive).retention  # what the API's handlers call inside Session.run
    with pytest.raises(AccessDenied, match="reason"):
        retention.place_hold("CASE-1", ["r" + "a" * 32], by="lee", reason=" \u200b ")
    with pytest.raises(AccessDenied, match="reason"):
        retention.request_release(case="CASE-1", by="lee", reason="\u2800")
    with pytest.raises(AccessDenied, match="reason"):
        retention.approve("ap-20240101-00000000", by="kim", reason="\ufeff")


def test_the_api_refuses_blank_reasons_and_records_a_refused_callers_reason_and_case(world):
    import urllib.error
    import urllib.request

    env = world["env"]
    token = run(env, "token", "create", "lee", "--role", "legal").stdout.decode().strip()

    def call(base, path, body=None, headers=None):
        req = urllib.request.Request(base + "/api/v1" + path, method="POST" if body is not None else "GET",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    bearer = {"Authorization": f"Bearer {token}"}
    with served(env, world["tmp"] / "server.log") as base:
        for reason in ["   ", "\u200b\u200b", "\u3000"]:
            status, body = call(base, "/holds", {"case": "CASE-API", "records": [world["call"]], "reason": reason},
                                bearer)
            assert status == 403 and "reason" in body["message"], (reason, status, body)
            status, _ = call(base, "/holds/CASE-API/release-requests", {"reason": reason}, bearer)
            assert status == 403
            status, _ = call(base, "/approvals/ap-20240101-00000000", {"reason": reason}, bearer)
            assert status == 403
        status, _ = call(base, f"/records/{world['call']}", headers={"Authorization": "Bearer arc_nope_x",
                                                                      "X-Archive-Reason": "investigating C-23",
                                                                      "X-Archive-Case": "C-23"})
        assert status == 401
    assert "CASE-API" not in {c["case"] for c in json.loads(run(env, "hold", "list", "--json").stdout)}
    refused = [e for e in events(env) if e["actor"] == "(none)" and e["action"] == "view"]
    assert refused and refused[-1]["reason"] == "investigating C-23" and refused[-1]["case"] == "C-23"


def test_an_unknown_or_missing_identity_is_refused_with_its_reason_and_case_recorded(world):
    proc = run(as_(world, "mallory"), "show", world["chat"], "--reason", "looking around", "--case", "C-9",
               check=False)
    assert proc.returncode == 77 and b"unknown identity" in proc.stderr
    anonymous = {k: v for k, v in world["env"].items() if k != "ARCHIVE_ACTOR"}
    assert run(anonymous, "get", world["call"], "--part", "audio", "--reason", "no one", "--case", "C-10",
               check=False).returncode == 77
    trail = events(world["env"])
    mallory = [e for e in trail if e["actor"] == "mallory"][-1]
    assert (mallory["outcome"], mallory["reason"], mallory["case"]) == ("denied", "looking around", "C-9")
    nobody = [e for e in trail if e["actor"] == "(none)" and e["action"] == "retrieve"][-1]
    assert (nobody["reason"], nobody["case"], nobody["target"]["records"]) == ("no one", "C-10", [world["call"]])


# --- approvals ---------------------------------------------------------------------------------------


def _store_files(home: Path, key: str) -> list[Path]:
    """The filesystem store's files of object ``key`` and its receipts."""
    base = home / "store" / "objects" / key
    return sorted(base.parent.glob(base.name + "*"))


def test_a_tampered_approval_request_is_refused(world):
    lee, kim = as_(world, "lee"), as_(world, "kim")
    run(lee, "hold", "place", "CASE-T1", world["call"], "--reason", "dispute T1")
    ask = request_id(run(lee, "hold", "release", "CASE-T1", "--reason", "settled"))
    files = [p for p in _store_files(world["home"], f"objects/approvals/{ask}/request") if p.name == "request#data"]
    assert files, "the request is a sealed object of the vault"
    data = files[0]
    os.chmod(data, 0o644)
    blob = bytearray(data.read_bytes())
    blob[-20] ^= 0x01  # a bit of the sealed request (its last segment)
    data.write_bytes(bytes(blob))
    proc = run(kim, "approve", ask, "--reason", "looks fine", check=False)
    assert proc.returncode == 5 and ask.encode() in proc.stderr and b"cannot be trusted" in proc.stderr, proc.stderr
    holds = {c["case"]: c for c in json.loads(run(lee, "hold", "list", "--json").stdout)}
    assert holds["CASE-T1"]["active"]  # nothing was released


def test_rewriting_the_requester_of_an_approval_request_does_not_let_them_approve_it(world):
    """An insider with the archive home — the keyring included — rewrites who asked, so the requester can
    approve their own request: the audit event of the request names who really asked."""
    from archive.approvals import Approvals
    from archive.services import open_archive
    from archive.settings import Settings

    lee = as_(world, "lee")
    run(lee, "hold", "place", "CASE-T2", world["call"], "--reason", "dispute T2")
    ask = request_id(run(lee, "hold", "release", "CASE-T2", "--reason", "settled"))
    legacy = _store_files(world["home"], f"approvals/{ask}/request.json")
    if legacy:  # an unsealed request (the code before this change): edit the JSON in place
        data = next(p for p in legacy if p.name.endswith("#data"))
        os.chmod(data, 0o644)
        data.write_bytes(data.read_bytes().replace(b'"requested_by": "lee"', b'"requested_by": "kim"'))
    else:  # sealed and signed: remove it and seal a forged one with the keyring's keys
        archive = open_archive(Settings.from_env(lee))
        approvals = Approvals(archive)
        doc = {k: v for k, v in approvals.get(ask).items() if k != "signature"}
        for p in _store_files(world["home"], f"objects/approvals/{ask}/request"):
            p.unlink()
        approvals._seal(f"approvals/{ask}/request", ask, {**doc, "requested_by": "kim"})
        assert approvals.get(ask)["requested_by"] == "kim"  # seal and signature check: only the trail can tell
    proc = run(lee, "approve", ask, "--reason", "approving my own", check=False)
    assert proc.returncode != 0, proc.stdout
    assert b"records the request by 'lee'" in proc.stderr, proc.stderr
    holds = {c["case"]: c for c in json.loads(run(lee, "hold", "list", "--json").stdout)}
    assert holds["CASE-T2"]["active"]
    last = [e for e in events(world["env"]) if e["action"] == "approve"][-1]
    assert (last["actor"], last["outcome"]) == ("lee", "error")


# --- search and object access ---------------------------------------------------------------------


def test_search_json_shows_content_only_with_a_reason_and_names_the_records(world):
    ann = as_(world, "ann")
    plain = run(ann, "search", "refund", "--json").stdout
    page = json.loads(plain)
    assert [r["record_id"] for r in page["records"]] == [world["chat"]]
    assert b"please refund" not in plain and b"AC-7788" not in plain and "messages" in page["records"][0]
    timeline = run(ann, "timeline", "--account", "AC-7788", "--json").stdout
    assert b"please refund" not in timeline and b"AC-7788" not in timeline
    shown = run(ann, "search", "refund", "--json", "--reason", "QA sample W14").stdout
    assert b"please refund" in shown and b"AC-7788" in shown
    searches = [e for e in events(world["env"]) if e["actor"] == "ann" and e["action"] == "search"]
    assert all(e["target"]["records"] == [world["chat"]] for e in searches)
    assert [(e["target"]["content"], e.get("reason")) for e in searches] == [
        (False, None), (False, None), (True, "QA sample W14")]
    history = json.loads(run(world["env"], "audit", "show", "--record", world["chat"], "--json").stdout)
    assert [h["reason"] for h in history if h["action"] == "search" and h["actor"] == "ann"] == [
        None, None, "QA sample W14"]


def test_object_access_to_a_record_is_in_the_records_history(world, tmp_path):
    admin = world["env"]
    rid = world["call"]
    names = run(admin, "object", "ls", f"records/{rid}/").stdout.decode().split()
    audio = next(n for n in names if "/part.audio" in n)
    out = tmp_path / "audio.wav"
    run(admin, "object", "get", audio, "-o", str(out), "--reason", "restore test")
    assert out.read_bytes()[:4] == b"RIFF"
    run(admin, "object", "head", f"records/{rid}/manifest")
    history = json.loads(run(admin, "audit", "show", "--record", rid, "--json").stdout)
    assert ("object-retrieve", "ok", "restore test") in {(h["action"], h["outcome"], h["reason"]) for h in history}
    assert "object-head" in {h["action"] for h in history}
    retrieved = [e for e in events(admin) if e["action"] == "object-retrieve"][-1]
    assert retrieved["target"]["records"] == [rid] and retrieved["target"]["part"] == "audio"


# --- outputs -------------------------------------------------------------------------------------------


def test_outputs_never_replace_a_file_without_force_nor_any_of_the_archives_own(world, tmp_path):
    env, home, rid = world["env"], world["home"], world["call"]
    keyring = home / "keyring.json"
    saved = {p: p.read_bytes() for p in (keyring, home / "identities.json")}
    link = tmp_path / "innocent.wav"
    link.symlink_to(keyring)
    for target in (keyring, home / "identities.json", home / "fresh.wav", home / "store" / "x.wav", link):
        for command in (["get", rid, "--part", "audio"], ["object", "get", f"records/{rid}/manifest"]):
            proc = run(env, *command, "-o", str(target), "--force", "--reason", "restore test", check=False)
            assert proc.returncode == 73 and b"archive's own" in proc.stderr, (target, proc.stderr)
    assert all(p.read_bytes() == raw for p, raw in saved.items()) and not (home / "fresh.wav").exists()
    existing = tmp_path / "existing.wav"
    existing.write_bytes(b"keep me")
    proc = run(env, "get", rid, "--part", "audio", "-o", str(existing), "--reason", "restore test", check=False)
    assert proc.returncode == 73 and b"--force" in proc.stderr and existing.read_bytes() == b"keep me"
    run(env, "get", rid, "--part", "audio", "-o", str(existing), "--reason", "restore test", "--force")
    assert existing.read_bytes()[:4] == b"RIFF" and stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.wav", "innocent.wav"]  # no temporary left


# --- failures of any kind ----------------------------------------------------------------------------


def test_an_unexpected_error_inside_an_operation_is_recorded_and_re_raised(tmp_path):
    from archive.access import Identities, Session
    from archive.services import init_archive
    from archive.settings import Settings

    archive, _ = init_archive(Settings.from_env({"ARCHIVE_HOME": str(tmp_path / "home"), "ARCHIVE_ACTOR": "ann"}))
    Identities(archive.settings.identities_path).set("ann", ["auditor"])
    session = Session(archive.audit, Identities(archive.settings.identities_path), "ann")

    def fails():
        raise OSError(5, "Input/output error reading customer secret 4111-1111")

    with pytest.raises(OSError):
        session.run("retrieve", fails, target={"records": ["r" + "b" * 32]}, reason="playback")
    with pytest.raises(ZeroDivisionError):
        session.run("search", lambda: 1 / 0, target={"query": "x"})
    last = [e.event for e in archive.audit.events()][-2:]
    assert [(e["action"], e["outcome"], e["details"]) for e in last] == [
        ("retrieve", "error", {"error": "internal_error", "type": "OSError"}),
        ("search", "error", {"error": "internal_error", "type": "ZeroDivisionError"})]
    assert last[0]["reason"] == "playback" and "secret" not in json.dumps(last)


def test_the_cli_turns_a_bug_into_one_line_and_an_audit_event(world, monkeypatch, capsys):
    from archive import cli
    from archive.vault import Vault

    for key in [k for k in os.environ if k.startswith("ARCHIVE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ARCHIVE_HOME", str(world["home"]))
    monkeypatch.setenv("ARCHIVE_ACTOR", "admin")

    def broken(self, prefix="", **kw):
        raise RuntimeError("a bug, quoting content: please refund")

    monkeypatch.setattr(Vault, "names", broken)
    assert cli.main(["object", "ls"]) == cli.EX_SOFTWARE
    err = capsys.readouterr().err
    assert "internal error" in err and "RuntimeError" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    last = [e for e in events(world["env"]) if e["action"] == "object-list"][-1]
    assert (last["outcome"], last["details"]) == ("error", {"error": "internal_error", "type": "RuntimeError"})


def test_an_os_error_in_a_command_leaves_an_error_event(world):
    proc = run(world["env"], "object", "put", "/no/such/input.wav", "--name", "probe", check=False)
    assert proc.returncode == 2 and b"/no/such/input.wav" in proc.stderr
    last = [e for e in events(world["env"]) if e["action"] == "object-put"][-1]
    assert (last["outcome"], last["details"]) == ("error", {"error": "internal_error", "type": "FileNotFoundError"})


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


def test_files_holding_content_or_secrets_are_private(world, tmp_path):
    home = world["home"]
    index = home / "index.sqlite"
    os.chmod(index, 0o644)  # an archive made before: opened again, it is made private
    run(as_(world, "ann"), "search", "refund")
    for p in [index, home / "index.sqlite-wal", home / "index.sqlite-shm", home / "identities.json",
              home / "tokens.json", home / "keyring.json"]:
        if p.exists() or p.name == "index.sqlite":
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    out = tmp_path / "part.wav"
    run(world["env"], "get", world["call"], "--part", "audio", "-o", str(out), "--reason", "restore test")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


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
