"""Conflicting deliveries (issue 25, item 9): the same recording delivered again with another sidecar is a
conflict — reported, counted, quarantined with both digests, and the second sidecar kept sealed as
evidence — never a duplicate that silently drops the second metadata. The record keeps the first
metadata and retention; the evidence is locked at least as long as either would keep it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from tests.test_cli import cli_env, run
from tests.workerkit import wav_bytes


def _sidecar(**changes) -> bytes:
    doc = {"schema": "archive-record/1", "source": {"system": "pbx", "interaction_id": "call-77"},
           "channel": "phone", "direction": "inbound", "started_at": "2024-06-03T09:00:00+08:00",
           "participants": [{"role": "agent", "id": "1042", "name": "Wang Fang"}, {"role": "customer", "id": "C-3"}]}
    doc.update(changes)
    return json.dumps(doc, indent=1).encode()


def _delivery(folder: Path, audio: bytes, sidecar: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "call-77.wav").write_bytes(audio)
    (folder / "call-77.json").write_bytes(sidecar)
    return folder


def _ingest(env: dict, *paths: Path) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "archive", "ingest", "--json", *map(str, paths)], env=env,
                          capture_output=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def _open(env: dict):
    from archive.index.sqlite import SqliteIndex
    from archive.ingest.pipeline import Ingestor
    from archive.services import open_archive
    from archive.settings import Settings

    settings = Settings.from_env(env)
    return Ingestor(open_archive(settings), SqliteIndex(settings.index_path))


def test_the_same_recording_with_another_sidecar_is_a_conflict_and_both_are_kept(tmp_path):
    env = cli_env(tmp_path / "home", "tester")
    run(env, "init")
    audio = wav_bytes(6.0, 2)  # 96 KB: sealed as an object of its own
    first = _sidecar()
    # the second delivery names another agent, and a business line with a 20-year clause (pending its event)
    second = _sidecar(participants=[{"role": "agent", "id": "2077", "name": "Li Qiang"}],
                      jurisdiction="CN", business_line="bank-sales-zone")
    status, summary = _ingest(env, _delivery(tmp_path / "a", audio, first))
    assert status == 0 and summary["archived"] == 1
    rid = summary["outcomes"][0]["record_ids"][0]

    status, summary = _ingest(env, _delivery(tmp_path / "b", audio, second))
    assert status == 1, summary  # the CLI says something needs attention
    assert (summary["archived"], summary["duplicate"], summary["conflict"], summary["rejected"]) == (0, 0, 1, 0)
    [outcome] = summary["outcomes"]
    assert outcome["status"] == "conflict" and outcome["code"] == "metadata_conflict"
    assert outcome["record_ids"] == [rid] and rid in outcome["reason"]
    assert str(tmp_path / "b" / "call-77.wav") in outcome["reason"]

    ingestor = _open(env)
    manifest = ingestor.committed(rid)
    assert manifest["metadata"]["participants"][0]["id"] == "1042"  # the record is as first committed
    [entry] = [e for e in ingestor.quarantine() if e["code"] == "metadata_conflict"]
    assert entry["record_id"] == rid and entry["origin"] == str(tmp_path / "b" / "call-77.wav")
    digests = entry["metadata_sha256"]
    assert digests["archived"] != digests["delivered"]
    evidence = json.loads(ingestor.vault.read(entry["evidence"]))  # the second sidecar, byte for byte
    assert evidence["format"] == "archive-conflict/1" and evidence["record_id"] == rid
    assert [base64.b64decode(s["bytes"]) for s in evidence["sidecars"]] == [second]
    assert evidence["metadata"]["participants"][0]["id"] == "2077"
    assert evidence["metadata_sha256"] == digests
    # locked at least as long as the record, and as long as the second metadata would have kept it
    record_lock = ingestor.vault.head(f"records/{rid}/manifest").retain_until
    evidence_head = ingestor.vault.head(entry["evidence"])
    assert evidence_head.retain_until >= record_lock and evidence_head.mode.value == "COMPLIANCE"
    assert evidence["retain_until"]["delivered"] and evidence["retain_until"]["archived"] == \
        manifest["retention"]["retain_until"]
    assert entry["evidence"].startswith(f"records/{rid}/conflict-")  # an object of the record: locks extend with it

    events = [e.event for e in ingestor.archive.audit.events() if e.event["action"] == "ingest"]
    assert events[-1]["target"]["conflict"] == 1 and events[-1]["target"]["records"] == [rid]

    # the same conflicting delivery again: reported again, kept once
    status, summary = _ingest(env, tmp_path / "b")
    assert status == 1 and summary["conflict"] == 1
    assert len([n for n in ingestor.vault.names(f"records/{rid}/") if "/conflict-" in n]) == 1
    # the first delivery again is a plain duplicate
    status, summary = _ingest(env, tmp_path / "a")
    assert status == 0 and summary["duplicate"] == 1
    text = run(env, "quarantine", "list").stdout.decode()
    assert "metadata_conflict" in text and rid in text


def test_two_deliveries_in_one_run_one_archived_one_conflict(tmp_path):
    env = cli_env(tmp_path / "home", "tester")
    run(env, "init")
    audio = wav_bytes(0.5, 3)  # small: carried inside the manifest
    a = _delivery(tmp_path / "a", audio, _sidecar())
    b = _delivery(tmp_path / "b", audio, _sidecar(direction="outbound"))
    c = _delivery(tmp_path / "c", audio, _sidecar())  # byte-identical to a: a duplicate, not a conflict
    status, summary = _ingest(env, a, b, c)
    assert status == 1
    statuses = {Path(o["origin"]).parent.name: o["status"] for o in summary["outcomes"]}
    assert statuses == {"a": "archived", "b": "conflict", "c": "duplicate"}, summary
    rid = summary["outcomes"][0]["record_ids"][0]
    assert all(o["record_ids"] == [rid] for o in summary["outcomes"])
    ingestor = _open(env)
    assert ingestor.committed(rid)["metadata"]["direction"] == "inbound"


def test_an_email_delivered_again_under_another_name_is_a_duplicate(tmp_path):
    env = cli_env(tmp_path / "home", "tester")
    run(env, "init")
    eml = (b"From: a@example.com\r\nTo: b@bank.example\r\nSubject: hi\r\nDate: Mon, 03 Jun 2024 10:00:00 +0000\r\n"
           b"Message-ID: <m-1@example.com>\r\n\r\nhello\r\n")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "one.eml").write_bytes(eml)
    (tmp_path / "x" / "two.eml").write_bytes(eml)  # the message is its own evidence: the same bytes, the same input
    status, summary = _ingest(env, tmp_path / "x")
    assert status == 0 and (summary["archived"], summary["duplicate"], summary["conflict"]) == (1, 1, 0)


def test_a_conflicting_upload_is_answered_409_and_kept(tmp_path):
    from tests import apikit
    from tests.apikit import served

    env = cli_env(tmp_path / "home", "tester")
    run(env, "init")
    run(env, "identity", "add", "rec", "--role", "ingest")
    token = run(env, "token", "create", "rec", "--role", "ingest").stdout.decode().strip()
    audio = wav_bytes(0.5, 4)

    def upload(base: str, sidecar: bytes) -> tuple[int, dict]:
        return apikit.upload(base, token, [("call-77.wav", audio), ("call-77.json", sidecar)], timeout=60)

    with served(env, tmp_path / "server.log") as base:
        status, doc = upload(base, _sidecar())
        assert status == 201, doc
        status, doc = upload(base, _sidecar(subject="a different subject"))
        assert status == 409 and doc["code"] == "metadata_conflict", doc
        assert doc["details"]["conflict"] == 1 and doc["details"]["outcomes"][0]["status"] == "conflict"
        status, doc = upload(base, _sidecar())
        assert status == 200 and doc["duplicate"] == 1
    entries = json.loads(run(env, "quarantine", "list", "--json").stdout)
    assert [e["origin"] for e in entries if e["code"] == "metadata_conflict"] == ["upload:call-77.wav"]
