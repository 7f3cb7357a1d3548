"""Races of ingest (issue 25, item 3).

* A file that changes while it is being sealed is refused for that run only — the other inputs of the
  run are archived — and archived by a later run, under a fresh name when its first name is taken by
  what the changing file left sealed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from archive.index.sqlite import SqliteIndex
from archive.ingest.discover import Limits
from archive.ingest.pipeline import Ingestor
from archive.services import init_archive, open_archive
from archive.settings import Settings
from tests.workerkit import wav_bytes


def _chat(iid: str) -> bytes:
    return json.dumps({
        "schema": "archive-record/1", "source": {"system": "recovery", "interaction_id": iid}, "channel": "chat",
        "started_at": "2024-07-01T10:00:00Z",
        "participants": [{"role": "agent", "id": "a1"}, {"role": "customer", "id": f"c-{iid}"}],
        "messages": [{"at": "2024-07-01T10:00:00Z", "from": f"c-{iid}", "text": f"about {iid}"}]}).encode()


def _sidecar(iid: str) -> bytes:
    return json.dumps({"schema": "archive-record/1", "source": {"system": "recovery", "interaction_id": iid},
                       "channel": "phone", "started_at": "2024-07-02T10:00:00Z",
                       "participants": [{"role": "agent", "id": "a1"}]}).encode()


def _email(iid: str) -> bytes:
    return (f"From: c@example.com\r\nTo: desk@bank.example\r\nSubject: {iid}\r\n"
            f"Date: Tue, 02 Jul 2024 10:00:00 +0000\r\nMessage-ID: <{iid}@example.com>\r\n\r\nabout {iid}\r\n").encode()


def _ingestor(home: Path) -> Ingestor:
    settings = Settings.from_env({"ARCHIVE_HOME": str(home)})
    return Ingestor(open_archive(settings), SqliteIndex(settings.index_path))


# --- a file that changes while it is sealed ----------------------------------------------------------


def test_a_file_changing_while_sealed_is_refused_alone_then_archived_under_a_fresh_name(tmp_path, monkeypatch):
    import archive.ingest.pipeline as pipeline

    arch, _ = init_archive(Settings.from_env({"ARCHIVE_HOME": str(tmp_path / "home")}))
    ingestor = Ingestor(arch, SqliteIndex(arch.settings.index_path))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    original = wav_bytes(6.0, 1)  # 96 KB: sealed as an object of its own, streamed from the file
    changed = original[:-2000] + os.urandom(2000)
    (inbox / "moving.wav").write_bytes(original)
    (inbox / "moving.json").write_bytes(_sidecar("moving"))
    (inbox / "steady.wav").write_bytes(wav_bytes(6.0, 2))
    (inbox / "steady.json").write_bytes(_sidecar("steady"))
    for i in range(3):
        (inbox / f"chat-{i}.json").write_bytes(_chat(f"sc-{i}"))
    hash_stream = pipeline._hash_stream
    writes = {"left": 1}

    def hash_then_the_recorder_writes(opener):  # the recorder rewrites the file's tail after it was hashed
        digest, size = hash_stream(opener)
        if digest == hashlib.sha256(original).hexdigest() and writes["left"]:
            writes["left"] -= 1
            (inbox / "moving.wav").write_bytes(changed)
        return digest, size

    monkeypatch.setattr(pipeline, "_hash_stream", hash_then_the_recorder_writes)
    first = ingestor.run([inbox], limits=Limits())
    outcome = {Path(o.origin).name: o for o in first.outcomes}
    assert outcome["moving.wav"].status == "rejected" and outcome["moving.wav"].code == "source_changed"
    assert "changed while it was being archived" in outcome["moving.wav"].reason
    assert first.archived == 4  # the run went on: the call beside it and the chats are archived

    # the file settled (changed): the next run archives what it holds now
    second = ingestor.run([inbox], limits=Limits())
    moving = next(o for o in second.outcomes if o.origin.endswith("moving.wav"))
    assert moving.status == "archived" and second.duplicate == 4
    manifest = ingestor.committed(moving.record_ids[0])
    assert b"".join(ingestor.read_part(manifest, "audio")) == changed

    # and back to its first content: the name the first attempt left sealed (other bytes) is passed over
    (inbox / "moving.wav").write_bytes(original)
    third = ingestor.run([inbox], limits=Limits())
    moving = next(o for o in third.outcomes if o.origin.endswith("moving.wav"))
    assert moving.status == "archived", moving
    manifest = ingestor.committed(moving.record_ids[0])
    audio = next(p for p in manifest["parts"] if p["name"] == "audio")
    assert audio["object"].endswith("part.audio.retry-2")
    assert b"".join(ingestor.read_part(manifest, "audio")) == original
    stale = ingestor.vault.receipt(audio["object"].removesuffix(".retry-2"))
    assert stale.plaintext_sha256 == hashlib.sha256(changed).hexdigest()  # what the change left, kept, unused
