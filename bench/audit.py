"""Benchmark: audit-log appends (batched) and full verification of a 100,000-event log.

Run ``python bench/audit.py [--events N] [--batch N]`` (defaults 100000 and 500). The last line of stdout is
one JSON object.

* ``appends_per_s``        events appended per second into the embedded default (filesystem store), in
                           batches of ``--batch`` events (one write-once store object, fsynced, per batch),
                           each batch signed, and a signed checkpoint written automatically every 1,000
                           events (the default ARCHIVE_AUDIT_CHECKPOINT_EVERY) — ``checkpoints_written``.
* ``verify_events_per_s``  events per second through ``archive.audit.verify``: batch numbering, sequence,
                           hash chain, RFC 6962 root at every checkpoint (one per 10,000 events) and each
                           checkpoint's Ed25519 signature.
* reference points measured in the same run: raw Ed25519 signatures per second and SHA-256 MB/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from archive.audit.log import AuditLog, Event  # noqa: E402
from archive.audit.verify import verify  # noqa: E402
from archive.dates import parse_duration  # noqa: E402
from archive.keys.keyring import KeyringProvider, create_keyring  # noqa: E402
from archive.store.filesystem import FilesystemStore  # noqa: E402


def event(i: int) -> Event:
    return Event(actor=f"auditor-{i % 17}", role="auditor", action="view", target={"records": [f"r{i:032d}"]},
                 reason="quarterly QA sample", origin="bench:1", time="2026-11-23T08:00:00.000+00:00")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        create_keyring(work / "keyring.json")
        keys = KeyringProvider(work / "keyring.json")
        log = AuditLog(FilesystemStore(work / "store", create=True), retention=parse_duration("P1D"),
                       signer=keys.signer())
        events = [event(i) for i in range(args.events)]
        checkpoint_every = 10_000
        start = time.perf_counter()
        for lo in range(0, args.events, args.batch):
            log.append_many(events[lo:lo + args.batch])
        append_s = time.perf_counter() - start
        written = sum(1 for _ in log.store.list("audit/checkpoints/"))
        print(f"[bench] {args.events} appends in {append_s:.2f}s ({written} checkpoints written on the way)",
              file=sys.stderr)

        # Checkpoints at every 10,000 events, as a periodic task would leave them.
        for size in range(checkpoint_every, args.events + 1, checkpoint_every):
            _checkpoint_at(log, size)
        start = time.perf_counter()
        report = verify(log, keys.signing_public_keys())
        verify_s = time.perf_counter() - start
        if not report.ok or report.events != args.events:
            sys.exit(f"error: the benchmark log did not verify: {report.problems[:3]}")
        print(f"[bench] verified {report.events} events, {report.checkpoints} checkpoints in {verify_s:.2f}s",
              file=sys.stderr)

        private, message = Ed25519PrivateKey.generate(), b"x" * 200
        start = time.perf_counter()
        for _ in range(5000):
            private.sign(message)
        ed25519_per_s = 5000 / (time.perf_counter() - start)
        blob = os.urandom(64 * 1024 * 1024)
        start = time.perf_counter()
        hashlib.sha256(blob).digest()
        sha_mb_s = 64 / (time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps({
        "appends_per_s": round(args.events / append_s),
        "verify_events_per_s": round(args.events / verify_s),
        "events": args.events, "batch": args.batch, "checkpoints_written": written, "checkpoints": report.checkpoints,
        "ed25519_signs_per_s": round(ed25519_per_s), "sha256_mb_s": round(sha_mb_s), "nproc": os.cpu_count(),
    }))


def _checkpoint_at(log: AuditLog, size: int) -> None:
    """Sign a tree head at ``size`` (what ``log.checkpoint()`` would have written when the log was that long),
    unless the writer checkpointed there on its own."""
    import io

    if any(True for _ in log.store.list(f"audit/checkpoints/{size:012d}.json")):
        return

    from archive.audit.log import CHECKPOINT_FORMAT, _canonical, signed_bytes
    from archive.audit.merkle import MerkleAccumulator

    acc = MerkleAccumulator()
    for logged in log.events():
        if acc.size == size:
            break
        acc.append(logged.leaf)
    head = {"format": CHECKPOINT_FORMAT, "size": size, "root": acc.root().hex(), "time": "2026-11-23T08:00:00+00:00",
            "key_id": log.signer.key_id}
    head["signature"] = log.signer.sign(signed_bytes(head)).hex()
    log.publish_key()
    log.store.put(f"audit/checkpoints/{size:012d}.json", io.BytesIO(_canonical(head)))


if __name__ == "__main__":
    main()
