"""The ingest pipeline as a contact centre uses it: a tree of recordings, chats and emails in, records out.

Samples are made by tools no one here wrote (espeak-ng speaks, sox converts) or shaped as the platforms
document them (tests/fixtures). Covers: every input kind archived with its metadata; re-ingest archives
nothing new; bad input rejected with its reason and the source untouched; SIGKILL mid-run then a rerun
leaves every input archived exactly once and no partial record visible.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive.index.sqlite import SqliteIndex
from archive.ingest.discover import Limits
from archive.ingest.pipeline import Ingestor
from archive.services import init_archive
from archive.settings import Settings
from tests.test_cli import cli_env

FIXTURES = Path(__file__).parent / "fixtures"


def tool(*cmd: str) -> None:
    if not shutil.which(cmd[0]):
        pytest.fail(f"{cmd[0]} is missing: apt-get install -y espeak-ng sox ffmpeg (scripts/test does this)")
    subprocess.run(cmd, check=True, capture_output=True)


def speak(path: Path, text: str) -> Path:
    """A real spoken call, 8 kHz stereo 16-bit PCM, as telephony recorders write them."""
    raw = path.with_suffix(".raw.wav")
    tool("espeak-ng", "-w", str(raw), text)
    tool("sox", str(raw), "-r", "8000", "-c", "2", "-b", "16", str(path))
    raw.unlink()
    return path


def call_metadata(n: int) -> dict:
    return {"source": {"system": "genesys", "interaction_id": f"call-{n}"}, "channel": "phone",
            "direction": "inbound", "started_at": f"2024-03-0{1 + n % 9}T09:{n % 60:02d}:00+08:00",
            "participants": [{"role": "agent", "id": "1042", "name": "Wang Fang"},
                             {"role": "customer", "id": f"C{n}", "phone": "+8613800138000",
                              "account": "6222020000001234"}],
            "business_line": "bancassurance", "product": "Ping An Life 10Y", "jurisdiction": "CN", "language": "zh-CN"}


def chat_doc(n: int) -> dict:
    return {"schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": f"chat-{n}"},
            "channel": "chat", "started_at": "2024-04-01T10:00:00Z", "ended_at": "2024-04-01T10:05:00Z",
            "participants": [{"role": "agent", "id": "a7", "name": "Li Na"}, {"role": "customer", "id": f"u{n}"}],
            "messages": [{"at": "2024-04-01T10:00:00Z", "from": f"u{n}", "text": f"I want a refund for order ZX{n:04d}"},
                         {"at": "2024-04-01T10:01:00Z", "from": "a7", "text": "This product is not a deposit."}]}


def indexed(path: Path) -> int:
    if not path.exists():
        return 0
    index = SqliteIndex(path)
    try:
        return index.count()
    finally:
        index.close()


def committed_manifests(home: Path) -> int:
    """Records committed in the embedded store — a manifest with its receipt (the store is the system
    of record; the index lags by a batch)."""
    return len(list((home / "store" / "objects" / "objects" / "records").glob("*/manifest*.receipt-000001#data")))


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def archive(tmp_path):
    settings = Settings.from_env({"ARCHIVE_HOME": str(tmp_path / "home")})
    arch, _ = init_archive(settings)
    return arch


@pytest.fixture
def ingestor(archive):
    return Ingestor(archive, SqliteIndex(archive.settings.index_path))


@pytest.fixture(scope="module")
def inbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inbox")
    calls = root / "calls"
    calls.mkdir()
    speak(calls / "call-1.wav", "Good morning, this is Wang Fang from the bank. This product is not a deposit.")
    (calls / "call-1.json").write_text(json.dumps(call_metadata(1)))
    chats = root / "chats"
    chats.mkdir()
    (chats / "chat-1.json").write_text(json.dumps(chat_doc(1)))
    for src in sorted((FIXTURES / "chats").glob("*.json")):
        shutil.copy(src, chats / src.name)
    mail = root / "mail"
    mail.mkdir()
    for src in sorted((FIXTURES / "email").glob("*.eml"))[:2]:
        shutil.copy(src, mail / src.name)
    return root


def test_a_tree_of_calls_chats_and_email_is_archived_searchable_and_retrievable(ingestor, inbox, tmp_path):
    before = tree_hashes(inbox)
    summary = ingestor.run([inbox], limits=Limits())
    assert summary.rejected == 0, [o for o in summary.outcomes if o.status == "rejected"]
    assert summary.archived == len(summary.outcomes) >= 5
    assert tree_hashes(inbox) == before  # sources are only read

    call = next(o for o in summary.outcomes if o.origin.endswith("call-1.wav"))
    manifest = ingestor.committed(call.record_ids[0])
    audio = manifest["parts"][0]
    assert audio["name"] == "audio" and audio["media"]["channels"] == 2 and audio["media"]["sample_rate"] == 8000
    assert 3 < manifest["metadata"]["duration_s"] < 15
    assert audio["sha256"] == hashlib.sha256((inbox / "calls" / "call-1.wav").read_bytes()).hexdigest()
    got = b"".join(ingestor.vault.open(audio["object"]))
    assert got == (inbox / "calls" / "call-1.wav").read_bytes()

    chat = next(o for o in summary.outcomes if o.origin.endswith("chat-1.json"))
    chat_manifest = ingestor.committed(chat.record_ids[0])
    original = (inbox / "chats" / "chat-1.json").read_bytes()
    assert chat_manifest["parts"][0]["size"] == len(original)  # small: sealed inside the manifest
    assert b"".join(ingestor.read_part(chat_manifest, "transcript")) == original
    assert b"".join(ingestor.read_part(chat_manifest, "transcript", 10, 50)) == original[10:50]
    assert b"".join(ingestor.read_part(manifest, "audio", 1000, 2000)) == got[1000:2000]

    hits = ingestor.index.search("refund zx0001")
    assert [h["record_id"] for h in hits] == [
        next(o for o in summary.outcomes if o.origin.endswith("chat-1.json")).record_ids[0]]
    assert ingestor.index.search("Wang Fang")


def test_reingesting_the_same_tree_archives_nothing_new(ingestor, inbox):
    first = ingestor.run([inbox], limits=Limits())
    objects = list(ingestor.vault.store.list())
    second = ingestor.run([inbox], limits=Limits())
    assert second.archived == 0 and second.duplicate == first.archived and second.rejected == 0
    assert [o.record_ids for o in second.outcomes] == [o.record_ids for o in first.outcomes]
    assert list(ingestor.vault.store.list()) == objects


def test_bad_inputs_get_reasons_and_are_left_untouched(ingestor, inbox, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    wav = (inbox / "calls" / "call-1.wav").read_bytes()
    (bad / "truncated.wav").write_bytes(wav[: len(wav) * 6 // 10])
    (bad / "truncated.json").write_text(json.dumps(call_metadata(2)))
    (bad / "lonely.wav").write_bytes(wav)
    (bad / "notes.txt").write_text("not a recording")
    (bad / "broken.json").write_text('{"schema": "archive-record/1", "source": ')
    doc = chat_doc(3)
    doc["participants"][1]["phone"] = "13800138000"
    (bad / "badphone.json").write_text(json.dumps(doc))
    (bad / "evil\x07name.json").write_text(json.dumps(chat_doc(4)))
    (bad / "big.json").write_text(json.dumps(chat_doc(5)) + " " * (len(wav) + 5000))
    before = tree_hashes(bad)

    summary = ingestor.run([bad], limits=Limits(max_input_bytes=len(wav) + 1000))
    reasons = {Path(o.origin).name: (o.code, o.reason) for o in summary.outcomes}
    assert summary.archived == 0 and summary.rejected == len(reasons) == 7, reasons
    assert reasons["truncated.wav"][0] == "corrupt_media"
    assert reasons["lonely.wav"][0] == "metadata_missing" and "lonely.json" in reasons["lonely.wav"][1]
    assert reasons["notes.txt"][0] == "unsupported_format"
    assert reasons["broken.json"][0] == "invalid_metadata" and "line 1" in reasons["broken.json"][1]
    assert "participants[1].phone" in reasons["badphone.json"][1]
    assert reasons["evil\\x07name.json"][0] == "hostile_name"  # named with the bell escaped, never raw
    assert reasons["big.json"][0] == "too_large"
    assert tree_hashes(bad) == before
    listed = list(ingestor.quarantine())
    assert len(listed) == 7 and {e["code"] for e in listed} >= {"corrupt_media", "hostile_name", "too_large"}
    assert not list(ingestor.vault.names("records/"))


def test_sigkill_mid_run_then_rerun_archives_every_input_exactly_once(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    n = 300
    for i in range(n):
        (inbox / f"chat-{i:03d}.json").write_text(json.dumps(chat_doc(i)))
    env = cli_env(tmp_path / "home", "recorder")
    subprocess.run([sys.executable, "-m", "archive", "init"], env=env, check=True, capture_output=True)
    index_path = tmp_path / "home" / "index.sqlite"

    log = tmp_path / "first-run.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "archive", "ingest", str(inbox)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and committed_manifests(tmp_path / "home") < 10:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"ingest ended before it could be killed:\n{log.read_text()}"
    killed_at = committed_manifests(tmp_path / "home")
    assert 10 <= killed_at < n, f"the kill should land mid-run ({killed_at} of {n} committed)"

    rerun = subprocess.run([sys.executable, "-m", "archive", "ingest", "--json", str(inbox)], env=env,
                           capture_output=True, check=True)
    summary = json.loads(rerun.stdout)
    assert summary["rejected"] == 0 and summary["archived"] + summary["duplicate"] == n
    assert summary["duplicate"] >= killed_at

    settings = Settings.from_env(env)
    from archive.services import open_archive

    ingestor = Ingestor(open_archive(settings), SqliteIndex(settings.index_path))
    ids = {o["record_ids"][0] for o in summary["outcomes"]}
    assert len(ids) == n and indexed(index_path) == n
    for rid in ids:
        manifest = ingestor.committed(rid)
        assert manifest is not None
        for part in manifest["parts"]:  # every part of every visible record is whole and verifies
            data = b"".join(ingestor.read_part(manifest, part["name"]))
            assert hashlib.sha256(data).hexdigest() == part["sha256"]


# Killed inside one group commit of manifests (batch 2 of 16 records; batch 1 is committed). The store's
# put_many calls alternate: objects (odd), receipts (even). Each point is a step of the protocol.
_KILLER = r"""
import os, signal, sys
from pathlib import Path
from archive.index.sqlite import SqliteIndex
from archive.ingest.discover import Limits
from archive.ingest.pipeline import Ingestor
from archive.services import open_archive
from archive.settings import Settings
from archive.store.filesystem import FilesystemStore

point, inbox = sys.argv[1], Path(sys.argv[2])
calls, links = [0], [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

put_many, flush_files, link = FilesystemStore.put_many, FilesystemStore._flush_files, FilesystemStore._link

def counted_put_many(self, requests):
    calls[0] += 1
    links[0] = 0
    if point == "objects-durable-no-receipts" and calls[0] == 4:
        die()
    done = put_many(self, requests)
    if point == "committed-not-indexed" and calls[0] == 4:
        die()
    return done

def killing_flush_files(self, fds):
    if point == "objects-written-not-flushed" and calls[0] == 3:
        die()
    return flush_files(self, fds)

def killing_link(self, source, final, key):
    link(self, source, final, key)
    links[0] += 1
    if links[0] == 5 and (point, calls[0]) in (("objects-half-linked", 3), ("receipts-half-linked", 4)):
        die()

FilesystemStore.put_many = counted_put_many
FilesystemStore._flush_files = killing_flush_files
FilesystemStore._link = killing_link
settings = Settings.from_env(os.environ)
ingestor = Ingestor(open_archive(settings), SqliteIndex(settings.index_path))
ingestor.BATCH = 16
ingestor.run([inbox], limits=Limits())
"""


@pytest.mark.parametrize("point", ["objects-written-not-flushed", "objects-half-linked", "objects-durable-no-receipts",
                                   "receipts-half-linked", "committed-not-indexed"])
def test_sigkill_inside_a_group_commit_leaves_whole_records_and_a_rerun_completes_them(tmp_path, point):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    n = 60
    for i in range(n):
        (inbox / f"chat-{i:03d}.json").write_text(json.dumps(chat_doc(i)))
    env = cli_env(tmp_path / "home", "recorder")
    subprocess.run([sys.executable, "-m", "archive", "init"], env=env, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-c", _KILLER, point, str(inbox)], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    settings = Settings.from_env(env)
    from archive.services import open_archive

    ingestor = Ingestor(open_archive(settings), SqliteIndex(settings.index_path))
    visible = list(ingestor.retention.record_ids())
    # batch 1 is whole; of batch 2, a record is visible only once its manifest and receipt are both linked
    expected = {"objects-written-not-flushed": 16, "objects-half-linked": 16, "objects-durable-no-receipts": 16,
                "receipts-half-linked": 21, "committed-not-indexed": 32}[point]
    assert len(visible) == expected
    for rid in visible:  # every visible record is whole and verifies
        manifest = ingestor.committed(rid)
        data = b"".join(ingestor.read_part(manifest, "transcript"))
        assert hashlib.sha256(data).hexdigest() == manifest["parts"][0]["sha256"]
    assert indexed(settings.index_path) <= len(visible)
    assert ingestor.retention.rebuild_index() == len(visible)  # orphans left by the kill are not records

    rerun = subprocess.run([sys.executable, "-m", "archive", "ingest", "--json", str(inbox)], env=env,
                           capture_output=True, check=True)
    summary = json.loads(rerun.stdout)
    assert summary["rejected"] == 0 and summary["duplicate"] == expected and summary["archived"] == n - expected
    ids = {o["record_ids"][0] for o in summary["outcomes"]}
    assert len(ids) == n and indexed(settings.index_path) == n
    for rid in ids:
        manifest = ingestor.committed(rid)
        data = b"".join(ingestor.read_part(manifest, "transcript"))
        assert hashlib.sha256(data).hexdigest() == manifest["parts"][0]["sha256"]
    # a manifest linked without its receipt stays an unreadable orphan; its record committed under a new name
    orphans = list(ingestor.vault.orphans())
    assert len(orphans) == {"objects-half-linked": 5, "objects-durable-no-receipts": 16,
                            "receipts-half-linked": 11}.get(point, 0)
    assert all(name.endswith("/manifest") for name in orphans)


@pytest.mark.s3
def test_ingest_into_seaweedfs_object_lock(seaweed, inbox, tmp_path):
    """The same pipeline on the production store: records land under COMPLIANCE lock in S3."""
    env = {"ARCHIVE_HOME": str(tmp_path / "home"), "ARCHIVE_STORE": "s3://ingest-evidence/archive",
           "ARCHIVE_S3_ENDPOINT_URL": seaweed.endpoint_url, "ARCHIVE_S3_ACCESS_KEY_ID": seaweed.access_key,
           "ARCHIVE_S3_SECRET_ACCESS_KEY": seaweed.secret_key}
    arch, _ = init_archive(Settings.from_env(env), create_bucket=True)
    ingestor = Ingestor(arch, SqliteIndex(arch.settings.index_path))
    summary = ingestor.run([inbox / "calls", inbox / "chats"], limits=Limits())
    assert summary.rejected == 0 and summary.archived >= 3
    call = next(o for o in summary.outcomes if o.origin.endswith("call-1.wav"))
    manifest = ingestor.committed(call.record_ids[0])
    part = manifest["parts"][0]
    info = arch.store.head(f"objects/{part['object']}")
    assert info.mode.value == "COMPLIANCE" and info.retain_until.year >= 2031
    assert b"".join(arch.vault.open(part["object"])) == (inbox / "calls" / "call-1.wav").read_bytes()
    again = ingestor.run([inbox / "calls", inbox / "chats"], limits=Limits())
    assert again.archived == 0 and again.duplicate == summary.archived
