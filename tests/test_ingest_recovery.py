"""Races of ingest (issue 25, item 3; issue 24's lock race).

* A file that changes while it is being sealed is refused for that run only — the other inputs of the
  run are archived — and archived by a later run, under a fresh name when its first name is taken by
  what the changing file left sealed.
* Two threads never prepare the same record at once, whatever a third does meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
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


# --- the record lock race (issue 24) -----------------------------------------------------------------


def test_a_third_thread_cannot_prepare_a_record_beside_one_that_waited(tmp_path):
    """A holds the record; B waits for it; A finishes. Before the fix A's cleanup dropped the lock B
    then held, so C made a new one and prepared the same record beside B."""
    arch, _ = init_archive(Settings.from_env({"ARCHIVE_HOME": str(tmp_path / "home")}))
    ingestor = Ingestor(arch, SqliteIndex(arch.settings.index_path))
    from archive.ingest.pipeline import PartInput

    doc = json.loads(_chat("race"))
    inside, most = set(), [0]
    guard = threading.Lock()
    a_in, b_in, c_in = threading.Event(), threading.Event(), threading.Event()
    b_registered, c_registered, done_a = threading.Event(), threading.Event(), threading.Event()

    class Watched:  # the ingestor's guard lock, telling when a thread has taken (and let go of) it
        def __init__(self, lock):
            self.lock = lock

        def __enter__(self):
            return self.lock.__enter__()

        def __exit__(self, *exc):
            self.lock.__exit__(*exc)
            name = threading.current_thread().name
            if name == "B" and a_in.is_set() and not done_a.is_set():
                b_registered.set()
            elif name == "C":
                c_registered.set()

    ingestor._lock = Watched(ingestor._lock)
    if hasattr(ingestor._record_locks, "_guard"):
        ingestor._record_locks._guard = ingestor._lock
    real_committed = ingestor.committed

    def committed(rid):
        name = threading.current_thread().name
        with guard:
            inside.add(name)
            most[0] = max(most[0], len(inside))
        try:
            if name == "A":
                a_in.set()
                assert b_registered.wait(10)  # B has the record's lock in hand and waits on it
            elif name == "B":
                b_in.set()
                assert c_registered.wait(10)
                c_in.wait(0.5)  # long enough for C to get in, if it can (it could, before the fix)
            elif name == "C":
                c_in.set()
            return real_committed(rid)
        finally:
            with guard:
                inside.discard(name)
            if name == "A":
                done_a.set()

    ingestor.committed = committed

    def prepare():
        ingestor._prepare(dict(doc), [PartInput.of_bytes("transcript", "application/json", _chat("race"))],
                          origin="race.json", fmt="archive")

    a = threading.Thread(target=prepare, name="A")
    b = threading.Thread(target=prepare, name="B")
    c = threading.Thread(target=prepare, name="C")
    a.start()
    assert a_in.wait(10)
    b.start()
    assert b_in.wait(10)  # A finished, B is preparing the record
    c.start()
    for t in (a, b, c):
        t.join(20)
    assert most[0] == 1, "two threads prepared the same record at once"
    assert len(ingestor._record_locks) == 0  # and nothing is left behind
