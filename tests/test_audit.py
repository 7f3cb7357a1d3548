"""The audit log under attack, on the filesystem store and on SeaweedFS.

An untouched log verifies; each way of tampering — an event modified, deleted, inserted or reordered, a
batch deleted, a checkpoint forged or signed by an unknown key, the log rolled back or rewritten — is
named at its first bad position. On S3 the log is written in GOVERNANCE mode so the test can play an
insider holding the bypass permission; in COMPLIANCE mode the store itself refuses every one of these.
"""

from __future__ import annotations

import json
import threading

import pytest

from archive.audit.log import AuditLog, Event, _canonical
from archive.audit.verify import verify
from archive.dates import parse_duration
from archive.store.base import LockMode
from archive.store.filesystem import FilesystemStore


def event(i: int, **kw) -> Event:
    return Event(actor=f"user-{i % 3}", role="auditor", action="view", target={"records": [f"r{i}"]},
                 reason="QA sample", **kw)


@pytest.fixture(params=["appended", "staged"])
def log(request, any_store, keyring):
    """The log, filled by :func:`fill` as the CLI and the API write it (appended) or as workers do
    (staged, then integrated): tampering is named the same way on both."""
    log = AuditLog(any_store, retention=parse_duration("P1D"), signer=keyring.signer(),
                   lock_mode=LockMode.GOVERNANCE)
    log.fill_staged = request.param == "staged"
    return log


@pytest.fixture
def trusted(keyring):
    keyring.signer()  # (the signing key is made on first use)
    return keyring.signing_public_keys()


def fill(log: AuditLog, batches: int = 4, per_batch: int = 5) -> None:
    n = 0
    for _ in range(batches):
        if getattr(log, "fill_staged", False):  # two workers' batches, integrated together
            log.stage_many([event(n + i) for i in range(2)])
            log.stage_many([event(n + i) for i in range(2, per_batch)])
            log.integrate()
        else:
            log.append_many([event(n + i) for i in range(per_batch)])
        n += per_batch
        log.checkpoint()


# --- tampering, as an insider with raw store access would --------------------------------------------


def rewrite(store, key: str, data: bytes) -> None:
    if isinstance(store, FilesystemStore):
        path = store.root / "objects" / f"{key}#data"
        with store.open(key) as f:
            offset = f.tell()
        header = path.read_bytes()[:offset]
        path.chmod(0o644)
        path.write_bytes(header + data)
    else:
        remove(store, key)
        store.client.put_object(Bucket=store.bucket, Key=store.prefix + key, Body=data)


def remove(store, key: str) -> None:
    if isinstance(store, FilesystemStore):
        (store.root / "objects" / f"{key}#data").unlink()
    else:
        full = store.prefix + key
        for v in store.client.list_object_versions(Bucket=store.bucket, Prefix=full).get("Versions", []):
            store.client.delete_object(Bucket=store.bucket, Key=full, VersionId=v["VersionId"],
                                       BypassGovernanceRetention=True)


def batch(log: AuditLog, number: int) -> dict:
    return log._read_batch(number)


def put_batch(log: AuditLog, number: int, doc: dict) -> None:
    events = b",".join(_canonical(e) for e in doc["events"])
    body = (f'{{"format":"{doc["format"]}","batch":{doc["batch"]},"first_seq":{doc["first_seq"]},"events":['
            .encode() + events + b"]}")
    rewrite(log.store, f"audit/log/{number:012d}.json", body)


# --- tests -------------------------------------------------------------------------------------------


def test_an_untouched_log_verifies(log, trusted):
    fill(log)
    report = verify(log, trusted)
    assert report.ok, report.problems
    assert (report.events, report.batches, report.checkpoints) == (20, 4, 4)
    assert [e.seq for e in log.events()] == list(range(20))


def test_a_modified_event_is_named(log, trusted):
    fill(log)
    doc = batch(log, 2)
    doc["events"][2]["actor"] = "someone-else"  # event 7
    put_batch(log, 2, doc)
    report = verify(log, trusted)
    assert report.first.position == 7 and report.first.kind == "modified", report.problems


def test_the_last_event_modified_is_caught_by_the_signed_root(log, trusted):
    fill(log)
    doc = batch(log, 4)
    doc["events"][-1]["outcome"] = "denied"  # event 19: no event after it to break the chain
    put_batch(log, 4, doc)
    report = verify(log, trusted)
    assert report.first.position == 19 and report.first.kind == "modified", report.problems


def test_a_deleted_event_is_named(log, trusted):
    fill(log)
    doc = batch(log, 3)
    del doc["events"][1]  # event 11
    put_batch(log, 3, doc)
    report = verify(log, trusted)
    assert report.first.position == 11 and report.first.kind == "deleted", report.problems


def test_an_inserted_event_is_named(log, trusted):
    fill(log)
    doc = batch(log, 2)
    doc["events"].insert(3, dict(doc["events"][0]))  # a copy of event 5 placed at position 8
    put_batch(log, 2, doc)
    report = verify(log, trusted)
    assert report.first.position == 8, report.problems


def test_reordered_events_are_named(log, trusted):
    fill(log)
    doc = batch(log, 1)
    doc["events"][1], doc["events"][2] = doc["events"][2], doc["events"][1]  # events 1 and 2
    put_batch(log, 1, doc)
    report = verify(log, trusted)
    assert report.first.position == 1, report.problems


def test_a_deleted_batch_is_named(log, trusted):
    fill(log)
    remove(log.store, "audit/log/000000000002.json")  # events 5…9
    report = verify(log, trusted)
    assert report.first.position == 5 and report.first.kind == "deleted", report.problems


def test_a_forged_checkpoint_is_named(log, trusted):
    fill(log)
    key = "audit/checkpoints/000000000010.json"
    with log.store.open(key) as f:
        cp = json.loads(f.read())
    cp["root"] = "00" * 32
    rewrite(log.store, key, _canonical(cp))
    report = verify(log, trusted)
    assert any(p.kind == "forged-checkpoint" and p.position == 10 for p in report.problems), report.problems


def test_a_checkpoint_signed_by_an_unknown_key_is_forged(log, tmp_path):
    from archive.keys.keyring import KeyringProvider, create_keyring

    fill(log, batches=2)
    create_keyring(tmp_path / "other.json")
    report = verify(log, KeyringProvider(tmp_path / "other.json").signing_public_keys())
    # the checkpoints and the batches (signed with the same untrusted key) are named as forged
    assert report.problems and {p.kind for p in report.problems} == {"forged-checkpoint", "forged-batch"}


def test_a_rolled_back_log_is_named_against_the_witness(log, trusted, tmp_path):
    fill(log)
    witness = tmp_path / "witness.json"
    assert verify(log, trusted, witness=witness).ok
    remove(log.store, "audit/log/000000000004.json")
    remove(log.store, "audit/checkpoints/000000000020.json")
    report = verify(log, trusted, witness=witness)
    assert report.first.kind == "rolled-back" and report.first.position == 15, report.problems


def test_a_rewritten_and_re_signed_log_is_inconsistent_with_the_witness(log, trusted, tmp_path, keyring):
    fill(log, batches=2)
    witness = tmp_path / "witness.json"
    assert verify(log, trusted, witness=witness).ok
    # An insider with the signing key rewrites history: new events, re-chained, re-checkpointed.
    for key in list(log.store.list("audit/")):
        remove(log.store, key)
    fresh = AuditLog(log.store, retention=parse_duration("P1D"), signer=keyring.signer(),
                     lock_mode=LockMode.GOVERNANCE)
    fresh.append_many([event(100 + i) for i in range(12)])
    fresh.checkpoint()
    report = verify(fresh, trusted, witness=witness)
    assert report.first.kind == "inconsistent" and report.first.position == 9, report.problems


def test_concurrent_writers_neither_fork_nor_reorder(log, trusted):
    def writer(w: int) -> None:
        mine = AuditLog(log.store, retention=parse_duration("P1D"), lock_mode=LockMode.GOVERNANCE)
        for i in range(5):
            mine.append_many([event(1000 * w + i * 10 + j) for j in range(3)])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.checkpoint()
    report = verify(log, trusted)
    assert report.ok and report.events == 60 and report.batches == 20, report.problems


def test_threads_of_one_writer_share_batches_and_each_learns_its_own_positions(log, trusted):
    seqs: dict[int, list[int]] = {}

    def writer(w: int) -> None:
        for i in range(10):
            seqs[w * 100 + i] = log.append_many([event(w * 100 + i), event(w * 100 + i + 50)])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.checkpoint()
    report = verify(log, trusted)
    assert report.ok and report.events == 320, report.problems
    assert report.batches < 320 / 2  # concurrent appends were grouped (one write for several callers)
    by_seq = {e.seq: e.event for e in log.events()}
    for key, (first, second) in seqs.items():  # each caller got the positions its events hold, in order
        assert second == first + 1
        assert by_seq[first]["target"] == event(key).target and by_seq[second]["target"] == event(key + 50).target


def test_signing_key_rotation_keeps_old_checkpoints_verifiable(log, keyring):
    fill(log, batches=2)
    keyring.rotate_signing()
    log.signer = keyring.signer()
    log.append(event(99))
    assert log.checkpoint()["key_id"] == "sig-v2"
    report = verify(log, keyring.signing_public_keys())
    assert report.ok and report.checkpoints == 3, report.problems


# --- the newest events: signed batches, automatic checkpoints, the witness ---------------------------------


def rewrite_batch(log: AuditLog, number: int, doc: dict) -> None:
    """Store ``doc`` as batch ``number`` keeping every field (signature and peaks included)."""
    rewrite(log.store, f"audit/log/{number:012d}.json", json.dumps(doc).encode())


def tail_log(any_store, keyring) -> AuditLog:
    """A log whose first batch (events 0…4) is checkpointed and whose second (5…9) is not."""
    log = AuditLog(any_store, retention=parse_duration("P1D"), signer=keyring.signer(), lock_mode=LockMode.GOVERNANCE,
                   checkpoint_every=1000, checkpoint_interval=3600)
    log.append_many([event(i) for i in range(5)])  # no checkpoint known yet: this writer writes one
    log.append_many([event(i) for i in range(5, 10)])
    assert [cp["size"] for _, cp in log.checkpoints()] == [5]
    return log


def test_an_event_edited_after_the_newest_checkpoint_is_named_by_its_batch_signature(any_store, keyring, trusted):
    log = tail_log(any_store, keyring)
    doc = batch(log, 2)
    doc["events"][4]["reason"] = "routine"  # event 9: no event after it, no checkpoint over it
    rewrite_batch(log, 2, doc)
    report = verify(log, trusted)
    assert report.first.position == 9 and report.first.kind == "modified", report.problems
    assert "does not match its signature" in report.first.message


def test_events_cut_off_a_batch_after_the_newest_checkpoint_are_named(any_store, keyring, trusted):
    log = tail_log(any_store, keyring)
    doc = batch(log, 2)
    del doc["events"][3:]  # events 8 and 9 removed; what is left still chains
    rewrite_batch(log, 2, doc)
    report = verify(log, trusted)
    assert [(p.position, p.kind) for p in report.problems] == [(7, "modified")], report.problems


def test_an_unsigned_batch_beyond_every_checkpoint_is_named(any_store, keyring, trusted):
    log = tail_log(any_store, keyring)
    doc = batch(log, 2)
    for field in ("signature", "key_id", "peaks"):
        doc.pop(field)
    doc["events"][0]["actor"] = "someone-else"
    rewrite_batch(log, 2, doc)
    report = verify(log, trusted)
    assert {(p.position, p.kind) for p in report.problems} >= {(9, "unsigned")}, report.problems


def test_one_writer_of_many_checkpoints_each_multiple_and_none_fork(any_store, keyring, trusted):
    AuditLog(any_store, retention=parse_duration("P1D"), signer=keyring.signer(),
             lock_mode=LockMode.GOVERNANCE).append(event(0))  # the first checkpoint, at 1

    def writer(w: int) -> None:
        mine = AuditLog(any_store, retention=parse_duration("P1D"), signer=keyring.signer(),
                        lock_mode=LockMode.GOVERNANCE, checkpoint_every=10, checkpoint_interval=3600)
        for i in range(5):
            mine.append_many([event(100 * w + 10 * i + j) for j in range(3)])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = AuditLog(any_store, retention=parse_duration("P1D"), lock_mode=LockMode.GOVERNANCE)
    sizes = sorted(cp["size"] for _, cp in log.checkpoints())
    # 61 events: one checkpoint for each multiple of 10, at the end of the batch that crossed it
    assert sizes[0] == 1 and len(sizes) == 7, sizes
    assert all(10 * k <= size < 10 * k + 3 for k, size in enumerate(sizes[1:], 1)), sizes
    report = verify(log, trusted)
    assert report.ok and report.events == 61 and report.checkpoints == 7, report.problems


def test_a_checkpoint_is_written_when_the_newest_is_older_than_the_interval(fs_store, keyring, monkeypatch):
    import archive.audit.log as audit_log

    now = [1_000_000.0]
    monkeypatch.setattr(audit_log.time, "time", lambda: now[0])
    log = AuditLog(fs_store, retention=parse_duration("P1D"), signer=keyring.signer(), checkpoint_every=1000,
                   checkpoint_interval=60)
    log.append(event(0))  # none known: checkpoint at 1
    now[0] += 30
    log.append(event(1))
    now[0] += 31  # 61 s after the checkpoint at 1
    log.append(event(2))
    assert [cp["size"] for _, cp in log.checkpoints()] == [1, 3]
    # a new writer (another process) learns of the checkpoint at 3 from the store, not writing its own
    AuditLog(fs_store, retention=parse_duration("P1D"), signer=keyring.signer(), checkpoint_every=1000,
             checkpoint_interval=60).append(event(3))
    assert [cp["size"] for _, cp in log.checkpoints()] == [1, 3]


def test_a_failed_checkpoint_never_fails_the_append_and_is_written_after_the_next(fs_store, keyring, trusted):
    from archive.errors import StoreUnavailable

    log = AuditLog(fs_store, retention=parse_duration("P1D"), signer=keyring.signer(), checkpoint_every=2)
    real_put = fs_store.put
    failing = [True]

    def put(key, *args, **kw):
        if key.startswith("audit/checkpoints/") and failing[0]:
            failing[0] = False
            raise StoreUnavailable("simulated outage")
        return real_put(key, *args, **kw)

    fs_store.put = put
    assert log.append_many([event(0), event(1)]) == [0, 1]  # crossed 2; the checkpoint failed
    assert list(log.checkpoints()) == []
    log.append(event(2))
    assert [cp["size"] for _, cp in log.checkpoints()] == [3]
    assert verify(log, trusted).ok


def test_verify_checkpoints_the_tail_and_gives_it_to_the_witness(any_store, keyring, trusted, tmp_path):
    from archive.audit.witness import FileWitness

    log = tail_log(any_store, keyring)
    witness = FileWitness(tmp_path / "other-disk" / "witness.json")
    report = verify(log, trusted, witness=witness, checkpoint=True)
    assert report.ok and report.tail == 5 and report.checkpoint_written["size"] == 10, report.problems
    assert witness.newest()["size"] == 10 and witness.newest()["signature"] == report.checkpoint_written["signature"]
    # the witness only moves forward
    witness.publish({**report.checkpoint_written, "size": 5})
    assert witness.newest()["size"] == 10


def test_the_writer_gives_its_checkpoints_to_the_witness(fs_store, keyring, trusted, tmp_path):
    from archive.audit.witness import FileWitness

    witness = FileWitness(tmp_path / "other-disk" / "witness.json")
    log = AuditLog(fs_store, retention=parse_duration("P1D"), signer=keyring.signer(), checkpoint_every=5,
                   witness=witness)
    for i in range(12):
        log.append(event(i))
    assert witness.newest()["size"] == 10
    # events 9…11 (batches 10…12) cut off together with the checkpoint at 10: the witness still knows
    for number in (10, 11, 12):
        remove(fs_store, f"audit/log/{number:012d}.json")
    remove(fs_store, "audit/checkpoints/000000000010.json")
    report = verify(log, trusted, witness=witness)
    assert {p.kind for p in report.problems} == {"rolled-back", "deleted"}, report.problems


def test_a_witness_that_cannot_be_read_or_is_not_genuine_fails_verification(fs_store, keyring, trusted, tmp_path):
    from archive.audit.witness import FileWitness

    log = tail_log(fs_store, keyring)
    path = tmp_path / "witness.json"
    path.write_text("{not json")
    report = verify(log, trusted, witness=FileWitness(path))
    assert [p.kind for p in report.problems] == ["witness-unavailable"], report.problems
    _, checkpoint = next(log.checkpoints())
    path.write_text(json.dumps({**checkpoint, "size": 10**6}))  # a bigger checkpoint, not signed as such
    report = verify(log, trusted, witness=FileWitness(path))
    assert [p.kind for p in report.problems] == ["witness-invalid"], report.problems


@pytest.mark.s3
def test_an_s3_witness_is_write_once_and_reads_its_newest_entry(seaweed, keyring, fs_store):
    from archive.audit.witness import S3Witness

    bucket = seaweed.make_locked_bucket(f"wit-{threading.get_ident() % 10**8}-{id(fs_store) % 10**6}")
    client = lambda: seaweed.client()  # noqa: E731 - made on first use, as the archive does
    witness = S3Witness(client, bucket, "audit")
    assert witness.newest() is None
    log = tail_log(fs_store, keyring)
    cp = log.checkpoint()
    witness.publish({**cp, "size": 5})
    witness.publish(cp)
    witness.publish(cp)  # again: write-once, nothing changes
    assert witness.newest() == cp


# --- staged events: the workers' path (AuditLog.stage_many, AuditLog.integrate) ---------------------


def staged_log(store, keyring) -> AuditLog:
    """Another process's view of the same log (its own head, its own memory of what is staged)."""
    return AuditLog(store, retention=parse_duration("P1D"), signer=keyring.signer(), lock_mode=LockMode.GOVERNANCE)


def targets(log: AuditLog) -> list[str]:
    return [e.event["target"]["records"][0] for e in log.events()]


def test_staged_events_take_their_place_once_in_staging_order(log, keyring, trusted):
    log.append_many([event(0)])
    keys = [log.stage_many([event(i), event(i + 100)]) for i in range(1, 4)]
    assert log.staged() == sorted(keys)
    assert log.integrate() == 6
    assert log.staged() == [] and log.integrate() == 0  # the staged objects are gone; nothing twice
    assert targets(log) == ["r0", "r1", "r101", "r2", "r102", "r3", "r103"]
    assert len(list(log.batches())) == 2  # every staged event in one batch
    report = verify(log, trusted)
    assert report.ok and report.events == 7 and report.staged == 0, report.problems


def test_verify_integrates_what_is_staged_first(log, keyring, trusted):
    log.append_many([event(0)])
    staged_log(log.store, keyring).stage_many([event(1)])
    report = verify(log, trusted)
    assert report.ok and report.integrated == 1 and report.events == 2, report.problems


def test_an_integrator_killed_before_its_deletes_leaves_nothing_integrated_twice(log, keyring, trusted, monkeypatch):
    first = staged_log(log.store, keyring)
    for i in range(3):
        first.stage_many([event(i)])
    with monkeypatch.context() as m:  # killed after its batch is written, before any staged object is deleted
        def killed(*_a, **_k):
            raise SystemExit("killed")
        m.setattr(log.store, "delete", killed)
        with pytest.raises(SystemExit):
            first.integrate()
    assert len(log.staged()) == 3  # still there, and in the log
    log.append_many([event(50)])  # a direct writer in between carries what the batch before it named
    first.stage_many([event(3)])
    successor = staged_log(log.store, keyring)  # a new process: it knows only what the log says
    assert successor.integrate() == 1
    assert log.staged() == []  # the leftovers deleted too, not integrated again
    assert targets(log) == ["r0", "r1", "r2", "r50", "r3"]
    assert verify(log, trusted).ok


def test_racing_integrators_and_stagers_integrate_every_event_exactly_once(log, keyring, trusted):
    stop = threading.Event()
    errors: list[BaseException] = []

    def stager(w: int) -> None:
        mine = staged_log(log.store, keyring)
        for i in range(10):
            mine.stage_many([event(1000 * w + i), event(1000 * w + i + 500)])

    def integrator() -> None:
        mine = staged_log(log.store, keyring)
        try:
            while not stop.is_set():
                mine.integrate()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    integrators = [threading.Thread(target=integrator) for _ in range(3)]
    stagers = [threading.Thread(target=stager, args=(w,)) for w in range(4)]
    for t in integrators + stagers:
        t.start()
    for t in stagers:
        t.join()
    stop.set()
    for t in integrators:
        t.join()
    assert not errors, errors
    staged_log(log.store, keyring).integrate_all()
    got = targets(log)
    assert sorted(got) == sorted(f"r{1000 * w + i + d}" for w in range(4) for i in range(10) for d in (0, 500))
    for w in range(4):  # each stager's events in the order it staged them, each pair together
        mine = [t for t in got if int(t[1:]) // 1000 == w]
        assert mine == [f"r{1000 * w + i + d}" for i in range(10) for d in (0, 500)]
    report = verify(log, trusted)
    assert report.ok and report.events == 80 and report.staged == 0, report.problems


def test_an_altered_staged_object_is_kept_named_and_fails_verification(log, keyring, trusted):
    log.append_many([event(0)])
    good = log.stage_many([event(1)])
    bad = log.stage_many([event(2)])
    with log.store.open(bad) as f:
        doc = json.loads(f.read())
    doc["events"][0]["actor"] = "someone-else"  # rewritten before the integrator read it
    rewrite(log.store, bad, _canonical(doc))
    assert log.integrate() == 2
    events = [e.event for e in log.events()]
    assert events[1]["target"]["records"] == ["r1"]
    invalid = events[2]
    assert invalid["action"] == "audit-staged-invalid" and invalid["target"]["object"] == bad
    with log.store.open(invalid["target"]["kept"]) as f:  # kept as found, for the investigation
        assert json.loads(f.read())["events"][0]["actor"] == "someone-else"
    assert log.staged() == [] and good not in log.staged()
    report = verify(log, trusted)
    assert report.first.kind == "staged-invalid" and report.first.position == 2, report.problems


def test_a_staged_object_signed_by_an_unknown_key_is_not_integrated_as_genuine(log, trusted, tmp_path):
    from archive.keys.keyring import KeyringProvider, create_keyring

    create_keyring(tmp_path / "other.json")
    stranger = AuditLog(log.store, retention=parse_duration("P1D"),
                        signer=KeyringProvider(tmp_path / "other.json").signer(),
                        lock_mode=LockMode.GOVERNANCE)
    stranger.stage_many([event(1)])
    log.append_many([event(0)])
    log.integrate(trusted_keys=trusted)
    assert [e.event["action"] for e in log.events()] == ["view", "audit-staged-invalid"]


_KILLED_INTEGRATOR = r"""
import json, os, signal, sys
sys.path.insert(0, sys.argv[2])
from archive.audit.log import AuditLog, Event
from archive.dates import parse_duration
from archive.keys.keyring import KeyringProvider
from archive.store.base import LockMode

cfg = json.loads(sys.argv[1])
if cfg["kind"] == "filesystem":
    from archive.store.filesystem import FilesystemStore
    store = FilesystemStore(cfg["root"])
else:
    from archive.store.s3 import S3Store
    import boto3
    from botocore.config import Config
    client = boto3.client("s3", endpoint_url=cfg["endpoint"], aws_access_key_id=cfg["key"],
                          aws_secret_access_key=cfg["secret"], region_name=cfg["region"],
                          config=Config(s3={"addressing_style": "path"}))
    store = S3Store(cfg["bucket"], "archive", client=client)
log = AuditLog(store, retention=parse_duration("P1D"), signer=KeyringProvider(cfg["keyring"]).signer(),
               lock_mode=LockMode.GOVERNANCE)
for i in range(5):
    log.stage_many([Event(actor="w", role="ingest", action="ingest", target={"records": [f"r{i}"]})])
store.delete = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # killed at its first delete
log.integrate()
"""


def test_an_integrator_process_sigkilled_between_its_batch_and_its_deletes(any_store, keyring, trusted, tmp_path):
    """A real process, SIGKILLed at the worst moment: its batch written, no staged object deleted."""
    import subprocess
    import sys
    from pathlib import Path

    from archive.store.filesystem import FilesystemStore

    keyring.signer()
    if isinstance(any_store, FilesystemStore):
        cfg = {"kind": "filesystem", "root": str(any_store.root)}
    else:
        c = any_store.client
        cfg = {"kind": "s3", "bucket": any_store.bucket, "endpoint": c.meta.endpoint_url,
               "key": c._request_signer._credentials.access_key, "secret": c._request_signer._credentials.secret_key,
               "region": c.meta.region_name}
    cfg["keyring"] = str(keyring.path)
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", _KILLED_INTEGRATOR, json.dumps(cfg), root], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    log = staged_log(any_store, keyring)
    assert len(log.staged()) == 5 and len(list(log.events())) == 5  # in the log, and still staged
    log.stage_many([event(9)])
    assert log.integrate_all() == 1
    assert log.staged() == []
    assert [e.event["target"]["records"][0] for e in log.events()] == ["r0", "r1", "r2", "r3", "r4", "r9"]
    assert verify(log, trusted).ok
