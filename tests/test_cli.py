"""The ``archive`` command as a user runs it: real processes, real files, exit codes and messages.

Covers init, put/get/range, refusals (locked, hostile names, missing files, bad settings, an open
keyring, tampered objects) on the embedded default, and the issue's SeaweedFS check: rotate keys on an
archive whose objects are under COMPLIANCE lock and read every object back.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from archive.cli import build_parser
from archive.store.filesystem import FilesystemStore


def run(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "archive", *args], env=env, capture_output=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"archive {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc


def cli_env(home: Path, actor: str) -> dict:
    """This process's environment without any ARCHIVE_* setting, for an archive in ``home`` acting as
    ``actor`` (init registers it as the first identity, with every role)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVE_")}
    return {**clean, "ARCHIVE_HOME": str(home), "ARCHIVE_ACTOR": actor}


@pytest.fixture
def env(tmp_path) -> dict:
    return cli_env(tmp_path / "home", "tester")


@pytest.fixture
def recording(tmp_path) -> Path:
    path = tmp_path / "call.wav"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 99))
    return path


def test_init_creates_a_private_home_and_keyring_and_is_idempotent(env):
    out = run(env, "init").stdout.decode()
    home = Path(env["ARCHIVE_HOME"])
    assert "keyring created" in out
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "keyring.json").st_mode) == 0o600
    before = (home / "keyring.json").read_bytes()
    assert "keyring kept" in run(env, "init").stdout.decode()
    assert (home / "keyring.json").read_bytes() == before


def test_put_get_range_and_locked_delete(env, recording, tmp_path):
    run(env, "init")
    receipt = json.loads(run(env, "object", "put", str(recording), "--name", "calls/1/audio",
                             "--record-id", "CALL-1", "--part", "audio", "--retain", "P7Y").stdout)
    assert receipt["plaintext_size"] == recording.stat().st_size and "wrapped_key" not in receipt
    out = tmp_path / "back.wav"
    run(env, "object", "get", "--reason", "test", "calls/1/audio", "-o", str(out), "--verify")
    assert out.read_bytes() == recording.read_bytes()
    middle = run(env, "object", "get", "--reason", "test", "calls/1/audio", "--range", "1500000-2548576").stdout
    assert middle == recording.read_bytes()[1500000:2548576]
    refused = run(env, "object", "delete", "calls/1/audio", check=False)
    assert refused.returncode == 3 and b"object_locked" in refused.stderr and b"COMPLIANCE" in refused.stderr
    head = json.loads(run(env, "object", "head", "calls/1/audio").stdout)
    assert head["object"]["mode"] == "COMPLIANCE" and head["receipt"]["kek_id"] == "kr-v1"


def test_uninitialised_archive_says_what_to_do(env):
    proc = run(env, "object", "ls", check=False)
    assert proc.returncode == 78 and b"archive init" in proc.stderr


def test_invalid_setting_is_named(env):
    proc = run({**env, "ARCHIVE_SEGMENT_SIZE": "lots"}, "init", check=False)
    assert proc.returncode == 78 and b"ARCHIVE_SEGMENT_SIZE" in proc.stderr
    proc = run({**env, "ARCHIVE_STORE": "ftp://x"}, "init", check=False)
    assert proc.returncode == 78 and b"ARCHIVE_STORE" in proc.stderr
    proc = run({**env, "ARCHIVE_S3_ACCESS_KEY_ID": "AKIA"}, "init", check=False)
    assert proc.returncode == 78 and b"ARCHIVE_S3_SECRET_ACCESS_KEY" in proc.stderr


def test_hostile_name_and_missing_file_are_refused_and_nothing_is_written(env, recording):
    run(env, "init")
    for name in ["../../etc/passwd", "/abs/path", "a/../b"]:
        proc = run(env, "object", "put", str(recording), "--name", name, check=False)
        assert proc.returncode == 2 and b"invalid_object_key" in proc.stderr, proc.stderr
    proc = run(env, "object", "put", "/no/such/file.wav", check=False)
    assert proc.returncode == 2 and b"/no/such/file.wav" in proc.stderr
    assert run(env, "object", "ls").stdout == b""


def test_keyring_readable_by_others_is_refused(env):
    run(env, "init")
    keyring = Path(env["ARCHIVE_HOME"]) / "keyring.json"
    os.chmod(keyring, 0o644)
    proc = run(env, "object", "ls", check=False)
    assert proc.returncode == 4 and b"chmod 600" in proc.stderr


def test_tampered_object_fails_naming_object_and_segment_and_leaves_no_output(env, recording, tmp_path):
    run(env, "init")
    run(env, "object", "put", str(recording), "--name", "t")
    store = FilesystemStore(Path(env["ARCHIVE_HOME"]) / "store")
    with store.open("objects/t") as f:
        start = f.tell()  # where the sealed object begins inside the store's file
    data = Path(env["ARCHIVE_HOME"]) / "store" / "objects" / "objects" / "t#data"
    os.chmod(data, 0o644)
    blob = bytearray(data.read_bytes())
    blob[start + 85 + 2 * (1024 * 1024 + 16) + 10] ^= 1  # a bit in segment 2
    data.write_bytes(bytes(blob))
    out = tmp_path / "out.wav"
    proc = run(env, "object", "get", "--reason", "test", "t", "-o", str(out), check=False)
    assert proc.returncode == 5
    assert b"objects/t" in proc.stderr and b"segment 2" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.wav*"))


def test_rotation_and_kek_destruction(env, recording):
    run(env, "init")
    run(env, "object", "put", str(recording), "--name", "r", "--retain", "P1D")
    proc = run(env, "keys", "destroy", "kr-v1", check=False)
    assert proc.returncode == 4 and b"key_in_use" in proc.stderr
    assert json.loads(run(env, "keys", "rotate").stdout)["rewrapped"] == 1
    run(env, "keys", "destroy", "kr-v1")
    assert run(env, "object", "get", "--reason", "test", "r").stdout == recording.read_bytes()
    status = json.loads(run(env, "keys", "status").stdout)
    assert [(k["kek_id"], k["state"], k["objects"]) for k in status["keks"]] == [
        ("kr-v1", "destroyed", 0), ("kr-v2", "current", 1)]


@pytest.mark.s3
def test_seaweedfs_rotation_under_compliance_lock(env, seaweed, recording, tmp_path):
    env = {**env, "ARCHIVE_STORE": "s3://cli-evidence/archive", "ARCHIVE_S3_ENDPOINT_URL": seaweed.endpoint_url,
           "ARCHIVE_S3_ACCESS_KEY_ID": seaweed.access_key, "ARCHIVE_S3_SECRET_ACCESS_KEY": seaweed.secret_key}
    init = run(env, "init", "--create-bucket")
    assert seaweed.secret_key.encode() not in init.stdout + init.stderr
    for i in range(3):
        run(env, "object", "put", str(recording), "--name", f"calls/{i}", "--retain", "P1D")
    locked = run(env, "object", "delete", "calls/0", check=False)
    assert locked.returncode == 3 and seaweed.secret_key.encode() not in locked.stderr
    report = json.loads(run(env, "keys", "rotate").stdout)
    assert report["rewrapped"] == 3 and not report["failed"]
    for i in range(3):
        out = tmp_path / f"{i}.wav"
        run(env, "object", "get", "--reason", "test", f"calls/{i}", "-o", str(out), "--verify")
        assert out.read_bytes() == recording.read_bytes()
    run(env, "keys", "destroy", "kr-v1")
    assert run(env, "object", "get", "--reason", "test", "calls/2", "--range", "0-1000").stdout == recording.read_bytes()[:1000]


def _commands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_every_command_has_help_and_a_description():
    commands = list(_commands(build_parser()))
    assert len(commands) >= 10
    for path, sub in commands:
        assert sub.description, f"archive {' '.join(path)} has no description"
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"archive {' '.join(path)} {action.option_strings[0]} has no help"


def test_every_access_is_in_the_audit_log_with_a_verifiable_proof(env, tmp_path):
    from archive.audit.merkle import leaf_hash, verify_inclusion

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "chat.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": "w-1"}, "channel": "chat",
        "started_at": "2024-04-01T10:00:00Z", "participants": [{"role": "customer", "id": "u1"}],
        "messages": [{"at": "2024-04-01T10:00:00Z", "from": "u1", "text": "hello"}]}))
    run(env, "init")
    run(env, "identity", "add", "recorder-7", "--role", "ingest")
    run(env, "identity", "add", "alice", "--role", "auditor")
    run(env, "identity", "add", "bob", "--role", "legal")
    summary = json.loads(run(env, "ingest", str(inbox), "--json", "--actor", "recorder-7").stdout)
    rid = summary["outcomes"][0]["record_ids"][0]
    run(env, "show", rid, "--actor", "alice", "--reason", "QA sample 2024-04")
    run(env, "get", rid, "--part", "transcript", "--actor", "bob", "--reason", "complaint C-17", "--case", "C-17")
    assert run(env, "get", rid, "--part", "nope", "--actor", "bob", "--reason", "x", check=False).returncode != 0
    assert run(env, "get", rid, "--part", "transcript", "--actor", "bob", check=False).returncode == 77
    assert run(env, "show", rid, "--actor", "recorder-7", "--reason", "curious", check=False).returncode == 77
    run(env, "audit", "checkpoint")
    assert b"verified: " in run(env, "audit", "verify").stdout

    history = json.loads(run(env, "audit", "show", "--record", rid, "--json").stdout)
    assert [(h["actor"], h["role"], h["action"], h["outcome"]) for h in history] == [
        ("recorder-7", "ingest", "ingest", "ok"), ("alice", "auditor", "view", "ok"),
        ("bob", "legal", "retrieve", "ok"), ("bob", "legal", "retrieve", "error"),
        ("bob", "legal", "retrieve", "denied"), ("recorder-7", "none", "view", "denied")]
    assert history[2]["reason"] == "complaint C-17" and history[2]["case"] == "C-17"
    for h in history:
        proof = h["proof"]
        assert verify_inclusion(bytes.fromhex(h["leaf_hash"]), h["seq"], proof["tree_size"],
                                [bytes.fromhex(x) for x in proof["path"]], bytes.fromhex(proof["root"]))
    assert leaf_hash(b"x") != bytes.fromhex(history[0]["leaf_hash"])

    batch = Path(env["ARCHIVE_HOME"]) / "store" / "objects" / "audit" / "log" / "000000000005.json#data"
    batch.chmod(0o644)
    batch.write_bytes(batch.read_bytes().replace(b'"alice"', b'"mallory"'))
    failed = run(env, "audit", "verify", check=False)
    assert json.loads(run(env, "keys", "rotate", "--signing").stdout)["signing_key"] == "sig-v2"
    assert failed.returncode == 5 and b"first bad position 4" in failed.stdout, failed.stdout


# Every command that acts on the archive, with arguments enough to reach the access check.
SAMPLES = {
    ("object", "put"): ["{file}"], ("object", "get"): ["x"], ("object", "head"): ["x"], ("object", "ls"): [],
    ("object", "hold"): ["x", "on"], ("object", "extend"): ["x", "--retain", "P1D"], ("object", "delete"): ["x"],
    ("ingest",): ["{dir}"], ("show",): ["rx"], ("get",): ["rx", "--part", "audio"], ("search",): ["refund"],
    ("quarantine", "list"): [], ("identity", "list"): [], ("identity", "add"): ["zed", "--role", "auditor"],
    ("identity", "remove"): ["zed"], ("audit", "checkpoint"): [], ("audit", "verify"): [],
    ("audit", "show"): ["--record", "rx"], ("keys", "status"): [], ("keys", "rotate"): [],
    ("keys", "destroy"): ["kr-v9"], ("approve",): ["ap-x"],
    ("policy", "list"): [], ("policy", "check"): [], ("policy", "explain"): ["rx"],
    ("event",): ["contract-terminated", "--contract", "C-1", "--date", "2024-01-01"],
    ("hold", "place"): ["CASE-1", "rx"], ("hold", "release"): ["CASE-1"], ("hold", "list"): [],
    ("dispose",): ["--dry-run"], ("timeline",): ["--customer", "u1"], ("reindex",): [],
    ("fixity",): [], ("status",): [], ("inbox", "scan"): [], ("export",): ["rx", "-o", "{dir}/x.zip"],
    ("keys", "public"): [], ("token", "create"): ["tester", "--role", "auditor"], ("token", "revoke"): ["x"],
    ("token", "list"): [],
}


def test_the_whole_cli_refuses_anyone_unidentified_and_records_every_attempt(env, recording, tmp_path):
    from archive.services import open_archive
    from archive.settings import Settings

    acting = [path for path, sub in _commands(build_parser())
              if sub.get_default("run") is not None and sub.get_default("needs_archive") is not False]
    assert sorted(acting) == sorted(SAMPLES), "a new command needs a SAMPLES entry (and an access rule)"
    run(env, "init")
    anonymous = {k: v for k, v in env.items() if k != "ARCHIVE_ACTOR"}
    for path, sample in SAMPLES.items():
        args = [a.format(file=recording, dir=tmp_path) for a in sample]
        proc = run(anonymous, *path, *args, check=False)
        assert proc.returncode == 77 and b"no identity" in proc.stderr, (path, proc.stderr)
    # content without a reason is refused too, for someone who may otherwise see it
    for path in [("show",), ("get",), ("object", "get")]:
        proc = run(env, *path, *SAMPLES[path], check=False)
        assert proc.returncode == 77 and b"reason" in proc.stderr, (path, proc.stderr)

    events = [e.event for e in open_archive(Settings.from_env(env)).audit.events()]
    denied = [e for e in events if e["outcome"] == "denied"]
    assert len(denied) == len(SAMPLES) + 3
    assert {e["actor"] for e in denied[:len(SAMPLES)]} == {"(none)"}


def test_releasing_a_legal_hold_takes_two_different_people(env, recording):
    run(env, "init")
    run(env, "identity", "add", "lee", "--role", "legal")
    run(env, "identity", "add", "kim", "--role", "legal")
    run(env, "identity", "add", "ann", "--role", "auditor")
    run(env, "object", "put", str(recording), "--name", "held")
    run(env, "object", "hold", "held", "on", "--actor", "lee", "--reason", "case C-9")
    out = run(env, "object", "hold", "held", "off", "--actor", "lee", "--reason", "case C-9 settled").stdout
    request_id = out.split(b"requested: ")[1].split()[0].decode()
    assert json.loads(run(env, "object", "head", "held").stdout)["object"]["legal_hold"]  # not yet released
    same = run(env, "approve", request_id, "--actor", "lee", "--reason", "me again", check=False)
    assert same.returncode == 77 and b"second, different person" in same.stderr
    auditor = run(env, "approve", request_id, "--actor", "ann", "--reason", "ok", check=False)
    assert auditor.returncode == 77
    run(env, "approve", request_id, "--actor", "kim", "--reason", "settlement checked")
    assert not json.loads(run(env, "object", "head", "held").stdout)["object"]["legal_hold"]
    again = run(env, "approve", request_id, "--actor", "kim", "--reason", "twice", check=False)
    assert again.returncode == 77 and b"approved already" in again.stderr

    from archive.services import open_archive
    from archive.settings import Settings

    trail = [(e.event["actor"], e.event["action"], e.event["outcome"])
             for e in open_archive(Settings.from_env(env)).audit.events() if e.event["action"] in
             ("hold", "hold-release-request", "approve")]
    assert trail == [("lee", "hold", "ok"), ("lee", "hold-release-request", "ok"), ("lee", "approve", "denied"),
                     ("ann", "approve", "denied"), ("kim", "approve", "ok"), ("kim", "approve", "error")]


def test_case_holds_events_and_disposition_through_the_cli(env, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "chat.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": "w-9"}, "channel": "chat",
        "started_at": "2024-04-01T10:00:00Z", "business_line": "bancassurance", "jurisdiction": "CN",
        "contract_id": "K-9", "contract_term": "P3Y",
        "participants": [{"role": "customer", "id": "u9", "account": "AC-9"}],
        "messages": [{"at": "2024-04-01T10:00:00Z", "from": "u9", "text": "please cancel my policy"}]}))
    run(env, "init")
    run(env, "identity", "add", "lee", "--role", "legal")
    run(env, "identity", "add", "kim", "--role", "legal")
    run(env, "identity", "add", "ann", "--role", "auditor")
    rid = json.loads(run(env, "ingest", str(inbox), "--json").stdout)["outcomes"][0]["record_ids"][0]
    explained = json.loads(run(env, "policy", "explain", rid, "--json", "--actor", "ann").stdout)
    assert explained["decision"]["pending"] == ["contract-terminated (cn-insurance-traceability-long)"]
    # an auditor may read decisions but not change them
    assert run(env, "event", "contract-terminated", "--contract", "K-9", "--date", "2025-01-31",
               "--actor", "ann", check=False).returncode == 77
    out = json.loads(run(env, "event", "contract-terminated", "--contract", "K-9", "--date", "2025-01-31",
                         "--json", "--actor", "lee").stdout)
    assert out["changed"][0]["after"][:10] == "2035-01-31" and out["changed"][0]["final"]
    bad = run(env, "event", "contract-terminated", "--contract", "K-9", "--date", "2999-01-01", check=False)
    assert bad.returncode != 0 and b"in the future" in bad.stderr

    run(env, "hold", "place", "CASE-9", "--query", "cancel", "--actor", "lee", "--reason", "complaint 9")
    holds = json.loads(run(env, "hold", "list", "--json", "--actor", "ann").stdout)
    assert holds[0]["case"] == "CASE-9" and holds[0]["records"] == [rid] and holds[0]["active"]
    out = run(env, "hold", "release", "CASE-9", "--actor", "lee", "--reason", "settled").stdout
    request_id = out.split(b"requested: ")[1].split()[0].decode()
    assert run(env, "approve", request_id, "--actor", "lee", "--reason", "me", check=False).returncode == 77
    released = json.loads(run(env, "approve", request_id, "--actor", "kim", "--reason", "checked").stdout)
    assert released["released"] == [rid]
    plan = json.loads(run(env, "dispose", "--dry-run", "--json").stdout)
    assert plan["dry_run"] and plan["plans"] == []  # kept until 2035

    from archive.services import open_archive
    from archive.settings import Settings

    trail = [(e.event["actor"], e.event["action"], e.event["outcome"], e.event.get("case"))
             for e in open_archive(Settings.from_env(env)).audit.events()
             if e.event["action"] in ("retention-event", "hold", "hold-release-request", "approve")]
    assert trail == [("ann", "retention-event", "denied", None), ("lee", "retention-event", "ok", None),
                     ("tester", "retention-event", "error", None), ("lee", "hold", "ok", "CASE-9"),
                     ("lee", "hold-release-request", "ok", "CASE-9"), ("lee", "approve", "denied", None),
                     ("kim", "approve", "ok", None)]


def test_search_facets_syntax_errors_timeline_and_reindex_through_the_cli(env, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, channel in enumerate(["chat", "messaging", "chat"]):
        (inbox / f"chat-{i}.json").write_text(json.dumps({
            "schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": f"w-{i}"},
            "channel": channel, "started_at": f"2024-04-0{i + 1}T10:00:00Z",
            "participants": [{"role": "customer", "id": "u1", "account": "AC-1"}, {"role": "agent", "id": "7"}],
            "messages": [{"at": "2024-04-01T10:00:00Z", "from": "u1", "text": f"refund number {i}"}]}))
    run(env, "init")
    run(env, "ingest", str(inbox))
    page = json.loads(run(env, "search", "refund", "NOT", "channel:messaging", "--facets", "channel,month",
                          "--json").stdout)
    assert page["total"] == 2 and page["facets"]["channel"] == [{"value": "chat", "count": 2}]
    bad = run(env, "search", "refund", "(channel:chat", check=False)
    assert bad.returncode != 0 and b"column 8" in bad.stderr and b"missing ')'" in bad.stderr
    timeline = json.loads(run(env, "timeline", "--account", "AC-1", "--json").stdout)
    assert [r["source"]["interaction_id"] for r in timeline] == ["w-0", "w-1", "w-2"]  # summaries
    Path(env["ARCHIVE_HOME"], "index.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        Path(env["ARCHIVE_HOME"], "index.sqlite" + suffix).unlink(missing_ok=True)
    assert json.loads(run(env, "search", "refund", "--json").stdout)["total"] == 0  # the index is gone
    assert b"3 record(s)" in run(env, "reindex").stdout
    again = json.loads(run(env, "search", "refund", "NOT", "channel:messaging", "--facets", "channel,month",
                           "--json").stdout)
    assert again == page
