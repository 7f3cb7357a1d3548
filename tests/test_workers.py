"""Distributed ingest with real parts: SeaweedFS as the inbox and the archive (Object Lock), Redis from
Debian as broker and coordination, real ``celery worker`` processes and a ``celery beat``.

The acceptance tests: two workers (concurrency 2) take 1,000 mixed inputs from the inbox; one is SIGKILLed
mid-run and restarted (and, in the second test, Redis is killed and restarted empty instead). Every
valid input must be archived exactly once — none lost, none duplicated, counted from the store — and
the inbox must end holding only the rejected inputs, each in the quarantine with its reason.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid

import pytest

from archive.services import open_archive
from archive.settings import Settings
from tests.servers import RabbitMQ, Redis
from tests.workerkit import Workers, account, archive_env, inbox_keys, init, upload_inputs, wait_until

pytestmark = pytest.mark.s3

N = 1000


@pytest.fixture(scope="module")
def redis():
    with Redis() as server:
        yield server


@pytest.fixture(scope="module")
def rabbitmq():
    with RabbitMQ() as server:
        yield server


@pytest.fixture
def setup(seaweed, redis, tmp_path, request):
    """A fresh archive bucket (Object Lock), inbox bucket and archive home; Redis emptied. The queue on
    Redis, or (``parametrize("setup", ["rabbitmq"], indirect=True)``) on RabbitMQ, emptied, with Redis
    beside it for the claims: the two set-ups Celery users run."""
    import redis as redis_client

    broker_url = redis.url
    if getattr(request, "param", "redis") == "rabbitmq":
        import kombu

        broker_url = request.getfixturevalue("rabbitmq").url
        with kombu.Connection(broker_url) as conn:  # what a test before left in the queue
            with contextlib.suppress(kombu.exceptions.ChannelError):
                conn.default_channel.queue_purge("archive")
    redis_client.Redis.from_url(redis.url).flushall()
    archive_bucket = seaweed.make_locked_bucket(f"a-{uuid.uuid4().hex[:16]}")
    inbox_bucket = f"i-{uuid.uuid4().hex[:16]}"
    seaweed.client().create_bucket(Bucket=inbox_bucket)
    env = archive_env(seaweed, archive_bucket, inbox_bucket, tmp_path / "home", redis.url,
                      ARCHIVE_BROKER_URL=broker_url, ARCHIVE_REDIS_URL=redis.url)
    init(env)
    return env, seaweed.client(), inbox_bucket, tmp_path


def _run(env, client, inbox_bucket, tmp_path, disrupt) -> tuple[dict, set[str], object]:
    inputs = upload_inputs(client, inbox_bucket, "drop", N)
    workers = Workers(env, tmp_path)
    try:
        workers.start("w1")
        workers.start("w2")
        workers.start_beat()
        remaining = lambda: inbox_keys(client, inbox_bucket, "drop")  # noqa: E731
        total = len(remaining())
        # mid-run: a third of the inputs gone from the inbox
        wait_until(lambda: len(remaining()) < total * 2 / 3, 300, what="a third of the inbox archived")
        disrupt(workers)
        wait_until(lambda: remaining() <= inputs.bad, 600, 1.0, what="the inbox holding only rejected inputs")
        assert len(workers.alive()) == 3, f"a worker died: {workers.alive()}\n{_logs(tmp_path)}"
        # the events were staged before the inputs left; the workers themselves give them their place
        # in the log (an integrator thread per process, the beat's task for what is left)
        staged = open_archive(Settings.from_env(env)).audit.staged
        wait_until(lambda: not staged(), 60, 0.5, what="the workers integrating every staged audit event")
    except BaseException:
        workers.dump_stacks()
        print(_logs(tmp_path), file=sys.stderr)
        print(_stuck(env, client, inbox_bucket, inputs), file=sys.stderr)
        raise
    finally:
        workers.stop()
    return account(inputs, env), remaining(), inputs


def _stuck(env, client, inbox_bucket, inputs) -> str:
    """What a run that did not drain left: the valid inputs still in the inbox, what the quarantine and
    Redis say of them, and the queue."""
    import redis as redis_client

    try:
        stuck = sorted(inbox_keys(client, inbox_bucket, "drop") - inputs.bad)
        r = redis_client.Redis.from_url(env["ARCHIVE_BROKER_URL"])
        quarantine = json.loads(subprocess.run(
            [sys.executable, "-m", "archive.cli", "quarantine", "list", "--json"], env={**env, "PATH": ""},
            capture_output=True, check=True).stdout)
        names = {f"s3://{inbox_bucket}/{k}" for k in stuck}
        groups = {k.split("/", 1)[1].rsplit(".", 1)[0] for k in stuck}  # "day1/call-7" (members: inbox|group|files)
        return json.dumps({
            "stuck": stuck[:20], "stuck_count": len(stuck),
            "quarantined": [e for e in quarantine if e["origin"] in names][:10],
            "rejected": sorted(m for m in map(bytes.decode, r.smembers("archive:rejected"))
                               if m.split("|")[1] in groups)[:10],
            "queued": len(list(r.scan_iter("archive:queued:*"))), "claims": len(list(r.scan_iter("archive:claim:*"))),
            "queue": r.llen("archive"), "unacked": r.hlen("unacked"),
            "counters": {k.decode(): v.decode() for k, v in r.hgetall("archive:counters").items()},
        }, indent=1)
    except Exception as e:  # (the diagnosis must not hide the failure)
        return f"(could not diagnose: {e!r})"


def _logs(tmp_path) -> str:
    """Each process's log: its warnings and errors whole (why a worker stopped is at the start of its
    trouble, not in its shutdown's traceback), the banners left out."""
    out = []
    for path in sorted(tmp_path.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        first = next((i for i, line in enumerate(lines) if any(m in line for m in (": WARNING/", ": ERROR/",
                                                                                 ": CRITICAL/", "Traceback", "most recent call first"))), None)
        shown = "\n".join(lines[first:])[:20000] if first is not None else "\n".join(lines[-15:])
        out.append(f"--- {path.name}\n{shown}")
    return "\n".join(out)


def _check(result, left, inputs, env, client, inbox_bucket):
    from tests.workerkit import records_by_interaction

    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    assert result["unexpected"] == 0, result
    # every record committed is named by an ingest audit event, the killed worker's included: a worker
    # moves an input's files only after the event is recorded, so one killed before takes it again
    committed = {r for rids in records_by_interaction(env).values() for r in rids}
    audited = {r for e in open_archive(Settings.from_env(env)).audit.events() if e.event["action"] == "ingest"
               and e.event["outcome"] == "ok" for r in e.event["target"].get("records", [])}
    assert committed <= audited, sorted(committed - audited)[:5]
    assert left == inputs.bad  # rejected inputs stay where they were; everything else moved on
    processed = inbox_keys(client, inbox_bucket, "processed")
    assert processed == {k.replace("drop/", "processed/", 1) for keys in inputs.valid.values() for k in keys}
    listed = subprocess.run([sys.executable, "-m", "archive.cli", "quarantine", "list", "--json"],
                            env={**env, "PATH": ""}, capture_output=True)
    assert listed.returncode == 0, listed.stderr.decode(errors="replace")
    quarantine = json.loads(listed.stdout)
    named = {e["origin"] for e in quarantine}
    for key in inputs.bad:  # every rejected input has its reason, under its inbox name
        if key.endswith((".docx", ".wav")) or (key.endswith(".json") and key[:-5] + ".wav" not in inputs.bad):
            assert f"s3://{inbox_bucket}/{key}" in named, (key, sorted(named)[:5])


def _pairs(batches) -> list[tuple[str, str]]:
    """(inbox, group id) of every group the scan's batches carry."""
    return [(url, g["id"]) for url, groups in batches for g in groups]


@pytest.mark.parametrize("setup", ["redis", "rabbitmq"], indirect=True)
def test_a_killed_worker_loses_and_duplicates_nothing(setup):
    env, client, inbox_bucket, tmp_path = setup

    def kill_and_restart(workers: Workers) -> None:
        workers.kill("w1")  # SIGKILL, mid-task: its claims lapse, its inputs stay in the inbox
        time.sleep(1)
        workers.start("w1")

    result, left, inputs = _run(env, client, inbox_bucket, tmp_path, kill_and_restart)
    _check(result, left, inputs, env, client, inbox_bucket)


def test_a_redis_restart_loses_and_duplicates_nothing(setup, redis):
    env, client, inbox_bucket, tmp_path = setup

    def restart_redis(workers: Workers) -> None:
        redis.restart()  # killed and started empty: queue, claims and markers gone

    result, left, inputs = _run(env, client, inbox_bucket, tmp_path, restart_redis)
    _check(result, left, inputs, env, client, inbox_bucket)


@pytest.mark.parametrize("setup", ["rabbitmq"], indirect=True)
def test_a_rabbitmq_restart_loses_and_duplicates_nothing(setup, rabbitmq):
    """RabbitMQ SIGKILLed mid-run and started again on its data: the workers wait it out (none dies),
    deliveries they had not acknowledged come back, and nothing is lost or archived twice."""
    env, client, inbox_bucket, tmp_path = setup

    def restart_rabbitmq(workers: Workers) -> None:
        rabbitmq.restart()

    result, left, inputs = _run(env, client, inbox_bucket, tmp_path, restart_rabbitmq)
    _check(result, left, inputs, env, client, inbox_bucket)


@pytest.mark.es
def test_workers_on_two_machines_index_into_the_search_engine_in_bulk_and_keep_no_local_index(setup, shims):
    """The production stack: workers index into Elasticsearch/OpenSearch (osmem-server behind the
    Elasticsearch 8 shim) with bulk requests of many records, never into a SQLite file in the home (which
    workers on two machines could not share), and the index matches the store afterwards."""
    from tests.workerkit import records_by_interaction

    env, client, inbox_bucket, tmp_path = setup
    shim = shims("elasticsearch-8")
    env = {**env, "ARCHIVE_INDEX_URL": shim.url, "ARCHIVE_ES_INDEX": f"w-{uuid.uuid4().hex[:10]}"}
    inputs = upload_inputs(client, inbox_bucket, "drop", 200, mix="chats")
    shim.clear_log()
    workers = Workers(env, tmp_path)
    try:
        workers.start("w1")
        workers.start("w2")
        workers.start_beat()
        wait_until(lambda: not inbox_keys(client, inbox_bucket, "drop"), 300, 0.5, what="the inbox archived")
    except BaseException:
        print(_logs(tmp_path), file=sys.stderr)
        raise
    finally:
        workers.stop()
    committed = {r for rids in records_by_interaction(env).values() for r in rids}
    assert len(committed) == len(inputs.valid) == 200
    bulks = [r for r in shim.requests() if r["path"].endswith("/_bulk") and r["status"] == 200]
    indexed = {i for r in bulks for i in r.get("bulk_ids", [])}
    assert committed <= indexed, sorted(committed - indexed)[:5]
    assert len(bulks) < len(committed) / 4, len(bulks)  # many records per request, not one each
    settings = Settings.from_env(env)
    assert not settings.index_path.exists()  # no worker wrote a local index
    check = subprocess.run([sys.executable, "-m", "archive.cli", "reindex", "--check", "--json"],
                           env={**env, "PATH": ""}, capture_output=True)
    assert check.returncode == 0, (check.stdout.decode()[-2000:], check.stderr.decode()[-2000:])


# --- fixity and status, on the embedded default (no servers) ---------------------------------------------


def test_fixity_names_an_altered_object_as_a_searchable_finding_and_repairs_nothing(tmp_path):
    import os
    from pathlib import Path

    from tests.test_cli import cli_env, run
    from tests.workerkit import wav_bytes

    env = cli_env(tmp_path / "home", "tester")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):  # calls big enough to be sealed as objects of their own
        (inbox / f"call-{i}.wav").write_bytes(wav_bytes(8.0, i))
        (inbox / f"call-{i}.json").write_text(json.dumps({
            "schema": "archive-record/1", "source": {"system": "t", "interaction_id": f"fx-{i}"},
            "channel": "phone", "started_at": f"2024-03-0{i + 1}T10:00:00Z",
            "participants": [{"role": "agent", "id": "7"}]}))
    run(env, "init")
    run(env, "ingest", str(inbox))
    clean = json.loads(run(env, "fixity", "--json").stdout)
    assert clean["records"] == 3 and clean["failed"] == [] and clean["objects"] >= 6

    target = json.loads(run(env, "search", "interaction:fx-1", "--json", "--reason", "fixity test")
                        .stdout)["records"][0]
    part = next(p for p in target["parts"] if p["name"] == "audio")
    data = next((Path(env["ARCHIVE_HOME"]) / "store").rglob(f"*{part['object'].split('/')[-1]}#data"))
    os.chmod(data, 0o644)
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0x20  # one bit, mid-recording
    data.write_bytes(bytes(blob))
    altered = bytes(blob)

    proc = run(env, "fixity", check=False)
    assert proc.returncode == 1
    assert f"FAILED  {target['record_id']}  {part['object']}".encode() in proc.stdout
    assert b"1 failed" in proc.stdout
    assert data.read_bytes() == altered  # never "repaired"
    found = json.loads(run(env, "search", "finding:fixity-failed", "--json").stdout)["records"]
    assert [r["record_id"] for r in found] == [target["record_id"]]
    run(env, "reindex")  # the finding is in the store, so a rebuilt index still has it
    found = json.loads(run(env, "search", "finding:fixity-failed", "--json").stdout)["records"]
    assert [r["record_id"] for r in found] == [target["record_id"]]

    status = json.loads(run(env, "status", "--json").stdout)
    assert status["records"] == 3 and status["last_fixity_sweep"]["failed"] == 1 and status["workers"] is None
    assert status["quarantined"] == 0
    # with an inbox configured the workers' Redis must answer: here none does, which status says (exit 1)
    proc = run({**env, "ARCHIVE_INBOX": str(inbox), "ARCHIVE_BROKER_URL": "redis://127.0.0.1:1/0"}, "status",
               check=False)
    assert proc.returncode == 1 and b"unreachable" in proc.stdout
    audit = run(env, "audit", "show", "--record", target["record_id"]).stdout.decode()
    assert "fixity" in audit


# --- a directory inbox, driven in-process (the same calls the tasks make) ---------------------------------


def test_a_directory_inbox_is_taken_once_moved_after_archival_and_rejects_stay(redis, tmp_path):
    import os

    import redis as redis_client

    from archive.settings import Settings
    from archive.work import Work
    from tests.workerkit import init, wav_bytes

    redis_client.Redis.from_url(redis.url).flushall()
    inbox = tmp_path / "drop"
    (inbox / "calls").mkdir(parents=True)
    env = {"ARCHIVE_HOME": str(tmp_path / "home"), "ARCHIVE_INBOX": str(inbox), "ARCHIVE_BROKER_URL": redis.url,
           "ARCHIVE_INBOX_SETTLE": "PT30S", "ARCHIVE_ACTOR": "tester"}
    init(env)
    doc = {"schema": "archive-record/1", "source": {"system": "t", "interaction_id": "d-1"}, "channel": "phone",
           "started_at": "2024-03-01T10:00:00Z", "participants": [{"role": "agent", "id": "7"}]}
    (inbox / "calls" / "d-1.wav").write_bytes(wav_bytes(0.5, 1))
    (inbox / "calls" / "d-1.json").write_text(json.dumps(doc))
    (inbox / "chat-2.json").write_text(json.dumps({**doc, "source": {"system": "t", "interaction_id": "d-2"},
                                                   "channel": "chat", "messages": [{"at": "2024-03-01T10:00:00Z",
                                                                                    "from": "7", "text": "hello"}]}))
    (inbox / "bad\x07name.json").write_text("{}")
    (inbox / "notes.docx").write_bytes(b"PK")
    old = time.time() - 60
    for p in [*inbox.rglob("*")]:
        os.utime(p, (old, old))
    (inbox / "late.wav").write_bytes(wav_bytes(0.5, 2))  # just uploaded: its sidecar may be on its way

    work = Work(Settings.from_env(env))
    batches = work.scan()
    assert len(batches) == 1 and sorted(g for _, g in _pairs(batches)) == \
        ["bad\x07name", "calls/d-1", "chat-2", "notes"]  # not "late"; all in one task
    assert work.scan() == []  # queued already: a second scan does not queue them again
    results = {g: r for url, groups in batches for g, r in work.ingest_batch(url, groups)["groups"].items()}
    assert [o["status"] for o in results["calls/d-1"]["outcomes"]] == ["archived"]
    assert [o["status"] for o in results["bad\x07name"]["outcomes"]] == ["rejected"]
    assert results["notes"]["outcomes"][0]["code"] == "unsupported_format"
    assert results["notes"]["outcomes"][0]["origin"] == str(inbox / "notes.docx")
    # archived inputs moved beside the inbox; rejected ones untouched where they were
    done = tmp_path / "processed"
    assert sorted(str(p.relative_to(done)) for p in done.rglob("*") if p.is_file()) == \
        ["calls/d-1.json", "calls/d-1.wav", "chat-2.json"]
    assert sorted(p.name for p in inbox.rglob("*") if p.is_file()) == ["bad\x07name.json", "late.wav", "notes.docx"]
    assert work.ingest(str(inbox), "calls/d-1")["status"] == "gone"  # a late duplicate delivery: nothing to do
    (tmp_path / "secret.json").write_text("{}")
    assert work.ingest(str(inbox), "../secret")["status"] == "gone"  # a forged task cannot leave the inbox
    assert (tmp_path / "secret.json").exists()
    assert work.scan() == []  # rejected inputs are not retried while they are unchanged ...
    (inbox / "notes.docx").write_bytes(b"PK changed")
    os.utime(inbox / "notes.docx", (old, old))
    assert [g for _, g in _pairs(work.scan())] == ["notes"]  # ... and are once they change
    counters = work.coordinator.counters()
    assert counters["archived"] == 2 and counters["rejected"] == 2


def test_a_worker_dying_halfway_through_moving_a_group_leaves_nothing_stranded(redis, tmp_path):
    """A recording moved, its sidecar not yet, and the worker dies: the next worker finishes the move
    from the marker instead of taking the lone sidecar for a new (and refused) input."""
    import os

    import redis as redis_client

    from archive.inbox import DirectoryInbox
    from archive.settings import Settings
    from archive.work import Work
    from tests.workerkit import init, wav_bytes

    redis_client.Redis.from_url(redis.url).flushall()
    inbox = tmp_path / "drop"
    inbox.mkdir()
    env = {"ARCHIVE_HOME": str(tmp_path / "home"), "ARCHIVE_INBOX": str(inbox), "ARCHIVE_BROKER_URL": redis.url,
           "ARCHIVE_INBOX_SETTLE": "PT0S", "ARCHIVE_CLAIM_TTL": "PT1S", "ARCHIVE_ACTOR": "tester"}
    init(env)
    (inbox / "c-1.wav").write_bytes(wav_bytes(0.5, 1))
    (inbox / "c-1.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "t", "interaction_id": "c-1"}, "channel": "phone",
        "started_at": "2024-03-01T10:00:00Z", "participants": [{"role": "agent", "id": "7"}]}))

    class Died(Exception):
        pass

    real_finish = DirectoryInbox.finish

    def finish_one_then_die(self, group, names):
        real_finish(self, group, {sorted(names)[-1]})  # the recording moves ...
        raise Died  # ... and the worker is gone before the sidecar follows

    work = Work(Settings.from_env(env))
    [(url, [doc])] = work.scan()
    DirectoryInbox.finish = finish_one_then_die
    try:
        with pytest.raises(Died):
            work.ingest_batch(url, [doc])
    finally:
        DirectoryInbox.finish = real_finish
    assert sorted(os.listdir(inbox)) == [".archive-finishing", "c-1.json"]  # the sidecar, stranded
    time.sleep(1.2)  # the dead worker's claim lapses
    fresh = Work(Settings.from_env(env))
    [(url, [doc])] = fresh.scan()
    assert doc["id"] == "c-1" and doc["marked"]  # the scan saw the marker: the worker reads it
    assert fresh.ingest_batch(url, [doc])["groups"]["c-1"]["status"] == "done"
    assert sorted(p.name for p in inbox.rglob("*") if p.is_file()) == []  # moved on; the marker gone
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["c-1.json", "c-1.wav"]
    assert list(fresh.ingestor.quarantine()) == []  # the sidecar was never refused
    # a worker that died after moving every file but before dropping its marker: the next scan drops it
    inbox_ = work.inbox(url)
    inbox_.write_marker("gone-1", {"group": "gone-1", "files": {"gone-1.wav": "x"}})
    assert fresh.scan() == [] and not list((inbox / ".archive-finishing").glob("*.json"))


def test_a_file_registered_through_the_api_is_archived_by_a_worker(setup):
    import os
    import urllib.error
    import urllib.request

    from tests.apikit import served
    from tests.workerkit import records_by_interaction

    env, client, inbox_bucket, tmp_path = setup
    chat = {"schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": "reg-1"},
            "channel": "chat", "started_at": "2024-06-01T10:00:00Z",
            "participants": [{"role": "agent", "id": "7"}, {"role": "customer", "id": "C-9"}],
            "messages": [{"from": "C-9", "at": "2024-06-01T10:00:01Z", "text": "please call me back"}]}
    client.put_object(Bucket=inbox_bucket, Key="drop/api/chat-r1.json", Body=json.dumps(chat).encode())
    full = {**os.environ, **env}
    subprocess.run([sys.executable, "-m", "archive", "identity", "add", "recorder", "--role", "ingest"], env=full,
                   check=True, capture_output=True)
    token = subprocess.run([sys.executable, "-m", "archive", "token", "create", "recorder", "--role", "ingest"],
                           env=full, check=True, capture_output=True, text=True).stdout.strip()
    workers = Workers(env, tmp_path)  # one worker and no beat: only the registration queues the file
    try:
        workers.start("w1", concurrency=1)
        with served(full, tmp_path / "server.log") as base:
            def register(name: str) -> tuple[int, dict]:
                req = urllib.request.Request(f"{base}/api/v1/ingest/register", method="POST",
                                             data=json.dumps({"name": name}).encode(),
                                             headers={"Authorization": f"Bearer {token}",
                                                      "Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        return r.status, json.loads(r.read())
                except urllib.error.HTTPError as e:
                    return e.code, json.loads(e.read())

            status, doc = register("../elsewhere/chat.json")
            assert status == 422, doc
            status, doc = register("api/chat-r1.json")
            assert status == 202 and doc["queued"]["group"] == "api/chat-r1", doc
            wait_until(lambda: "reg-1" in records_by_interaction(env), 120, 1.0, what="the registered chat archived")
            wait_until(lambda: not inbox_keys(client, inbox_bucket, "drop"), 60, what="the chat moved out of the inbox")
        assert len(records_by_interaction(env)["reg-1"]) == 1
        assert inbox_keys(client, inbox_bucket, "processed") == {"processed/api/chat-r1.json"}
    except BaseException:
        workers.dump_stacks()
        print(_logs(tmp_path), file=sys.stderr)
        print(_stuck(env, client, inbox_bucket, inputs), file=sys.stderr)
        raise
    finally:
        workers.stop()


def test_a_task_message_naming_files_outside_its_group_is_refused_before_any_request():
    """A batch message carries each group as the scan listed it; the worker derives every key from the
    group id and the file names, so a forged message cannot reach other files or the done area."""
    from archive.inbox import S3Inbox

    inbox = S3Inbox("s3://bucket/drop", client=None)
    ok = inbox.adopt({"id": "day1/call-7", "files": [["call-7.json", 10, 1.0, "e1"], ["call-7.wav", 20, 2.0, "e2"]]})
    assert [i.key for i in ok.items] == ["drop/day1/call-7.json", "drop/day1/call-7.wav"] and ok.size == 30
    for forged in ({"id": "day1/call-7", "files": [["../../etc/passwd", 1, 1.0, "e"]]},
                   {"id": "day1/call-7", "files": [["other.wav", 1, 1.0, "e"]]},  # not of this group
                   {"id": "../processed/x", "files": [["x.json", 1, 1.0, "e"]]},
                   {"id": ".archive-finishing/x", "files": [["x.json", 1, 1.0, "e"]]},
                   {"id": "x", "files": [["x.json", "1", 1.0, "e"]]},  # not a size
                   {"id": "x", "files": [["x.json", 1, 1.0, "e"], ["x.json", 1, 1.0, "e"]]},
                   {"id": "x", "files": []}, {"id": 7}, {"files": []}, "x"):
        assert inbox.adopt(forged) is None, forged


def test_a_queued_or_claimed_input_is_not_queued_again_and_a_claim_stands_for_its_queued_mark(redis):
    import redis as redis_client

    from archive.coordination import Coordinator

    redis_client.Redis.from_url(redis.url).flushall()
    c = Coordinator(redis.url)
    keyed = [("in|a", "s1"), ("in|b", "s1"), ("in|c", "s1")]
    assert c.select_new(keyed, 60) == [0, 1, 2]
    assert c.select_new(keyed, 60) == []  # queued: not again, however long the queue waits
    with c.claim_many(["in|a", "in|b"], 30) as leases:
        assert "in|a" in leases and "in|b" in leases
        assert not c.r.exists("archive:queued:in|a")  # the claim stands for it now
        with c.claim_many(["in|a", "in|c"], 30) as other:
            assert "in|a" not in other and "in|c" in other  # another worker gets only what is free
        assert c.select_new(keyed, 60) == [2]  # c: neither queued (claimed, then released) nor claimed
        leases.release(["in|a"])
        assert c.select_new(keyed, 60) == [0]  # a worker gave it up unfinished: queued again
        assert c.select_new(keyed, 60) == []  # b is still claimed
    assert c.select_new(keyed, 60) == [1]
