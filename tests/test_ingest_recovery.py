"""Crash consistency and races of ingest (issue 25, items 3 and 10; issue 24's lock race).

* A file that changes while it is being sealed is refused for that run only — the other inputs of the
  run are archived — and archived by a later run, under a fresh name when its first name is taken by
  what the changing file left sealed.
* A run killed after committing records, before indexing them or recording its audit event, is finished
  by the next run from its journal: every committed record indexed and named by an ingest event that
  says it was recovered — even when the inputs are gone by then.
* A loop of ``kill -9`` at random moments (a seeded RNG) over a few hundred mixed inputs, then a clean
  run: every committed record indexed and audited, no interaction archived twice, ``archive fixity``
  0 failed, the audit trail verifying.
* Two threads never prepare the same record at once, whatever a third does meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from archive.index.sqlite import SqliteIndex
from archive.ingest.discover import Limits
from archive.ingest.pipeline import Ingestor
from archive.services import init_archive, open_archive
from archive.settings import Settings
from tests.test_cli import cli_env, run
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


# --- a run killed after committing: the next run finishes it ------------------------------------------

_KILL_AFTER_COMMIT = r"""
import os, signal, sys
from archive.store.filesystem import FilesystemStore
from archive.ingest.pipeline import Ingestor
from archive import cli

Ingestor.BATCH = 16
calls = [0]
put_many = FilesystemStore.put_many

def put_many_then_die(self, requests):
    calls[0] += 1
    done = put_many(self, requests)
    if calls[0] == 4:  # the receipts of the second group are durable: 32 records committed
        os.kill(os.getpid(), signal.SIGKILL)
    return done

FilesystemStore.put_many = put_many_then_die
sys.exit(cli.main(["ingest", sys.argv[1]]))
"""


def test_records_committed_by_a_killed_run_are_indexed_and_audited_by_the_next(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(60):
        (inbox / f"chat-{i:03d}.json").write_bytes(_chat(f"k-{i}"))
    env = cli_env(tmp_path / "home", "recorder")
    run(env, "init")
    proc = subprocess.run([sys.executable, "-c", _KILL_AFTER_COMMIT, str(inbox)], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    ingestor = _ingestor(tmp_path / "home")
    committed = set(ingestor.retention.record_ids())
    assert len(committed) == 32
    assert not committed <= set(ingestor.index.record_ids())  # the kill left records the index lacks ...
    assert not [e for e in ingestor.archive.audit.events() if e.event["action"] == "ingest"]  # ... and unaudited

    for p in inbox.iterdir():  # the inputs are gone by the next run: only the journal can tell
        p.unlink()
    (inbox / "late.json").write_bytes(_chat("late"))
    proc = subprocess.run([sys.executable, "-m", "archive", "ingest", "--json", str(inbox)], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert summary["archived"] == 1 and sorted(summary["recovered"]) == sorted(committed)
    assert b"recovered 32 record(s)" in proc.stderr
    ingestor = _ingestor(tmp_path / "home")
    assert set(ingestor.index.record_ids()) == committed | set(summary["outcomes"][0]["record_ids"])
    [event] = [e.event for e in ingestor.archive.audit.events() if e.event["action"] == "ingest"]
    assert event["outcome"] == "ok" and sorted(event["target"]["recovered"]) == sorted(committed)
    assert set(event["target"]["records"]) == set(ingestor.retention.record_ids())
    assert not list((tmp_path / "home" / "ingest-journal").glob("*.journal"))  # done with, once audited
    proc = subprocess.run([sys.executable, "-m", "archive", "ingest", "--json", str(inbox)], env=env,
                          capture_output=True, timeout=120)
    assert "recovered" not in json.loads(proc.stdout)  # recovered once, not at every run


def test_a_running_ingest_s_journal_is_not_taken_for_a_dead_one(tmp_path):
    from archive.ingest.journal import Journals

    journals = Journals(tmp_path / "j")
    live = journals.start()
    live.add(["r1", "r2"])
    assert journals.dead().records == []  # its lock is held: a run still going
    dead = journals.start()
    dead.add(["r3"])
    os.close(dead._fd)  # what the kernel does for a process that dies: the lock is released
    dead._fd = -1
    found = journals.dead()
    assert found.records == ["r3"] and found.runs == [dead.run_id]
    assert Journals(tmp_path / "j").dead().records == []  # taken by the first finder until it closes it
    found.close()
    live.close()
    assert not list((tmp_path / "j").iterdir())


# --- kill -9, again and again, then a clean run ---------------------------------------------------------

# ``archive ingest`` as a user runs it, killed by SIGKILL at step N of its work: every write of the store
# (a put, a group commit, each link of a group commit, each flush), every index write, every audit
# append, every journal write — before and after each. N comes from the test's seeded RNG, so the kill
# points are random yet replayable, and spread over the whole protocol instead of landing mostly in the
# interpreter's start-up as a timer would. (A run of one wave takes about 180 steps, the first 270; the
# points are drawn below 160, so every run is killed somewhere in its work.)
_KILL_AT_STEP = r"""
import os, signal, sys, threading
from archive import cli
from archive.audit.log import AuditLog
from archive.index.sqlite import SqliteIndex
from archive.ingest.journal import Journal
from archive.store.filesystem import FilesystemStore

target, steps, lock = int(sys.argv[1]), [0], threading.Lock()

def step():
    with lock:
        steps[0] += 1
        if steps[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)

def around(cls, name):
    real = getattr(cls, name)
    def wrapped(*args, **kwargs):
        step()
        result = real(*args, **kwargs)
        step()
        return result
    setattr(cls, name, wrapped)

for cls, name in [(FilesystemStore, "put"), (FilesystemStore, "put_many"), (FilesystemStore, "_flush_files"),
                  (FilesystemStore, "_link"), (SqliteIndex, "upsert"), (SqliteIndex, "flush"),
                  (AuditLog, "append_many"), (Journal, "add"), (Journal, "close")]:
    around(cls, name)
sys.exit(cli.main(["ingest", *sys.argv[2:]]))
"""


def _mixed_inputs(root: Path, waves: int) -> tuple[list[Path], set[str]]:
    """``waves`` folders of 25 inputs each — 20 chats, 3 e-mails, 2 calls (one small enough to ride in
    the manifest, one sealed as an object of its own). Returns the folders and the interaction ids."""
    folders, ids = [], set()
    for w in range(waves):
        folder = root / f"wave-{w:02d}"
        folder.mkdir(parents=True)
        for i in range(20):
            (folder / f"chat-{w}-{i}.json").write_bytes(_chat(f"chat-{w}-{i}"))
            ids.add(f"chat-{w}-{i}")
        for i in range(3):
            (folder / f"mail-{w}-{i}.eml").write_bytes(_email(f"mail-{w}-{i}"))
            ids.add(f"mail-{w}-{i}")
        for i, seconds in enumerate((0.5, 6.0)):
            (folder / f"call-{w}-{i}.wav").write_bytes(wav_bytes(seconds, w * 2 + i))
            (folder / f"call-{w}-{i}.json").write_bytes(_sidecar(f"call-{w}-{i}"))
            ids.add(f"call-{w}-{i}")
        folders.append(folder)
    return folders, ids


def test_kill_9_at_random_moments_then_a_clean_run_leaves_every_record_indexed_and_audited(tmp_path):
    inbox = tmp_path / "inbox"
    folders, expected = _mixed_inputs(inbox, 12)  # 300 inputs
    env = cli_env(tmp_path / "home", "recorder")
    run(env, "init")
    rng = random.Random(20250425)  # the kill points: seeded, so a failure can be replayed
    kills, log = 0, []
    started = time.monotonic()
    for folder in folders:  # each run brings new inputs; a killed run's leftovers wait for the last run
        point = rng.randint(1, 160)
        proc = subprocess.run([sys.executable, "-c", _KILL_AT_STEP, str(point), str(folder)], env=env,
                              capture_output=True, timeout=120)
        log.append((folder.name, point, proc.returncode))
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        else:  # the run was done before its kill point: then it must have been a clean one
            assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        _check_consistent_so_far(tmp_path / "home", expected)
    assert kills >= 10, f"only {kills} runs were killed: {log}"

    final = subprocess.run([sys.executable, "-m", "archive", "ingest", "--json", str(inbox)], env=env,
                           capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()
    summary = json.loads(final.stdout)
    assert summary["rejected"] == 0 and summary["conflict"] == 0
    assert summary["archived"] + summary["duplicate"] == len(expected)

    ingestor = _ingestor(tmp_path / "home")
    committed = set(ingestor.retention.record_ids())
    by_interaction: dict[str, list[str]] = {}
    for rid in committed:
        iid = ingestor.committed(rid)["metadata"]["source"]["interaction_id"]
        by_interaction.setdefault(iid.strip("<>").split("@")[0], []).append(rid)
    assert set(by_interaction) == expected  # none lost ...
    assert all(len(rids) == 1 for rids in by_interaction.values())  # ... none twice
    assert set(ingestor.index.record_ids()) == committed  # every committed record indexed
    events = [e.event for e in ingestor.archive.audit.events() if e.event["action"] == "ingest"]
    audited = {r for e in events if e["outcome"] == "ok" for r in e["target"].get("records", [])}
    assert committed <= audited  # and named by an ingest audit event
    assert any(e["target"].get("recovered") for e in events), log  # (some of them by a recovery)
    assert not list((tmp_path / "home" / "ingest-journal").glob("*.journal"))

    fixity = run(env, "fixity", "--json", check=False)
    report = json.loads(fixity.stdout)
    assert report["records"] == len(committed)
    assert report["failed"] == [], (len(list(ingestor.vault.orphans())), [f["problems"] for f in report["failed"]][:3])
    assert fixity.returncode == 0
    verified = run(env, "audit", "verify", check=False)
    assert verified.returncode == 0, verified.stdout.decode() + verified.stderr.decode()
    assert time.monotonic() - started < 240


def _check_consistent_so_far(home: Path, expected: set[str]) -> None:
    """What holds at every kill point: a visible record is whole, no interaction is archived twice."""
    ingestor = _ingestor(home)
    seen: dict[str, str] = {}
    for rid in ingestor.retention.record_ids():
        manifest = ingestor.committed(rid)
        iid = manifest["metadata"]["source"]["interaction_id"].strip("<>").split("@")[0]
        assert iid in expected and iid not in seen, (iid, rid, seen.get(iid))
        seen[iid] = rid
        for part in manifest["parts"]:
            if "object" in part:  # every part a visible record names is whole
                assert ingestor.vault.receipt(part["object"]).plaintext_sha256 == part["sha256"]
    ingestor.index.close()


# --- an upload whose server was killed after the commit: the next upload finishes it ---------------------

_SERVE_AND_DIE_AFTER_A_MANIFEST = r"""
import os, signal, sys
from archive.store.filesystem import FilesystemStore
from archive import cli

put_many = FilesystemStore.put_many

def put_many_then_die(self, requests):
    done = put_many(self, requests)
    if any(r.key.endswith("/manifest.receipt-000001") for r in requests):  # the upload's record is committed
        os.kill(os.getpid(), signal.SIGKILL)
    return done

FilesystemStore.put_many = put_many_then_die
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_upload_committed_by_a_killed_server_is_indexed_and_audited_by_the_next_upload(tmp_path):
    from tests.apikit import served, upload

    env = cli_env(tmp_path / "home", "admin")
    run(env, "init")
    run(env, "identity", "add", "rec", "--role", "ingest")
    token = run(env, "token", "create", "rec", "--role", "ingest").stdout.decode().strip()
    with served(env, tmp_path / "dying.log", launcher=("-c", _SERVE_AND_DIE_AFTER_A_MANIFEST)) as base:
        with pytest.raises(OSError):  # the server died while answering
            upload(base, token, [("chat-killed.json", _chat("killed"))], timeout=30)
    ingestor = _ingestor(tmp_path / "home")
    [committed] = ingestor.retention.record_ids()
    assert committed not in set(ingestor.index.record_ids())  # the kill left a record the index lacks ...
    assert not [e for e in ingestor.archive.audit.events() if e.event["action"] == "ingest"]  # ... and unaudited
    assert list((tmp_path / "home" / "ingest-journal").glob("*.journal"))

    with served(env, tmp_path / "server.log") as base:
        status, doc = upload(base, token, [("chat-next.json", _chat("next"))])
    assert status == 201, doc
    ingestor = _ingestor(tmp_path / "home")
    records = set(ingestor.retention.record_ids())
    assert committed in records and set(ingestor.index.record_ids()) == records
    [event] = [e.event for e in ingestor.archive.audit.events() if e.event["action"] == "ingest"]
    assert event["outcome"] == "ok" and event["target"]["recovered"] == [committed]
    assert set(event["target"]["records"]) == records
    assert not list((tmp_path / "home" / "ingest-journal").glob("*.journal"))  # done with, once audited


# --- a quarantine entry whose writer was killed before its receipt -------------------------------------


def test_a_rejection_killed_before_its_receipt_is_recorded_again_and_listed(tmp_path, monkeypatch):
    from archive.vault import Vault

    arch, _ = init_archive(Settings.from_env({"ARCHIVE_HOME": str(tmp_path / "home")}))
    ingestor = Ingestor(arch, SqliteIndex(arch.settings.index_path))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bad.json").write_bytes(b'{"schema": "archive-record/1", "channel": ')  # not JSON
    real = Vault._put_receipt

    def killed(self, receipt, **kw):
        if receipt.name.startswith("quarantine/"):
            raise SystemExit("killed before the receipt")
        return real(self, receipt, **kw)

    with monkeypatch.context() as m:
        m.setattr(Vault, "_put_receipt", killed)
        with pytest.raises(SystemExit):
            ingestor.run([inbox], limits=Limits())
    assert list(ingestor.quarantine()) == []  # the entry without its receipt cannot be read: not listed
    ingestor.run([inbox], limits=Limits())  # the input is still there: rejected again, recorded under a new name
    entries = list(ingestor.quarantine())
    assert [e["origin"] for e in entries] == [str(inbox / "bad.json")], entries
    ingestor.run([inbox], limits=Limits())  # and once only
    assert len(list(ingestor.quarantine())) == 1
