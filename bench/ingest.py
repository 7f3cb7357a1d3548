"""Benchmark: ingest throughput into the embedded default, with a profile of where the time goes.

Run ``python bench/ingest.py [--chats N] [--calls N]`` (defaults 10000 and 200). The last line of stdout
is one JSON object; progress and the profile summary come before it.

* ``chats_per_s``  N chat transcripts (the archive's own JSON, two messages each) ingested by one process
                   (``Ingestor.run``, its default worker threads) into a fresh embedded archive. Records
                   are committed in groups (a few ``syncfs`` per group of 128 instead of five fsyncs per
                   record: see ``archive/store/filesystem.py``), so most of what is left is inode creation
                   (a directory and two files per chat) and Python. On ext4 without a journal, creating
                   inodes slows down for up to five minutes after many files were deleted (the kernel
                   skips, one by one, inodes freed in the last 60 to 300 seconds): right after another
                   run or a test suite (pytest deletes its old temporary directories) chats measured 445/s
                   instead of 520/s (494/s a minute later). The run first waits while it is severe
                   (``settle_wait_s``, ``file_create_us``); run it a few minutes after the tests.
* ``calls_mb_s``   N five-minute 8 kHz stereo 16-bit WAV calls (9.6 MB each, a sox-made tone and noise
                   mix, each copy made distinct) with JSON sidecars; MB/s of recordings (1e6 bytes).
* ``calls_cpus_busy`` CPU time of the calls run over its wall time: well under the two CPUs while the
                   disk and the copy baseline set the pace.
* ``settle_wait_s`` how long the run waited, before timing anything, for creating a file to cost under
                   75 µs (see :func:`settle`: after many deletions it can cost ten times as much for
                   minutes), and ``file_create_us`` what it cost then (about 25 µs on a quiet disk here).
* baselines, same files, same disk, same run: ``cp_fsync_chats_per_s`` copies every chat file and
  fsyncs it (the least a durable archive must do per input), ``cp_fsync_calls_mb_s`` the same for calls.
* the profile: smaller runs (1,000 chats; 10 calls) under cProfile, timed by each thread's CPU clock (so waiting counts
  for nothing) in every thread: the main thread prepares chats and emails and commits the groups, worker
  threads prepare recordings, one thread writes the index. Functions grouped by what they do.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archive.index.sqlite import SqliteIndex  # noqa: E402
from archive.ingest.discover import Limits  # noqa: E402
from archive.ingest.pipeline import Ingestor  # noqa: E402
from archive.services import init_archive  # noqa: E402
from archive.settings import Settings  # noqa: E402

GROUPS = [  # (label, substrings of "file:function" in the profile)
    ("fsync", ["posix.fsync", "syncfs"]),
    ("file create/open/link/mkdir", ["io.open", "posix.open", "posix.link", "posix.mkdir", "posix.replace",
                                     "posix.unlink", "posix.stat", "posix.lstat", "posix.chmod"]),
    ("read/write", ["posix.write", "posix.pread", "readinto", "method 'read'", "method 'write'"]),
    ("AES-GCM + HKDF", ["encrypt_into", "decrypt", "derive"]),
    ("SHA-256", ["sha256", "'update'"]),
    ("media probe (PyAV)", ["media.py"]),
    ("JSON", ["json/"]),
    ("SQLite index", ["sqlite3"]),
    ("thread waits", ["acquire", "wait"]),
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def chat(n: int) -> dict:
    return {"schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": f"bench-{n}"},
            "channel": "chat", "started_at": "2024-04-01T10:00:00Z", "ended_at": "2024-04-01T10:05:00Z",
            "participants": [{"role": "agent", "id": "a7", "name": "Li Na"}, {"role": "customer", "id": f"u{n}"}],
            "messages": [{"at": "2024-04-01T10:00:00Z", "from": f"u{n}", "text": f"I want a refund for order {n}"},
                         {"at": "2024-04-01T10:01:00Z", "from": "a7", "text": "This product is not a deposit."}]}


def make_chats(directory: Path, n: int) -> None:
    directory.mkdir(parents=True)
    for i in range(n):
        (directory / f"chat-{i:06d}.json").write_text(json.dumps(chat(i)))


def make_calls(directory: Path, n: int) -> int:
    directory.mkdir(parents=True)
    master = directory.parent / "master.wav"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "2", "-b", "16", str(master), "synth", "300",
                    "sine", "440", "whitenoise", "vol", "0.3"], check=True, capture_output=True)
    data = bytearray(master.read_bytes())
    for i in range(n):
        data[-8:] = i.to_bytes(8, "little")  # distinct content: otherwise every call is a duplicate
        (directory / f"call-{i:04d}.wav").write_bytes(data)
        (directory / f"call-{i:04d}.json").write_text(json.dumps({
            "source": {"system": "bench-recorder", "interaction_id": f"call-{i}"}, "channel": "phone",
            "started_at": "2024-05-06T10:30:00+08:00",
            "participants": [{"role": "agent", "id": "1042"}, {"role": "customer", "phone": "+8613800138000"}]}))
    master.unlink()
    return len(data) * n


def settle(work: Path, limit_s: float = 300, usual_us: float = 75) -> tuple[float, float]:
    """Wait, up to ``limit_s``, until creating a file costs less than ``usual_us``; returns (seconds
    waited, µs per file created at the last probe). ext4 without a journal passes over inodes freed in
    the last 60 to 300 seconds one by one when it allocates new ones, so right after something deleted
    thousands of files (a test suite removing its temporary directories) creating a file can cost ten
    times as much for minutes. That is the disk's state, not the archive's speed; the wait is printed and
    reported. The threshold catches the bad cases only: a milder slowdown (40 µs) passes."""
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        probe = work / f"probe-{attempt}"
        probe.mkdir()
        t = time.perf_counter()
        for i in range(2000):
            os.close(os.open(probe / str(i), os.O_CREAT | os.O_WRONLY, 0o600))
        us = (time.perf_counter() - t) / 2000 * 1e6  # (the probe files stay until the end: deleting them would add to it)
        waited = time.monotonic() - start
        if us <= usual_us or waited >= limit_s:
            log(f"creating a file: {us:.0f} µs{'' if us <= usual_us else ' (still slow: measuring anyway)'}"
                f"{f', after waiting {waited:.0f} s for recently deleted inodes to age' if waited >= 1 else ''}")
            return round(waited, 1), round(us, 1)
        log(f"creating a file costs {us:.0f} µs now (usually under {usual_us:.0f}): files were deleted "
            "recently; waiting 20 s")
        time.sleep(20)


def cp_fsync(src: Path, dest: Path) -> float:
    dest.mkdir()
    start = time.perf_counter()
    for path in sorted(src.iterdir()):
        with open(path, "rb") as f, open(dest / path.name, "wb") as out:
            shutil.copyfileobj(f, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - start


def ingest(work: Path, name: str, inbox: Path, profile: bool = False):
    settings = Settings.from_env({"ARCHIVE_HOME": str(work / name)})
    archive, _ = init_archive(settings)
    ingestor = Ingestor(archive, SqliteIndex(settings.index_path))
    ingestor.retention.policy_set()  # read and recorded once per archive: not part of ingesting each input
    if profile:
        threading.setprofile(_thread_profiler())
    os.sync()
    if profile:  # the main thread prepares chats and commits the groups of records
        main = cProfile.Profile(time.thread_time)
        _thread_profiler.profiles.append(main)
        main.enable()
    start, cpu = time.perf_counter(), time.process_time()
    summary = ingestor.run([inbox], limits=Limits())
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    threading.setprofile(None)
    if profile:
        main.disable()
    if summary.rejected or summary.duplicate:
        sys.exit(f"error: {summary.rejected} rejected, {summary.duplicate} duplicate: {summary.outcomes[:3]}")
    return elapsed, summary.archived, cpu


def _thread_profiler():
    # cProfile profiles one thread; ingest runs in several, so each gets its own profiler (on its own CPU
    # clock: time spent waiting is not where the time goes) and the stats are merged afterwards.
    profiles: list[cProfile.Profile] = []
    _thread_profiler.profiles = profiles

    def start(frame, event, arg):
        sys.setprofile(None)
        p = cProfile.Profile(time.thread_time)
        profiles.append(p)
        p.enable()
        return None

    return start


def profile_summary(profiles: list[cProfile.Profile]) -> dict[str, float]:
    for p in profiles:
        p.disable()
    stats = pstats.Stats(profiles[0])
    for p in profiles[1:]:
        stats.add(p)
    totals = {label: 0.0 for label, _ in GROUPS}
    total = 0.0
    for (filename, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        total += tottime
        where = f"{filename}:{func}"
        for label, needles in GROUPS:
            if any(n in where for n in needles):
                totals[label] += tottime
                break
    totals["everything else (Python)"] = total - sum(totals.values())
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]
    for (filename, line, func), (_cc, nc, tottime, _ct, _callers) in top:
        print(f"  {100 * tottime / total:5.1f}%  {nc:>7} calls  {Path(filename).name}:{line} {func}")
    return {k: round(100 * v / total, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if not shutil.which("sox"):
        sys.exit("error: sox not found (apt-get install sox)")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        log(f"making {args.chats} chats and {args.calls} five-minute calls in {work} ...")
        make_chats(work / "chats", args.chats)
        call_bytes = make_calls(work / "calls", args.calls)
        waited, create_us = settle(work)

        log("chats: ingest ...")
        chat_s, n, _ = ingest(work, "home-chats", work / "chats")
        log(f"chats: {n / chat_s:.0f}/s; copy + fsync baseline ...")
        cp_chat_s = cp_fsync(work / "chats", work / "cp-chats")
        log("calls: ingest ...")
        call_s, _, call_cpu = ingest(work, "home-calls", work / "calls")
        log(f"calls: {call_bytes / 1e6 / call_s:.0f} MB/s, {call_cpu / call_s:.2f} CPUs busy; copy + fsync baseline ...")
        shutil.rmtree(work / "home-calls")
        cp_call_s = cp_fsync(work / "calls", work / "cp-calls")
        shutil.rmtree(work / "cp-calls")

        profile = {}
        for kind, files in (("chats", sorted((work / "chats").iterdir())[:1000]),
                            ("calls", sorted((work / "calls").iterdir())[:20])):
            log(f"profile: {len(files) if kind == 'chats' else len(files) // 2} {kind} under cProfile ...")
            sample = work / f"sample-{kind}"
            sample.mkdir()
            for p in files:
                shutil.copy(p, sample / p.name)
            ingest(work, f"home-profile-{kind}", sample, profile=True)
            print(f"{kind}, top functions by own CPU time:")
            profile[kind] = profile_summary(_thread_profiler.profiles)
            print(f"{kind}, where the CPU time goes (% of profiled CPU time, all ingest threads):")
            for label, pct in profile[kind].items():
                print(f"  {pct:5.1f}%  {label}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps({
        "chats_per_s": round(args.chats / chat_s, 1),
        "calls_mb_s": round(call_bytes / 1e6 / call_s, 1),
        "cp_fsync_chats_per_s": round(args.chats / cp_chat_s, 1),
        "cp_fsync_calls_mb_s": round(call_bytes / 1e6 / cp_call_s, 1),
        "calls_cpus_busy": round(call_cpu / call_s, 2), "settle_wait_s": waited, "file_create_us": create_us,
        "chats": args.chats, "calls": args.calls, "call_mb_each": round(call_bytes / args.calls / 1e6, 2),
        "profile_pct": profile, "nproc": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
