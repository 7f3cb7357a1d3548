"""Benchmark: distributed ingest with real Celery workers — SeaweedFS inbox → SeaweedFS archive (Object
Lock), Redis broker, the SQLite index in the archive home — and the kill test, repeated.

Run ``python bench/workers.py [--chats N] [--calls N] [--call-mb MB] [--reps N] [--kill-inputs N]``.
A *worker* is one ``celery worker`` process with concurrency 2 (two pool processes), as the issue's
kill test runs them. Chats and calls are uploaded by 8 threads while the workers run (recorders upload
continuously); a rate is inputs (or MB) over the time from the first upload to the inbox being empty.

The last line of stdout is one JSON object:

* ``chats_per_s_1w`` / ``_2w`` / ``_4w``  chat transcripts archived per second with 1, 2, 4 workers
* ``calls_mb_s_2w``                     MB of call recordings per second with 2 workers
* ``lost`` / ``duplicated``             over ``reps`` kill tests (a worker SIGKILLed mid-run, restarted)
* ``cpu_share``                         where the CPU went in the 4-worker run (workers, SeaweedFS, Redis)
* ``cpus``                              CPUs on this machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import Redis, SeaweedS3  # noqa: E402
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


class Run:
    """A fresh archive and inbox on the shared servers."""

    def __init__(self, seaweed, redis, work: Path, **extra) -> None:
        import redis as redis_client

        redis_client.Redis.from_url(redis.url).flushall()
        self.client = seaweed.client()
        self.archive_bucket = seaweed.make_locked_bucket(f"a-{uuid.uuid4().hex[:16]}")
        self.inbox_bucket = f"i-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=self.inbox_bucket)
        self.home = work / uuid.uuid4().hex[:8]
        self.home.mkdir()
        self.env = archive_env(seaweed, self.archive_bucket, self.inbox_bucket, self.home / "home", redis.url,
                               ARCHIVE_SCAN_INTERVAL="PT1S", **extra)
        init(self.env)
        self.workers = Workers(self.env, self.home)

    def remaining(self) -> set[str]:
        return inbox_keys(self.client, self.inbox_bucket, "drop")

    def warm(self, n_workers: int) -> None:
        """Start the workers and the beat; return once one input went through (they are up)."""
        for i in range(n_workers):
            self.workers.start(f"w{i + 1}")
        self.workers.start_beat()
        upload_inputs(self.client, self.inbox_bucket, "drop", 1, mix="chats", tag="warm")
        wait_until(lambda: not self.remaining(), 120, 0.2, what="workers up")


def upload_parallel(client, bucket: str, items: list[tuple[str, bytes]], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), items))


def chats(seaweed, redis, work: Path, n_workers: int, n: int) -> float:
    run = Run(seaweed, redis, work)
    try:
        run.warm(n_workers)
        # the same inputs upload_inputs makes, built first so only the upload is timed
        staging = f"s{uuid.uuid4().hex[:6]}"
        upload_inputs(run.client, run.inbox_bucket, staging, n, mix="chats")
        items = [(k.replace(staging + "/", "drop/", 1), run.client.get_object(Bucket=run.inbox_bucket, Key=k)["Body"].read())
                 for k in inbox_keys(run.client, run.inbox_bucket, staging)]
        for k in inbox_keys(run.client, run.inbox_bucket, staging):
            run.client.delete_object(Bucket=run.inbox_bucket, Key=k)
        start = time.monotonic()
        upload_parallel(run.client, run.inbox_bucket, items)
        wait_until(lambda: not run.remaining(), 1800, 0.25, what="all chats archived")
        elapsed = time.monotonic() - start
        rate = n / elapsed
        log(f"{n_workers} worker(s): {n} chats in {elapsed:.1f}s = {rate:.1f}/s")
        return rate
    finally:
        run.workers.stop()


def calls(seaweed, redis, work: Path, n_workers: int, n: int, mb: float) -> float:
    run = Run(seaweed, redis, work)
    try:
        run.warm(n_workers)
        seconds = mb * 1e6 / 16000  # 8 kHz 16-bit mono
        items = []
        for i in range(n):
            iid = f"call-{i:04d}"
            doc = {"schema": "archive-record/1", "source": {"system": "bench", "interaction_id": iid},
                   "channel": "phone", "started_at": "2024-05-01T09:00:00Z",
                   "participants": [{"role": "agent", "id": str(i % 9)}]}
            items += [(f"drop/{iid}.wav", wav_bytes(seconds, i)), (f"drop/{iid}.json", json.dumps(doc).encode())]
        total = sum(len(b) for k, b in items if k.endswith(".wav"))
        start = time.monotonic()
        upload_parallel(run.client, run.inbox_bucket, items)
        wait_until(lambda: not run.remaining(), 1800, 0.25, what="all calls archived")
        elapsed = time.monotonic() - start
        rate = total / 1e6 / elapsed
        log(f"{n_workers} workers: {n} calls, {total / 1e6:.0f} MB in {elapsed:.1f}s = {rate:.1f} MB/s")
        return rate
    finally:
        run.workers.stop()


def kill_test(seaweed, redis, work: Path, n: int) -> dict:
    run = Run(seaweed, redis, work)
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    result: dict = {"cpus": os.cpu_count()}
    with SeaweedS3() as seaweed, Redis() as redis:
        weed_pgid = os.getpgid(seaweed._proc.pid)
        redis_pgid = os.getpgid(redis.proc.pid)
        for n_workers in (1, 2, 4):
            before = {"seaweedfs": cpu_seconds(weed_pgid), "redis": cpu_seconds(redis_pgid),
                      "machine": machine_busy(), "bench": time.process_time()}
            t0 = time.monotonic()
            result[f"chats_per_s_{n_workers}w"] = round(chats(seaweed, redis, work, n_workers, args.chats), 1)
            if n_workers == 4:  # where the time went: CPU seconds of each part over the run's wall time
                wall = time.monotonic() - t0
                used = {"seaweedfs": cpu_seconds(weed_pgid) - before["seaweedfs"],
                        "redis": cpu_seconds(redis_pgid) - before["redis"],
                        "bench (uploads)": time.process_time() - before["bench"]}
                used["workers (the rest)"] = machine_busy() - before["machine"] - sum(used.values())
                # in CPUs: 1.0 is one CPU busy for the whole run
                result["cpu_share"] = {k: round(v / wall, 2) for k, v in used.items()}
                result["cpu_share"]["machine_busy_of_cpus"] = round((machine_busy() - before["machine"]) / wall /
                                                                    os.cpu_count(), 2)
        result["calls_mb_s_2w"] = round(calls(seaweed, redis, work, 2, args.calls, args.call_mb), 1)
        lost = duplicated = 0
        for rep in range(args.reps):
            r = kill_test(seaweed, redis, work, args.kill_inputs)
            log(f"kill test {rep + 1}/{args.reps}: {r}")
            lost += r["lost"] + r["left_in_inbox_not_rejected"]
            duplicated += r["duplicated"]
        result.update({"lost": lost, "duplicated": duplicated, "kill_reps": args.reps,
                       "kill_inputs": args.kill_inputs, "chats": args.chats,
                       "calls": args.calls, "call_mb": args.call_mb})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
