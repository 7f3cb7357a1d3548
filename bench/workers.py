"""Benchmark: distributed ingest with real Celery workers — SeaweedFS inbox → SeaweedFS archive (Object
Lock), Redis broker, the SQLite index in the archive home — beside the plain S3 work underneath, and the
kill test, repeated.

Run ``python bench/workers.py [--chats N] [--calls N] [--call-mb MB] [--reps N] [--kill-inputs N]
[--scaling-chats N] [--delay-ms MS]``. A *worker* is one ``celery worker`` process with concurrency 2 (two
pool processes, two task slots), as the kill test runs them. Chats are uploaded by 8 threads while the
workers run (recorders upload continuously); a chat rate is inputs over the time from the first upload
to the inbox being empty. Calls are timed both ways (below). The workers delete what they archived from
the inbox (``ARCHIVE_INBOX_DONE=delete``): the same work as the plain loop below (the default, moving to
``processed/``, costs one CopyObject more per file).

The last line of stdout is one JSON object:

* ``chats_per_s_1w`` / ``_2w``          chat transcripts archived per second with 1 and 2 workers
* ``plain_s3_chats_per_s``              the floor cost of one object per chat on this server, same run: a
                                        plain boto3 loop that GETs each chat from the inbox, PUTs it into
                                        the archive bucket with an Object Lock retention date and DELETEs
                                        the inbox object (chats already uploaded; the best of 4 and 16
                                        threads); ``chats_vs_plain_s3`` = chats_per_s_2w ÷ that
* ``s3_requests_per_chat``              S3 requests the workers sent in the 2-worker chat run (counted by
                                        botocore hooks in the workers, inbox scans included) ÷ chats; by
                                        operation in ``s3_requests_by_operation``
* ``worker_cpu_ms_per_chat``            CPU (user + system) of the worker processes in that run ÷ chats
* ``events_per_audit_batch``            mean events per audit-log batch written in that run (by the
                                        integrators), and ``events_per_staged_write``: per staged object a
                                        task wrote (docs/audit.md: workers stage, one integrator sequences)
* ``integrated_after_s``                how long after the inbox was empty the last staged event had its
                                        place in the log (2-worker chat run; ``…_8slots_delayed``)
* ``audit_verified``                    ``archive audit verify`` passed after how many of the runs
* ``calls_mb_s_2w``                     MB of call recordings per second with 2 workers, the calls
                                        in the inbox first (timed from the scan that finds them: the
                                        workers' rate, as the plain upload is timed from its first byte);
  ``plain_upload_mb_s``                 a plain boto3 upload of the same call files to the same SeaweedFS
                                        (4 threads, same run); ``calls_vs_plain_upload`` their ratio;
  ``calls_mb_s_2w_uploading``           the same calls timed from their first upload, 8 threads
                                        uploading while the workers run (the uploads share the 2 CPUs)
* ``scaling_8_vs_1``                    chats/s with 8 task slots (one worker, concurrency 8) ÷ 1 slot, every
                                        S3 request delayed ``delay_ms`` by a TCP proxy in this benchmark,
                                        one input per task (ARCHIVE_BATCH_INPUTS=1: what the slots share,
                                        the audit log's head above all, is what caps it); the rates are
                                        ``chats_per_s_1slot_delayed`` / ``_8slots_delayed``. The same with
                                        the default batches: ``…_batched`` (one slot already keeps many
                                        requests in flight, so 8 slots meet this machine's 2 CPUs first)
* ``lost`` / ``duplicated``             over ``kill_reps`` kill tests on each broker (a worker SIGKILLed
                                        mid-run, restarted), Redis and RabbitMQ: ``broker_kill_reps`` in all
* ``cpu_share``                         where the CPU went in the 2-worker chat run (workers, SeaweedFS, …)
* ``cpus``                              CPUs on this machine
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RabbitMQ, Redis, SeaweedS3  # noqa: E402
from tests.workerkit import (Workers, account, archive_env, inbox_keys, init, upload_inputs,  # noqa: E402
                             wait_until, wav_bytes)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every live process in process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class DelayProxy:
    """A TCP proxy in front of the S3 server that holds every request ``delay`` seconds before passing
    it on: the round trip of an S3 region, on this machine. A request is the first bytes a client sends
    after the server last answered on that connection (HTTP/1.1 keep-alive: one request at a time)."""

    def __init__(self, target: str, delay: float) -> None:
        parsed = urlparse(target)
        self.host, self.port, self.delay = parsed.hostname, parsed.port, delay
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.url = ""

    async def _pipe(self, reader, writer, state, delays: bool) -> None:
        try:
            while data := await reader.read(256 * 1024):
                if delays and state["idle"]:
                    state["idle"] = False
                    await asyncio.sleep(self.delay)
                elif not delays:
                    state["idle"] = True
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r, client_w) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.port)
        except OSError:
            client_w.close()
            return
        state = {"idle": True}
        await asyncio.gather(self._pipe(client_r, server_w, state, True), self._pipe(server_r, client_w, state, False))

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=512))
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> DelayProxy:
        self.thread.start()
        self.ready.wait()
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class Run:
    """A fresh archive and inbox on the shared servers."""

    def __init__(self, seaweed, redis, work: Path, **extra) -> None:
        import redis as redis_client

        self.redis = redis_client.Redis.from_url(redis.url)
        self.redis.flushall()
        self.client = seaweed.client()
        self.archive_bucket = seaweed.make_locked_bucket(f"a-{uuid.uuid4().hex[:16]}")
        self.inbox_bucket = f"i-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=self.inbox_bucket)
        self.home = work / uuid.uuid4().hex[:8]
        self.home.mkdir()
        self.env = archive_env(seaweed, self.archive_bucket, self.inbox_bucket, self.home / "home", redis.url,
                               ARCHIVE_SCAN_INTERVAL="PT1S", ARCHIVE_INBOX_DONE="delete", **extra)
        init(self.env)
        self.workers = Workers(self.env, self.home)
        self.direct_url = seaweed.endpoint_url  # (the workers may go through a delaying proxy)

    def remaining(self) -> set[str]:
        return inbox_keys(self.client, self.inbox_bucket, "drop")

    def warm(self, n_workers: int, concurrency: int = 2) -> None:
        """Start the workers and the beat; return once one input went through (they are up)."""
        for i in range(n_workers):
            self.workers.start(f"w{i + 1}", concurrency)
        self.workers.start_beat()
        upload_inputs(self.client, self.inbox_bucket, "drop", 1, mix="chats", tag="warm")
        wait_until(lambda: not self.remaining(), 120, 0.2, what="workers up")

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for n, p in self.workers.procs.items() if n != "beat")

    def s3_requests(self) -> dict[str, int]:
        return {k.decode()[3:]: int(v) for k, v in self.redis.hgetall("archive:counters").items()
                if k.startswith(b"s3.")}

    def audit_batches(self) -> list[tuple[int, list[str]]]:
        """(events, staged objects named) of each audit batch so far (plain signed JSON: read without keys)."""
        out = []
        for key in self.keys("archive/audit/log/"):
            doc = json.loads(self.client.get_object(Bucket=self.archive_bucket, Key=key)["Body"].read())
            out.append((len(doc["events"]), doc.get("staged", [])))
        return out

    def keys(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return [o["Key"] for page in paginator.paginate(Bucket=self.archive_bucket, Prefix=prefix)
                for o in page.get("Contents", [])]

    def audit_verified(self) -> bool:
        """``archive audit verify`` (which integrates what is still staged first) passes."""
        env = {**self.env, "ARCHIVE_S3_ENDPOINT_URL": self.direct_url, "PATH": os.environ.get("PATH", "")}
        proc = subprocess.run([sys.executable, "-m", "archive.cli", "audit", "verify", "--json"], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"audit verify FAILED: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        return proc.returncode == 0


VERIFIED: list[bool] = []  # ``archive audit verify`` after every run


def upload_parallel(client, bucket: str, items: list[tuple[str, bytes]], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), items))


def chat_items(run: Run, n: int) -> list[tuple[str, bytes]]:
    """The chats upload_inputs makes, built (and read back) first so that only their upload is timed."""
    staging = f"s{uuid.uuid4().hex[:6]}"
    upload_inputs(run.client, run.inbox_bucket, staging, n, mix="chats")
    keys = inbox_keys(run.client, run.inbox_bucket, staging)
    items = [(k.replace(staging + "/", "drop/", 1), run.client.get_object(Bucket=run.inbox_bucket, Key=k)["Body"].read())
             for k in keys]
    for k in keys:
        run.client.delete_object(Bucket=run.inbox_bucket, Key=k)
    return items


def chats(seaweed, redis, work: Path, n_workers: int, n: int, *, concurrency: int = 2, measure: bool = False,
          **extra) -> dict:
    run = Run(seaweed, redis, work, **extra)
    try:
        run.warm(n_workers, concurrency)
        items = chat_items(run, n)
        before = {"cpu": run.worker_cpu(), "requests": run.s3_requests(), "batches": len(run.audit_batches()),
                  "seaweedfs": cpu_seconds(os.getpgid(seaweed._proc.pid)), "redis": cpu_seconds(os.getpgid(redis.proc.pid)),
                  "machine": machine_busy(), "bench": time.process_time()}
        start = time.monotonic()
        upload_parallel(run.client, run.inbox_bucket, items)
        wait_until(lambda: not run.remaining(), 1800, 0.25, what="all chats archived")
        elapsed = time.monotonic() - start
        # the events were recorded (staged) before each input left the inbox; how long until the last of
        # them has its place in the log, integrated by the workers (the beat's task drains the rest)
        wait_until(lambda: not run.keys("archive/audit/staged/"), 600, 0.1, what="staged events integrated")
        out = {"rate": n / elapsed, "integrated_after_s": round(time.monotonic() - start - elapsed, 2)}
        slots = f"{n_workers} worker(s) x {concurrency} slot(s)"
        log(f"{slots}: {n} chats in {elapsed:.1f}s = {out['rate']:.1f}/s; the last staged events integrated "
            f"{out['integrated_after_s']}s later")
        if measure:
            time.sleep(1.5)  # the last task's counters, sent after its inbox deletes
            cpu = run.worker_cpu() - before["cpu"]
            after = run.s3_requests()
            requests = {op: after.get(op, 0) - before["requests"].get(op, 0) for op in after}
            batches = run.audit_batches()[before["batches"]:]
            staged_writes = len({k for _, keys in batches for k in keys})
            wall = time.monotonic() - start
            used = {"seaweedfs": cpu_seconds(os.getpgid(seaweed._proc.pid)) - before["seaweedfs"],
                    "redis": cpu_seconds(os.getpgid(redis.proc.pid)) - before["redis"],
                    "bench (uploads)": time.process_time() - before["bench"], "workers": cpu}
            out.update({
                "s3_requests_per_chat": round(sum(requests.values()) / n, 2),
                "s3_requests_by_operation": {op: round(v / n, 3) for op, v in sorted(requests.items()) if v},
                "worker_cpu_ms_per_chat": round(cpu * 1000 / n, 2),
                "events_per_audit_batch": round(sum(e for e, _ in batches) / len(batches), 1) if batches else 0,
                "audit_batches": len(batches),
                "events_per_staged_write": round(sum(e for e, _ in batches) / staged_writes, 1) if staged_writes else 0,
                "cpu_share": {**{k: round(v / wall, 2) for k, v in used.items()},
                              "machine_busy_of_cpus": round((machine_busy() - before["machine"]) / wall / os.cpu_count(), 2)},
            })
        run.workers.stop()
        out["audit_verified"] = run.audit_verified()
        return out
    finally:
        run.workers.stop()


def plain_s3_chats(seaweed, redis, work: Path, n: int, threads: int) -> float:
    """GET each chat from the inbox, PUT it into the archive bucket with a retention date, DELETE it."""
    run = Run(seaweed, redis, work)
    client = seaweed.client(pool=threads + 4)
    items = chat_items(run, n)
    upload_parallel(run.client, run.inbox_bucket, items)
    until = datetime.now(UTC) + timedelta(days=1)

    def one(key: str) -> None:
        body = client.get_object(Bucket=run.inbox_bucket, Key=key)["Body"].read()
        client.put_object(Bucket=run.archive_bucket, Key=f"plain/{key}", Body=body, ObjectLockMode="COMPLIANCE",
                          ObjectLockRetainUntilDate=until)
        client.delete_object(Bucket=run.inbox_bucket, Key=key)

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, [k for k, _ in items]))
    rate = n / (time.monotonic() - start)
    log(f"plain S3 loop, {threads} threads: {n} chats = {rate:.1f}/s")
    return rate


def call_items(n: int, mb: float) -> list[tuple[str, bytes]]:
    seconds = mb * 1e6 / 16000  # 8 kHz 16-bit mono
    items = []
    for i in range(n):
        iid = f"call-{i:04d}"
        doc = {"schema": "archive-record/1", "source": {"system": "bench", "interaction_id": iid},
               "channel": "phone", "started_at": "2024-05-01T09:00:00Z",
               "participants": [{"role": "agent", "id": str(i % 9)}]}
        items += [(f"drop/{iid}.wav", wav_bytes(seconds, i)), (f"drop/{iid}.json", json.dumps(doc).encode())]
    return items


def calls(seaweed, redis, work: Path, n_workers: int, items: list[tuple[str, bytes]], *, preloaded: bool) -> float:
    """MB/s of call audio archived by ``n_workers`` warm workers. ``preloaded``: the calls are in the inbox
    first (the beat stopped while they are uploaded) and the clock runs from the scan that finds them to
    the inbox being empty — the workers' own rate. Otherwise from the first upload, 8 threads uploading
    while the workers run — what a user sees while recorders deliver, their uploads sharing the CPUs."""
    from celery import Celery

    run = Run(seaweed, redis, work)
    try:
        run.warm(n_workers)
        total = sum(len(b) for k, b in items if k.endswith(".wav"))
        if preloaded:
            run.workers.kill("beat")
            upload_parallel(run.client, run.inbox_bucket, items)
            start = time.monotonic()
            Celery(broker=redis.url).send_task("archive.scan_inboxes", queue="archive")
            run.workers.start_beat()
        else:
            start = time.monotonic()
            upload_parallel(run.client, run.inbox_bucket, items)
        wait_until(lambda: not run.remaining(), 1800, 0.25, what="all calls archived")
        elapsed = time.monotonic() - start
        rate = total / 1e6 / elapsed
        log(f"{n_workers} workers, {'preloaded inbox' if preloaded else 'uploading'}: {len(items) // 2} calls, "
            f"{total / 1e6:.0f} MB in {elapsed:.1f}s = {rate:.1f} MB/s")
        run.workers.stop()
        VERIFIED.append(run.audit_verified())
        return rate
    finally:
        run.workers.stop()


def plain_upload(seaweed, items: list[tuple[str, bytes]]) -> float:
    """The same call files uploaded with plain boto3 put_object calls, 4 threads (one per task slot)."""
    client = seaweed.client()
    bucket = f"u-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    wavs = [(k, b) for k, b in items if k.endswith(".wav")]
    start = time.monotonic()
    upload_parallel(client, bucket, wavs, threads=4)
    rate = sum(len(b) for _, b in wavs) / 1e6 / (time.monotonic() - start)
    log(f"plain upload: {rate:.1f} MB/s")
    return rate


def kill_test(seaweed, redis, work: Path, n: int, rabbitmq=None) -> dict:
    """A worker SIGKILLed a third of the way through ``n`` inputs and started again; the queue on Redis,
    or on ``rabbitmq`` (Redis then holds only the claims)."""
    extra = {}
    if rabbitmq is not None:
        import kombu

        with kombu.Connection(rabbitmq.url) as conn, contextlib.suppress(kombu.exceptions.ChannelError):
            conn.default_channel.queue_purge("archive")
        extra = {"ARCHIVE_BROKER_URL": rabbitmq.url, "ARCHIVE_REDIS_URL": redis.url}
    run = Run(seaweed, redis, work, **extra)
    try:
        inputs = upload_inputs(run.client, run.inbox_bucket, "drop", n)
        total = len(run.remaining())
        run.workers.start("w1")
        run.workers.start("w2")
        run.workers.start_beat()
        wait_until(lambda: len(run.remaining()) < total * 2 / 3, 600, 0.25, what="a third archived")
        run.workers.kill("w1")
        run.workers.start("w1")
        wait_until(lambda: run.remaining() <= inputs.bad, 900, 0.5, what="inbox holding only rejected inputs")
        result = account(inputs, run.env)
        result["left_in_inbox_not_rejected"] = len(run.remaining() - inputs.bad)
        run.workers.stop()
        result["audit_verified"] = run.audit_verified()
        return result
    finally:
        run.workers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--call-mb", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--kill-inputs", type=int, default=400)
    parser.add_argument("--scaling-chats", type=int, default=800)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    result: dict = {"cpus": os.cpu_count()}
    with SeaweedS3() as seaweed, Redis() as redis:
        one = chats(seaweed, redis, work, 1, args.chats)
        VERIFIED.append(one["audit_verified"])
        result["chats_per_s_1w"] = round(one["rate"], 1)
        two = chats(seaweed, redis, work, 2, args.chats, measure=True)
        VERIFIED.append(two.pop("audit_verified"))
        result["chats_per_s_2w"] = round(two.pop("rate"), 1)
        result["plain_s3_chats_per_s"] = round(max(plain_s3_chats(seaweed, redis, work, args.chats, t)
                                                   for t in (4, 16)), 1)
        result["chats_vs_plain_s3"] = round(result["chats_per_s_2w"] / result["plain_s3_chats_per_s"], 2)
        result.update(two)
        items = call_items(args.calls, args.call_mb)
        result["calls_mb_s_2w"] = round(calls(seaweed, redis, work, 2, items, preloaded=True), 1)
        result["calls_mb_s_2w_uploading"] = round(calls(seaweed, redis, work, 2, items, preloaded=False), 1)
        result["plain_upload_mb_s"] = round(plain_upload(seaweed, items), 1)
        result["calls_vs_plain_upload"] = round(result["calls_mb_s_2w"] / result["plain_upload_mb_s"], 2)
        with DelayProxy(seaweed.endpoint_url, args.delay_ms / 1000) as proxy:
            for batch, suffix, n in (("1", "", args.scaling_chats // 4), ("64", "_batched", args.scaling_chats)):
                runs = {slots: chats(seaweed, redis, work, 1, n, concurrency=slots, ARCHIVE_BATCH_INPUTS=batch,
                                     ARCHIVE_S3_ENDPOINT_URL=proxy.url) for slots in (1, 8)}
                VERIFIED.extend(r["audit_verified"] for r in runs.values())
                rates = {slots: r["rate"] for slots, r in runs.items()}
                result[f"integrated_after_s_8slots_delayed{suffix}"] = runs[8]["integrated_after_s"]
                result[f"chats_per_s_1slot_delayed{suffix}"] = round(rates[1], 1)
                result[f"chats_per_s_8slots_delayed{suffix}"] = round(rates[8], 1)
                result[f"scaling_8_vs_1{suffix}"] = round(rates[8] / rates[1], 2)
        result["delay_ms"] = args.delay_ms
        lost = duplicated = 0
        with RabbitMQ() as rabbitmq:
            for broker, server in (("Redis", None), ("RabbitMQ", rabbitmq)):
                for rep in range(args.reps):
                    r = kill_test(seaweed, redis, work, args.kill_inputs, rabbitmq=server)
                    log(f"kill test {rep + 1}/{args.reps} ({broker}): {r}")
                    lost += r["lost"] + r["left_in_inbox_not_rejected"]
                    VERIFIED.append(r["audit_verified"])
                    duplicated += r["duplicated"]
        result.update({"lost": lost, "duplicated": duplicated, "kill_reps": args.reps, "broker_kill_reps": 2 * args.reps,
                       "kill_inputs": args.kill_inputs, "chats": args.chats, "calls": args.calls,
                       "call_mb": args.call_mb,
                       "audit_verified": f"{sum(VERIFIED)}/{len(VERIFIED)} runs"})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
