"""Benchmark: exporting a large case — call recordings decrypted into a signed evidence bundle — on the
embedded default, against tar of the same plaintext files (what a user would do by hand, with no
decryption, no verification and no signature), on the same machine in the same run.

Run ``python bench/export.py [--gb 5] [--calls 10]``. The recordings (PCM WAV, 8 kHz mono) are made,
ingested (sealed), then exported by ``archive export`` in its own process; its peak RSS is read from the
kernel (``ru_maxrss`` of the child). The last line of stdout is one JSON object:

* ``export_mb_s``   MB of recordings per second, ``archive export`` (decrypt, verify, hash, zip, sign)
* ``peak_rss_mb``   the export process's peak resident memory
* ``tar_mb_s``      the same plaintext files through ``tar -cf``
* ``verify_mb_s``   ``archive verify-bundle`` over the bundle
* ``gb``, ``calls``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def make_wav(path: Path, size: int, seed: int) -> None:
    """A PCM WAV of about ``size`` bytes (a tone pattern repeated; the content does not matter to export)."""
    block = bytes((i * (seed + 3)) & 0xFF for i in range(1 << 20))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        written = 0
        while written < size:
            w.writeframes(block)
            written += len(block)


def run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], env=env, capture_output=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("ARCHIVE_")},
               "ARCHIVE_HOME": str(work / "home"), "ARCHIVE_ACTOR": "bench", "PYTHONPATH": str(ROOT)}
        inbox = work / "inbox"
        inbox.mkdir()
        each = int(args.gb * 1e9 / args.calls)
        for i in range(args.calls):
            make_wav(inbox / f"call-{i:03d}.wav", each, i)
            (inbox / f"call-{i:03d}.json").write_text(json.dumps({
                "schema": "archive-record/1", "source": {"system": "bench", "interaction_id": f"x-{i}"},
                "channel": "phone", "started_at": f"2024-04-{1 + i % 28:02d}T09:00:00Z",
                "participants": [{"role": "agent", "id": "1"}, {"role": "customer", "id": "C-1"}]}))
        total = sum(p.stat().st_size for p in inbox.glob("*.wav"))
        log(f"{args.calls} recordings, {total / 1e9:.2f} GB; ingesting ...")
        run(env, "init")
        run(env, "ingest", str(inbox))
        ids = [r["record_id"] for r in json.loads(run(env, "search", "", "--json").stdout)["records"]]

        log("tar -cf of the plaintext recordings ...")
        t = time.monotonic()
        subprocess.run(["tar", "-cf", str(work / "plain.tar"), "-C", str(inbox), "."], check=True)
        with open(work / "plain.tar", "rb") as f:
            os.fsync(f.fileno())
        tar_s = time.monotonic() - t
        (work / "plain.tar").unlink()

        log("archive export ...")
        # the export in a process of its own that reports its own peak RSS as it exits
        probe = ("import resource, runpy, sys\nsys.argv = ['archive'] + sys.argv[1:]\ntry:\n"
                 "    runpy.run_module('archive', run_name='__main__')\nfinally:\n"
                 "    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", probe, "export", *ids, "-o", str(work / "case.zip"),
                               "--case", "BENCH-1", "--reason", "benchmark"], env=env, capture_output=True)
        export_s = time.monotonic() - t
        if proc.returncode != 0:
            raise SystemExit(f"export failed: {proc.stderr.decode()[-2000:]}")
        peak_kb = int(proc.stderr.decode().split("PEAK_RSS_KB")[1].split()[0])

        log("archive verify-bundle ...")
        key = work / "key.json"
        key.write_bytes(run(env, "keys", "public").stdout)
        t = time.monotonic()
        run(env, "verify-bundle", str(work / "case.zip"), "--public-key", str(key))
        verify_s = time.monotonic() - t
        result = {"export_mb_s": round(total / 1e6 / export_s, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
                  "tar_mb_s": round(total / 1e6 / tar_s, 1), "verify_mb_s": round(total / 1e6 / verify_s, 1),
                  "gb": round(total / 1e9, 2), "calls": args.calls}
        log(str(result))
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
