"""Insiders: someone who can edit and delete the embedded store's files, or who holds the store's S3
credential with ``s3:BypassGovernanceRetention`` on a GOVERNANCE-mode bucket (SeaweedFS), deletes or edits
what the archive keeps. ``archive fixity``, ``archive audit verify`` and ``archive reindex --check``
notice, exit non-zero and name what is missing: the record, the object and the audit event that says it
should be there.

Before issue 25 every one of these passed unnoticed: audit verify exited 0 and fixity reported 0 failed.
The commands run in-process through ``archive.cli.main`` (the same code path as the ``archive`` command).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from archive.audit.log import AuditLog, Event
from archive.cli import main
from archive.dates import parse_duration
from archive.services import open_archive
from archive.settings import Settings
from archive.store.filesystem import FilesystemStore
from archive.store.s3 import S3Store
from tests.test_ingest import chat_doc


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``archive ARGS…`` in this process with exactly ``env`` as its ARCHIVE_* settings."""

    def run(env: dict, *args: str) -> tuple[int, str]:
        for name in [k for k in os.environ if k.startswith("ARCHIVE_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        status = main(list(args))
        captured = capsys.readouterr()
        return status, captured.out + captured.err

    return run


def inbox(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    for i in range(n):
        (path / f"chat-{i}.json").write_text(json.dumps(chat_doc(i)))
    return path


def ingest(cli, env: dict, tmp_path: Path) -> list[str]:
    status, out = cli(env, "ingest", "--json", str(inbox(tmp_path)))
    assert status == 0, out
    return sorted({r for o in json.loads(out)["outcomes"] for r in o["record_ids"]})


def event_seq(env: dict, action: str, record_id: str | None = None) -> int:
    """The sequence number of the first ``action`` event (naming ``record_id``) in the archive's trail."""
    archive = open_archive(Settings.from_env(env))
    for logged in archive.audit.events():
        doc = logged.event
        if doc["action"] == action and (record_id is None or record_id in doc["target"].get("records", [])):
            return logged.seq
    raise AssertionError(f"no {action} event")


def edit_header(data: Path, **change) -> None:
    """Rewrite the lock state in a filesystem-store object's header, as an insider with a hex editor would."""
    raw = data.read_bytes()
    (length,) = struct.unpack(">I", raw[8:12])
    state = {**json.loads(raw[12:12 + length]), **change}
    header = json.dumps(state).encode()
    data.chmod(0o644)
    data.write_bytes(raw[:8] + struct.pack(">I", len(header)) + header + raw[12 + length:])


def verified(cli, env: dict) -> None:
    status, out = cli(env, "audit", "verify")
    assert status == 0, out
    status, out = cli(env, "fixity")
    assert status == 0, out


# --- the embedded filesystem store ----------------------------------------------------------------------


@pytest.fixture
def embedded(tmp_path, cli):
    """An archive in the embedded default, its witness on "another disk", three chats ingested."""
    env = {"ARCHIVE_HOME": str(tmp_path / "home"), "ARCHIVE_ACTOR": "officer",
           "ARCHIVE_AUDIT_WITNESS": str(tmp_path / "other-disk" / "witness.json")}
    assert cli(env, "init")[0] == 0
    records = ingest(cli, env, tmp_path)
    assert len(records) == 3
    verified(cli, env)
    return env, records, tmp_path / "home" / "store" / "objects" / "objects"


def test_a_held_records_directory_deleted_and_reindexed_is_named_by_verify_and_fixity(embedded, cli):
    env, records, objects = embedded
    rid = records[0]
    assert cli(env, "hold", "place", "CASE-7", rid, "--reason", "dispute 7")[0] == 0
    ingested, held = event_seq(env, "ingest", rid), event_seq(env, "hold", rid)
    shutil.rmtree(objects / "records" / rid)  # even under legal hold: the files are only files

    status, out = cli(env, "reindex")
    assert status == 0 and f"DROPPED  {rid}" in out  # the rebuild names what it lost, in its audit event too
    status, out = cli(env, "audit", "verify")
    assert status == 5, out
    assert f"record {rid}, ingested at audit event {ingested}, is missing from the store" in out
    assert f"legal hold CASE-7 on record {rid}, placed at audit event {held}" in out
    status, out = cli(env, "fixity")
    assert status == 1, out
    assert f"FAILED  {rid}  records/{rid}/manifest: record {rid}, ingested at audit event {ingested}" in out


def test_a_hold_erased_from_holds_and_meta_files_is_named(embedded, cli):
    env, records, objects = embedded
    rid = records[1]
    assert cli(env, "hold", "place", "CASE-8", rid, "--reason", "regulator request")[0] == 0
    held = event_seq(env, "hold", rid)
    shutil.rmtree(objects / "holds")
    for meta in (objects / "records" / rid).glob("*#meta"):
        meta.unlink()
    status, out = cli(env, "hold", "list")
    assert "CASE-8" not in out  # the hold is gone from what the store says

    status, out = cli(env, "audit", "verify")
    assert status == 5, out
    assert (f"legal hold CASE-8 on record {rid}, placed at audit event {held}, has no hold document in the store"
            in out)
    assert f"objects/records/{rid}/manifest has no legal hold in the store" in out
    status, out = cli(env, "fixity")
    assert status == 1 and f"FAILED  {rid}  holds/CASE-8/" in out, out


def test_an_edited_lock_is_refused_by_object_delete_and_named_by_fixity(embedded, cli):
    env, records, objects = embedded
    # a lock header edited: retention over, no hold, GOVERNANCE
    header = objects / "records" / records[0] / "manifest#data"
    edit_header(header, retain_until="2001-01-01T00:00:00+00:00", mode="GOVERNANCE")
    status, out = cli(env, "object", "delete", f"records/{records[0]}/manifest", "--bypass-governance")
    assert status == 5 and "lock_state_tampered" in out, out
    assert header.exists()
    # a #meta edited: the legal hold placed through the archive, taken off by hand
    assert cli(env, "hold", "place", "CASE-9", records[2], "--reason", "litigation")[0] == 0
    meta = objects / "records" / records[2] / "manifest#meta"
    state = json.loads(meta.read_text())
    meta.write_text(json.dumps({**state, "legal_hold": False, "retain_until": "2001-01-01T00:00:00+00:00"}))
    status, out = cli(env, "object", "delete", f"records/{records[2]}/manifest")
    assert status == 5 and "lock_state_tampered" in out, out
    assert (objects / "records" / records[2] / "manifest#data").exists()

    status, out = cli(env, "fixity")
    assert status == 1, out
    assert f"FAILED  {records[0]}  objects/records/{records[0]}/manifest: lock_state_tampered" in out
    assert f"FAILED  {records[2]}  objects/records/{records[2]}/manifest: lock_state_tampered" in out
    status, out = cli(env, "audit", "verify")  # the held record's edited lock is named here too
    assert status == 5 and f"[lock-tampered] objects/records/{records[2]}/manifest" in out, out


def test_events_after_the_newest_checkpoint_edited_or_truncated_are_named(tmp_path, cli):
    env = {"ARCHIVE_HOME": str(tmp_path / "home"), "ARCHIVE_ACTOR": "officer",
           "ARCHIVE_AUDIT_WITNESS": str(tmp_path / "other-disk" / "witness.json"),
           "ARCHIVE_AUDIT_CHECKPOINT_EVERY": "4", "ARCHIVE_AUDIT_CHECKPOINT_INTERVAL": "P1D"}
    assert cli(env, "init")[0] == 0
    for _ in range(10):  # events 0…9, one batch each; checkpoints written automatically at 1, 4 and 8
        assert cli(env, "status")[0] == 0
    log = tmp_path / "home" / "store" / "objects" / "audit"
    assert sorted(p.name for p in (log / "checkpoints").iterdir()) == [
        "000000000001.json#data", "000000000004.json#data", "000000000008.json#data"]

    # an event after the newest checkpoint rewritten: event 9, in batch 10
    batch = log / "log" / "000000000010.json#data"
    original = batch.read_bytes()
    batch.chmod(0o644)
    batch.write_bytes(original.replace(b'"actor":"officer"', b'"actor":"someone"'))
    status, out = cli(env, "audit", "verify")
    assert status == 5 and "first bad position 9 [modified] audit batch 10 does not match its signature" in out, out
    batch.write_bytes(original)

    # the newest events cut off, with the checkpoint that covered them: every batch from 8 on (events 7 …,
    # the failed verification's own event included), checkpoint 8
    for path in (log / "log").iterdir():
        if int(path.name.split(".")[0]) >= 8:
            path.unlink()
    (log / "checkpoints" / "000000000008.json#data").unlink()
    status, out = cli(env, "audit", "verify")
    assert status == 5, out
    assert "holds a checkpoint of 8 events, but the log holds 7" in out and "truncated or rolled back" in out
    assert "checkpoint 000000000008.json, which the witness" in out and "is missing from the store" in out


def test_every_checkpoint_and_the_local_witness_deleted_and_the_log_rewritten_is_named(tmp_path, cli):
    home = tmp_path / "home"
    env = {"ARCHIVE_HOME": str(home), "ARCHIVE_ACTOR": "officer",
           "ARCHIVE_AUDIT_WITNESS": str(tmp_path / "other-disk" / "witness.json")}
    assert cli(env, "init")[0] == 0
    for _ in range(5):
        assert cli(env, "status")[0] == 0
    status, out = cli(env, "audit", "verify")
    assert status == 0, out
    # The insider holds the keyring too: deletes every batch and checkpoint, and the witness in the home,
    # then writes a new history signed with the archive's own key.
    (home / "audit-witness.json").unlink(missing_ok=True)
    store_root = home / "store" / "objects" / "audit"
    for sub in ("log", "checkpoints"):
        shutil.rmtree(store_root / sub)
    archive = open_archive(Settings.from_env(env))
    forged = AuditLog(FilesystemStore(home / "store"), retention=parse_duration("P10Y"),
                      signer=archive.keys.signer(), witness=None)
    forged.append_many([Event(actor="officer", role="admin", action="status") for _ in range(9)])
    forged.checkpoint()

    status, out = cli(env, "audit", "verify")
    assert status == 5, out
    assert "no longer hash to the root the witness" in out and "rewritten, not appended to" in out
    assert "which the witness" in out and "is missing from the store: it was deleted" in out


def test_an_edited_or_deleted_index_row_is_named_by_reindex_check(embedded, cli):
    env, records, _ = embedded
    assert cli(env, "reindex", "--check")[0] == 0
    db = sqlite3.connect(Path(env["ARCHIVE_HOME"]) / "index.sqlite")
    customer = {rid: json.loads(m)["metadata"]["participants"][1]["id"] for rid, m in
                db.execute("SELECT record_id, manifest FROM records")}
    with db:
        db.execute("UPDATE record_fields SET value = 'someone-else' WHERE field = 'customer.id' AND rec = "
                   "(SELECT rec FROM records WHERE record_id = ?)", (records[0],))
        db.execute("UPDATE records SET manifest = json_set(manifest, '$.parts[0].sha256', ?) WHERE record_id = ?",
                   ("0" * 64, records[1]))
        db.execute("DELETE FROM records WHERE record_id = ?", (records[2],))
    db.close()
    status, out = cli(env, "timeline", "--customer", customer[records[0]], "--reason", "check")
    assert records[0] not in out  # the silently wrong answer the index now gives

    status, out = cli(env, "reindex", "--check")
    assert status == 1, out
    assert f"{records[0]}: the index differs from the store in search field(s) customer.id" in out
    assert f"{records[1]}: the index differs from the store in the content digest of part" in out and "0" * 64 in out
    assert f"[not-indexed] {records[2]} is in the store but not in the index" in out
    assert "3 mismatch(es)" in out


def test_an_object_sealed_without_its_receipt_is_an_orphan_not_a_fixity_failure(embedded, cli):
    env, records, _ = embedded
    archive = open_archive(Settings.from_env(env))
    orphan = f"records/{records[0]}/manifest.retry-9"  # a crash between writing an object and its receipt
    archive.store.put(f"objects/{orphan}", io.BytesIO(os.urandom(300)),
                      retain_until=datetime.now(UTC) + timedelta(days=1))
    status, out = cli(env, "fixity", "--json")
    summary = json.loads(out)
    assert status == 0 and summary["failed"] == [] and summary["orphans"] == [orphan], out
    status, out = cli(env, "search", "finding:fixity-failed", "--reason", "check")
    assert records[0] not in out


# --- SeaweedFS: a GOVERNANCE-mode bucket and an insider who may bypass it --------------------------------


def _governance_policies(tmp_path: Path) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir()
    text = (Path(__file__).resolve().parent.parent / "policies" / "default.yaml").read_text()
    (policies / "default.yaml").write_text(text.replace("lock_mode: compliance", "lock_mode: governance"))
    return policies


@pytest.fixture
def on_seaweed(seaweed, tmp_path, cli):
    """An archive on SeaweedFS in GOVERNANCE mode, its witness in another bucket under another credential;
    three chats ingested. Returns (env, records, S3 store as the insider sees it)."""
    bucket, witness = f"ev-{uuid.uuid4().hex[:16]}", f"wit-{uuid.uuid4().hex[:16]}"
    seaweed.make_locked_bucket(witness)
    env = {"ARCHIVE_HOME": str(tmp_path / "home"), "ARCHIVE_ACTOR": "officer",
           "ARCHIVE_STORE": f"s3://{bucket}/archive", "ARCHIVE_S3_ENDPOINT_URL": seaweed.endpoint_url,
           "ARCHIVE_S3_ACCESS_KEY_ID": seaweed.access_key, "ARCHIVE_S3_SECRET_ACCESS_KEY": seaweed.secret_key,
           "ARCHIVE_LOCK_MODE": "governance", "ARCHIVE_POLICIES": str(_governance_policies(tmp_path)),
           "ARCHIVE_AUDIT_WITNESS": f"s3://{witness}/audit",
           "ARCHIVE_AUDIT_WITNESS_S3_ACCESS_KEY_ID": seaweed.witness_access_key,
           "ARCHIVE_AUDIT_WITNESS_S3_SECRET_ACCESS_KEY": seaweed.witness_secret_key}
    status, out = cli(env, "init", "--create-bucket")
    assert status == 0, out
    records = ingest(cli, env, tmp_path)
    verified(cli, env)
    insider = S3Store(bucket, "archive", client=seaweed.client())  # the store's own credential, with bypass
    assert insider.head(f"objects/records/{records[0]}/manifest").mode.value == "GOVERNANCE"
    return env, records, insider


def versions(store: S3Store, key: str) -> list[str]:
    full = store.prefix + key
    listed = store.client.list_object_versions(Bucket=store.bucket, Prefix=full)
    return [v["VersionId"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", []) if v["Key"] == full]


def lift_hold(store: S3Store, key: str) -> None:
    for version in versions(store, key):
        store.client.put_object_legal_hold(Bucket=store.bucket, Key=store.prefix + key, VersionId=version,
                                           LegalHold={"Status": "OFF"})


def bypass_delete(store: S3Store, key: str) -> None:
    lift_hold(store, key)
    for version in versions(store, key):
        store.client.delete_object(Bucket=store.bucket, Key=store.prefix + key, VersionId=version,
                                   BypassGovernanceRetention=True)


@pytest.mark.s3
def test_on_seaweedfs_an_insider_deleting_records_and_lifting_holds_is_named(on_seaweed, cli):
    env, records, insider = on_seaweed
    for rid in records[:2]:
        assert cli(env, "hold", "place", "CASE-S3", rid, "--reason", "litigation")[0] == 0
    ingested, held = event_seq(env, "ingest", records[0]), event_seq(env, "hold", records[1])
    # record 0: its hold lifted, then every object and receipt deleted with the governance bypass
    for key in insider.list(f"objects/records/{records[0]}/"):
        bypass_delete(insider, key)
    # record 1: the S3 legal hold taken off its objects
    for key in insider.list(f"objects/records/{records[1]}/"):
        lift_hold(insider, key)
    # record 2: its retention shortened with the bypass
    key = f"objects/records/{records[2]}/manifest"
    insider.client.put_object_retention(
        Bucket=insider.bucket, Key=insider.prefix + key, BypassGovernanceRetention=True,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(hours=1)})
    assert cli(env, "reindex")[0] == 0

    status, out = cli(env, "audit", "verify")
    assert status == 5, out
    assert f"record {records[0]}, ingested at audit event {ingested}, is missing from the store" in out
    assert (f"objects/records/{records[1]}/manifest has no legal hold in the store, but record {records[1]} is "
            f"under legal hold CASE-S3 (audit event {held})") in out
    status, out = cli(env, "fixity")
    assert status == 1, out
    assert f"FAILED  {records[0]}  records/{records[0]}/manifest: record {records[0]}, ingested" in out
    assert f"FAILED  {records[1]}  objects/records/{records[1]}/manifest: objects/records/{records[1]}/manifest " \
           "has no legal hold" in out
    assert f"FAILED  {records[2]}  {key}: retention shortened" in out


@pytest.mark.s3
def test_on_seaweedfs_an_insider_rewriting_the_audit_log_is_named(on_seaweed, cli, tmp_path):
    env, records, insider = on_seaweed
    # the newest batch — the audit-verify event of the fixture's last command, after the newest checkpoint —
    # rewritten with the bypass
    newest = sorted(insider.list("audit/log/"))[-1]
    with insider.open(newest) as f:
        original = f.read()
    bypass_delete(insider, newest)
    insider.client.put_object(Bucket=insider.bucket, Key=insider.prefix + newest,
                              Body=original.replace(b'"outcome":"ok"', b'"outcome":"denied"'))
    status, out = cli(env, "audit", "verify")
    assert status == 5 and "does not match its signature" in out, out

    # every batch and checkpoint deleted, the local witness too, and a new history signed with the real key
    (tmp_path / "home" / "audit-witness.json").unlink(missing_ok=True)
    for key in list(insider.list("audit/log/")) + list(insider.list("audit/checkpoints/")):
        bypass_delete(insider, key)
    archive = open_archive(Settings.from_env(env))
    forged = AuditLog(insider, retention=parse_duration("P1D"), signer=archive.keys.signer(), witness=None,
                      lock_mode=archive.audit.lock_mode)
    forged.append_many([Event(actor="officer", role="admin", action="status") for _ in range(40)])
    forged.checkpoint()
    status, out = cli(env, "audit", "verify")
    assert status == 5, out
    assert "rewritten, not appended to" in out and "is missing from the store: it was deleted" in out
