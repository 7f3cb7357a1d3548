"""Benchmark: sealing throughput, memory and range latency of the vault, against age, rclone crypt and a
plain S3 upload.

Run ``python bench/seal.py [--size-mb N] [--keep-dir]`` (N in MiB, default 1024). Progress goes to stderr;
the last line of stdout is one JSON object. Throughputs are MiB/s (2**20 bytes per second of plaintext,
key "unit"); latencies are milliseconds.

What is measured, on one random source file (os.urandom, 8 MiB chunks) in a temp dir on the local disk:

* ``seal_mb_s``      ``Vault(FilesystemStore, KeyringProvider, segment_size=1 MiB).seal(...)`` with retention
                     now+1 day into a fresh store; timed call includes the store's fsync and the receipt.
* ``unseal_mb_s``    ``for chunk in vault.open(name): out.write(chunk)`` into /dev/null (key "unseal_sink"):
                     the archive's decryption, not the disk.
* ``disk_fsync_mb_s`` the same file copied and fsynced with no encryption: the ceiling for ``seal_mb_s`` on
                     this disk in this run (seal fsyncs, as evidence must be durable before it is reported).
* ``range_1mib_ms``  median of 50 ``vault.read_range(name, a, a + 1 MiB)``, ``a`` random in the middle half.
* ``peak_rss_mb``    ``ru_maxrss`` of a child process (this script, hidden ``--child`` flag) that does only
                     the seal and the unseal, so making the source file and the other tools do not count.
* ``age_mb_s``       ``age -r <recipient> -o out.age file`` (key from ``age-keygen``), whole command timed.
* ``rclone_mb_s``    ``rclone copyto file crypt:file`` + RCLONE_FLAGS with a temporary config (local remote,
                     crypt remote over a directory, password from ``rclone obscure``), whole command timed.
                     ``--ignore-checksum`` skips rclone's post-transfer checksum verification (a check, not
                     encryption; without it rclone ran 1.3-1.9x slower on the development machine).
  Neither fsyncs its output; ``*_fsync_mb_s`` extras add an fsync of the output file to compare with seal.
* ``s3_*``           a SeaweedFS server (tests/servers.py), Object Lock bucket: ``client.upload_file`` with
                     boto3's default TransferConfig vs ``Vault(S3Store(bucket, client=client), ...).seal``;
                     ``s3_sealed_vs_plain`` = sealed MiB/s / plain MiB/s (> 1: sealed is faster). The
                     sealed upload sends a SHA-256 checksum with every part, which the server verifies;
                     ``s3_plain_sha256_mb_s`` is the plain upload asked for the same (ChecksumAlgorithm
                     SHA256) instead of boto3's default CRC32, so the cost of that check shows apart.

The page cache cannot be dropped without root tricks, so the source file is read once before every timed
phase: every tool starts from a warm cache, after ``sync`` so no run pays for the previous one's writes.
Every phase runs REPEATS times and reports the median: this machine's virtual disk varies several-fold. Nothing in the library is tuned here; this only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024
NAME = "bench/object.bin"
RANGES = 50
REPEATS = 3  # timed runs per phase, median reported: this disk's fsync speed varies 5x run to run
RCLONE_FLAGS = ["--no-check-dest", "--ignore-checksum", "-q"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def rate(nbytes: int, seconds: float) -> float:
    return round(nbytes / MIB / seconds, 1)


def warm(path: Path) -> None:
    """Read the file once so the timed phase starts from a warm page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MIB):
            pass


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def timed_cmd(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    return elapsed


def vault_for(store, keyring_dir: Path):
    from archive.keys.keyring import KeyringProvider, create_keyring
    from archive.vault import Vault

    create_keyring(keyring_dir / "keyring.json")
    return Vault(store, KeyringProvider(keyring_dir / "keyring.json"), segment_size=MIB)


def binding():
    from archive.crypto.stream import Binding

    return Binding("bench-record", "audio")


def retain() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)


# --- child: seal, unseal, range reads; reports its own peak RSS ----------------------------------------


def child(work: Path) -> None:
    from archive.store.filesystem import FilesystemStore

    source, size = work / "source.bin", (work / "source.bin").stat().st_size
    out: dict = {"seal_s": [], "unseal_s": [], "range_ms": []}
    rng = random.Random(1)
    lo, hi = size // 4, max(size // 4 + 1, 3 * size // 4 - MIB)
    for run in range(REPEATS):
        # A fresh store per run, removed afterwards: this VM writes fresh memory pages several times
        # slower once a few GiB were dirtied, so keeping earlier runs' output would slow later runs.
        store_dir = work / f"store-{run}"
        vault = vault_for(FilesystemStore(store_dir, create=True), work / f"keys-{run}")
        warm(source)
        os.sync()  # no dirty pages left over from an earlier phase
        start = time.perf_counter()
        with open(source, "rb") as f:
            receipt = vault.seal(NAME, f, binding(), retain_until=retain())
        out["seal_s"].append(time.perf_counter() - start)
        assert receipt.plaintext_size == size, receipt
        out["rss_seal_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        start = time.perf_counter()
        written = 0
        with open(os.devnull, "wb") as f:
            for chunk in vault.open(NAME):
                f.write(chunk)
                written += len(chunk)
        out["unseal_s"].append(time.perf_counter() - start)
        assert written == size, (written, size)

        for _ in range(RANGES // REPEATS + 1):
            a = rng.randrange(lo, hi)
            start = time.perf_counter()
            data = vault.read_range(NAME, a, a + MIB)
            out["range_ms"].append((time.perf_counter() - start) * 1000)
            assert len(data) == min(MIB, size - a)
        shutil.rmtree(store_dir)  # the lock is the library's; the benchmark owns this directory
    out["rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))


# --- parent phases ---------------------------------------------------------------------------------------


def run_child(work: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(work)], stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"error: the seal/unseal child failed (exit {proc.returncode}); traceback above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def durable_copy(source: Path, dest: Path) -> float:
    """The disk's own speed for the same job without encryption: copy and fsync (``cp`` + ``sync``)."""
    start = time.perf_counter()
    with open(source, "rb", buffering=0) as src, open(dest, "wb", buffering=0) as out:
        while chunk := src.read(8 * MIB):
            out.write(chunk)
        os.fsync(out.fileno())
    return time.perf_counter() - start


def repeat(phase, *args) -> tuple[float, float]:
    """Run ``phase`` REPEATS times from a warm cache and a clean disk; median (seconds, with fsync)."""
    runs = []
    for _ in range(REPEATS):
        warm(args[1])
        os.sync()
        runs.append(phase(*args))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def disk_baseline(work: Path, source: Path) -> tuple[float, float]:
    dest = work / "copy.bin"
    seconds = durable_copy(source, dest)
    dest.unlink()
    return seconds, seconds


def bench_age(work: Path, source: Path) -> tuple[float, float]:
    key = work / "age-key.txt"
    if not key.exists():
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = next(line.split(":", 1)[1].strip() for line in key.read_text().splitlines()
                     if line.startswith("# public key:"))
    out = work / "out.age"
    seconds = timed_cmd(["age", "-r", recipient, "-o", str(out), str(source)])
    start = time.perf_counter()
    fsync_file(out)
    with_fsync = seconds + time.perf_counter() - start
    out.unlink()
    return seconds, with_fsync


def bench_rclone(work: Path, source: Path) -> tuple[float, float]:
    crypt_dir = work / "rclone-crypt"
    crypt_dir.mkdir()
    obscured = subprocess.run(["rclone", "obscure", os.urandom(16).hex()], check=True, capture_output=True,
                              text=True).stdout.strip()
    config = work / "rclone.conf"
    config.write_text(f"[plain]\ntype = local\n\n[secret]\ntype = crypt\nremote = plain:{crypt_dir}\n"
                      f"password = {obscured}\n")
    env = {**os.environ, "RCLONE_CONFIG": str(config)}
    seconds = timed_cmd(["rclone", "copyto", str(source), "secret:source.bin", *RCLONE_FLAGS], env)
    outputs = [p for p in crypt_dir.rglob("*") if p.is_file()]
    if len(outputs) != 1 or outputs[0].stat().st_size < source.stat().st_size:
        sys.exit(f"error: rclone crypt produced {outputs!r}, expected one encrypted file")
    start = time.perf_counter()
    fsync_file(outputs[0])
    with_fsync = seconds + time.perf_counter() - start
    shutil.rmtree(crypt_dir)
    return seconds, with_fsync


def bench_s3(work: Path, source: Path) -> dict:
    from archive.store.s3 import S3Store
    from tests.servers import SeaweedS3

    size = source.stat().st_size
    log("starting SeaweedFS ...")
    with SeaweedS3() as server:
        client = server.client()
        bucket = server.make_locked_bucket("bench-seal")
        log(f"SeaweedFS up in {server.startup_seconds:.1f}s")
        vault = vault_for(S3Store(bucket, client=client), work / "s3-keys")
        plain, plain_sha, sealed = [], [], []
        for run in range(REPEATS):  # alternate, so all see the same server and disk state
            for key, extra, times in ((f"plain-{run}", None, plain),
                                      (f"plain-sha256-{run}", {"ChecksumAlgorithm": "SHA256"}, plain_sha)):
                warm(source)
                os.sync()
                start = time.perf_counter()
                client.upload_file(str(source), bucket, key, ExtraArgs=extra)
                times.append(time.perf_counter() - start)
                if client.head_object(Bucket=bucket, Key=key)["ContentLength"] != size:
                    sys.exit("error: the plain upload has the wrong size")
            warm(source)
            os.sync()
            start = time.perf_counter()
            with open(source, "rb") as f:
                vault.seal(f"{NAME}-{run}", f, binding(), retain_until=retain())
            sealed.append(time.perf_counter() - start)
            log(f"S3 run {run}: plain {rate(size, plain[-1])} MiB/s, plain+SHA-256 {rate(size, plain_sha[-1])} "
                f"MiB/s, sealed {rate(size, sealed[-1])} MiB/s")
    plain_s, sealed_s = statistics.median(plain), statistics.median(sealed)
    return {"s3_plain_mb_s": rate(size, plain_s), "s3_sealed_mb_s": rate(size, sealed_s),
            "s3_sealed_vs_plain": round(plain_s / sealed_s, 3),
            "s3_plain_sha256_mb_s": rate(size, statistics.median(plain_sha)),
            "s3_sealed_vs_plain_sha256": round(statistics.median(plain_sha) / sealed_s, 3)}


def version(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="source size in MiB (default 1024)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temporary directory")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    missing = [tool for tool in ("age", "age-keygen", "rclone") if not shutil.which(tool)]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not found on PATH; install them (Debian: apt-get install age "
                 "rclone) — this benchmark compares against them and will not report without them")
    if args.size_mb < 1:
        sys.exit("error: --size-mb must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="bench-seal-"))
    log(f"work dir {work} (size {args.size_mb} MiB, {os.cpu_count()} CPUs)")
    try:
        source = work / "source.bin"
        size = args.size_mb * MIB
        start = time.perf_counter()
        with open(source, "wb") as f:
            for left in range(size, 0, -8 * MIB):
                f.write(os.urandom(min(8 * MIB, left)))
        log(f"made the random source file in {time.perf_counter() - start:.1f}s")

        log("seal / unseal / range reads in a child process ...")
        warm(source)
        res = run_child(work)
        res["seal_runs"], res["seal_s"] = res["seal_s"], statistics.median(res["seal_s"])
        res["unseal_s"] = statistics.median(res["unseal_s"])
        log(f"seal {rate(size, res['seal_s'])} MiB/s, unseal {rate(size, res['unseal_s'])} MiB/s, "
            f"range median {statistics.median(res['range_ms']):.2f} ms, peak RSS {res['rss_kib'] / 1024:.1f} MiB")

        log("disk baseline: copy + fsync, no encryption ...")
        disk_s, _ = repeat(disk_baseline, work, source)
        log(f"disk {rate(size, disk_s)} MiB/s")
        log("age ...")
        age_s, age_sync_s = repeat(bench_age, work, source)
        log(f"age {rate(size, age_s)} MiB/s ({rate(size, age_sync_s)} with fsync)")
        log("rclone crypt ...")
        rc_s, rc_sync_s = repeat(bench_rclone, work, source)
        log(f"rclone {rate(size, rc_s)} MiB/s ({rate(size, rc_sync_s)} with fsync)")
        s3 = bench_s3(work, source)
    finally:
        if args.keep_dir:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "seal_mb_s": rate(size, res["seal_s"]),
        "unseal_mb_s": rate(size, res["unseal_s"]),
        "range_1mib_ms": round(statistics.median(res["range_ms"]), 2),
        "peak_rss_mb": round(res["rss_kib"] / 1024, 1),
        "age_mb_s": rate(size, age_s),
        "rclone_mb_s": rate(size, rc_s),
        **s3,
        "unit": "MiB/s",
        "seal_mb_s_runs": [rate(size, t) for t in res["seal_runs"]],
        "disk_fsync_mb_s": rate(size, disk_s),
        "repeats": REPEATS,
        "unseal_sink": "/dev/null",
        "size_mib": args.size_mb,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "range_1mib_ms_p90": round(statistics.quantiles(res["range_ms"], n=10)[-1], 2),
        "peak_rss_seal_mb": round(res["rss_seal_kib"] / 1024, 1),
        "age_fsync_mb_s": rate(size, age_sync_s),
        "rclone_fsync_mb_s": rate(size, rc_sync_s),
        "seal_includes_fsync": True,
        "rclone_flags": " ".join(RCLONE_FLAGS),
        "versions": {"age": version(["age", "--version"]), "rclone": version(["rclone", "version"])},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
