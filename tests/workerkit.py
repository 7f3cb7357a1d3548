"""Shared by tests/test_workers.py and bench/workers.py: an archive on SeaweedFS with an S3 inbox, real
``celery worker`` processes on a real Redis, mixed inputs uploaded the way recorders upload them, and
the exactly-once accounting (every valid input is one record, none twice, the inbox left holding only
rejected inputs)."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wav_bytes(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(struct.pack("<h", int(3000 * math.sin(i / (5 + seed % 7))))
                               for i in range(int(8000 * seconds))))
    return buf.getvalue()


def _doc(iid: str, channel: str, i: int) -> dict:
    return {"schema": "archive-record/1", "source": {"system": "kit", "interaction_id": iid}, "channel": channel,
            "started_at": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00+08:00",
            "participants": [{"role": "agent", "id": str(1000 + i % 50)},
                             {"role": "customer", "id": f"C-{i % 300}", "account": f"AC-{i % 300}"}]}


@dataclass
class Inputs:
    """What was uploaded: valid inputs by interaction id, and the keys of the ones that must be rejected."""

    valid: dict[str, list[str]] = field(default_factory=dict)  # interaction id -> its keys
    bad: set[str] = field(default_factory=set)
    bytes: int = 0


def upload_inputs(client, bucket: str, prefix: str, n: int, *, tag: str = "", mix: str = "mixed",
                  call_seconds: float = 0.3) -> Inputs:
    """``n`` inputs under s3://bucket/prefix/: with mix="mixed", chats (6 in 10), calls with a JSON
    sidecar (2), emails (1) and bad inputs (1: a corrupt recording, an unsupported file, broken JSON);
    mix="chats" or "calls" for one kind only."""
    out = Inputs()
    tag = tag or uuid.uuid4().hex[:8]

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body)
        out.bytes += len(body)

    for i in range(n):
        kind = {"mixed": ("chat",) * 6 + ("call",) * 2 + ("email", "bad"), "chats": ("chat",),
                "calls": ("call",)}[mix][i % (10 if mix == "mixed" else 1)]
        iid = f"{tag}-{i:05d}"
        folder = f"day{i % 3}"
        if kind == "chat":
            doc = _doc(iid, "chat", i) | {"messages": [
                {"at": "2024-01-01T00:00:00Z", "from": f"C-{i % 300}", "text": f"hello, about order {i}"},
                {"at": "2024-01-01T00:00:09Z", "from": str(1000 + i % 50), "text": "sure, a refund is on its way"}]}
            put(f"{folder}/chat-{iid}.json", json.dumps(doc).encode())
            out.valid[iid] = [f"{prefix}/{folder}/chat-{iid}.json"]
        elif kind == "call":
            put(f"{folder}/call-{iid}.wav", wav_bytes(call_seconds, i))
            put(f"{folder}/call-{iid}.json", json.dumps(_doc(iid, "phone", i) | {"direction": "inbound"}).encode())
            out.valid[iid] = [f"{prefix}/{folder}/call-{iid}.wav", f"{prefix}/{folder}/call-{iid}.json"]
        elif kind == "email":
            eml = (f"From: Customer {i} <c{i}@example.com>\r\nTo: support@bank.example\r\n"
                   f"Subject: complaint {iid}\r\nDate: Mon, 05 Feb 2024 10:{i % 60:02d}:00 +0000\r\n"
                   f"Message-ID: <{iid}@example.com>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                   f"Please call me back about case {iid}.\r\n").encode()
            put(f"{folder}/mail-{iid}.eml", eml)
            out.valid[iid] = [f"{prefix}/{folder}/mail-{iid}.eml"]
        else:
            which = (i // 10) % 3
            if which == 0:  # a "recording" that is not one, with a valid sidecar
                put(f"{folder}/bad-{iid}.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(64))
                put(f"{folder}/bad-{iid}.json", json.dumps(_doc(iid, "phone", i)).encode())
                out.bad |= {f"{prefix}/{folder}/bad-{iid}.wav", f"{prefix}/{folder}/bad-{iid}.json"}
            elif which == 1:
                put(f"{folder}/bad-{iid}.docx", b"PK\x03\x04 not a recording")
                out.bad.add(f"{prefix}/{folder}/bad-{iid}.docx")
            else:
                put(f"{folder}/bad-{iid}.json", b'{"schema": "archive-record/1", "channel": ')
                out.bad.add(f"{prefix}/{folder}/bad-{iid}.json")
    return out


def inbox_keys(client, bucket: str, prefix: str) -> set[str]:
    keys, token = set(), None
    while True:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", **({"ContinuationToken": token} if token else {}))
        keys |= {o["Key"] for o in page.get("Contents", [])}
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def records_by_interaction(env: dict) -> dict[str, list[str]]:
    """Interaction id -> the record ids committed for it, read from the store (the system of record)."""
    from archive.index.sqlite import SqliteIndex
    from archive.retention.service import Retention
    from archive.services import open_archive
    from archive.settings import Settings

    settings = Settings.from_env(env)
    arch = open_archive(settings)
    retention = Retention(arch, SqliteIndex(Path(env["ARCHIVE_HOME"]) / "check-index.sqlite"))
    found: dict[str, list[str]] = {}
    for rid in retention.record_ids():
        meta = retention.manifest(rid)["metadata"]
        iid = meta["source"]["interaction_id"]
        if "@" in iid:  # an email's Message-ID: <tag-i@example.com>
            iid = iid.strip("<>").split("@")[0]
        found.setdefault(iid, []).append(rid)
    return found


def account(inputs: Inputs, env: dict) -> dict:
    """lost / duplicated / unexpected, counted from the store."""
    found = records_by_interaction(env)
    lost = sorted(iid for iid in inputs.valid if iid not in found)
    duplicated = sorted(iid for iid, rids in found.items() if len(rids) > 1)
    unexpected = sorted(iid for iid in found if iid not in inputs.valid)
    return {"lost": len(lost), "duplicated": len(duplicated), "unexpected": len(unexpected),
            "lost_ids": lost[:10], "duplicated_ids": duplicated[:10]}


class Workers:
    """``celery worker`` processes (and one beat) for an archive configured by ``env``."""

    def __init__(self, env: dict, logdir: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def _celery(self) -> str:
        return str(Path(sys.executable).with_name("celery"))

    def start(self, name: str, concurrency: int = 2) -> None:
        log = open(self.logdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [self._celery(), "-A", "workers", "worker", "-Q", "archive", "-l", "warning", "-P", "prefork",
             "--concurrency", str(concurrency), "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def start_beat(self) -> None:
        log = open(self.logdir / "beat.log", "ab")
        self.procs["beat"] = subprocess.Popen(
            [self._celery(), "-A", "workers", "beat", "-l", "warning", "--schedule",
             str(self.logdir / f"beat-{uuid.uuid4().hex[:6]}")],
            cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def dump_stacks(self) -> None:
        """Every pool process writes its threads' stacks to its worker's log (SIGUSR2, workers/app.py):
        where a worker that stopped making progress is waiting."""
        for name, proc in self.procs.items():
            if name == "beat" or proc.poll() is not None:
                continue
            try:  # (called while a test is failing: must not raise in its place)
                for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    os.kill(int(child), signal.SIGUSR2)
            except (OSError, ValueError):
                continue
        time.sleep(1)

    def kill(self, name: str) -> None:
        """SIGKILL the worker and its pool processes: no shutdown, no acknowledgements."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition") -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout:.0f}s")


def archive_env(seaweed, archive_bucket: str, inbox_bucket: str, home: Path, redis_url: str, **extra) -> dict:
    return {
        "ARCHIVE_HOME": str(home), "ARCHIVE_STORE": f"s3://{archive_bucket}/archive",
        "ARCHIVE_S3_ENDPOINT_URL": seaweed.endpoint_url, "ARCHIVE_S3_ACCESS_KEY_ID": seaweed.access_key,
        "ARCHIVE_S3_SECRET_ACCESS_KEY": seaweed.secret_key, "ARCHIVE_S3_REGION": seaweed.region,
        "ARCHIVE_BROKER_URL": redis_url, "ARCHIVE_INBOX": f"s3://{inbox_bucket}/drop",
        "ARCHIVE_INBOX_SETTLE": "PT0S", "ARCHIVE_CLAIM_TTL": "PT6S", "ARCHIVE_SCAN_INTERVAL": "PT2S",
        "ARCHIVE_ACTOR": "tester", "ARCHIVE_WORKER_ACTOR": "worker", **extra,
    }


def init(env: dict) -> None:
    """Create the archive (keyring, store) and the identities: the workers' (ingest) and the tester's."""
    from archive.access import ROLES, Identities
    from archive.services import init_archive
    from archive.settings import Settings

    settings = Settings.from_env(env)
    init_archive(settings)
    ids = Identities(settings.identities_path)
    ids.set("worker", ["ingest"])
    ids.set("tester", list(ROLES))
