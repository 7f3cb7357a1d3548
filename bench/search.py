"""Benchmark: search latency on the embedded SQLite index at a million records, and bulk indexing speed on
SQLite and on an OpenSearch-API server (osmem-server), through the archive's own index code.

Run ``python bench/search.py [--records N] [--osmem-records N] [--queries N]`` (defaults 1,000,000, 20,000
and 200 per kind). The last line of stdout is one JSON object:

* ``records``              records in the SQLite index
* ``p95_ms_field``         a field filter (agent + channel), first page of 50
* ``p95_ms_range_facet``   a one-month range with facets by channel, agent, policy and month
* ``p95_ms_phrase``        a quoted phrase from the transcripts
* ``p95_ms_timeline``      one customer's whole timeline
* ``index_mb``             the SQLite database with its write-ahead log
* ``bulk_docs_per_s``      {"sqlite": …, "osmem": …}: documents indexed per second (upsert + flush)

Synthetic records: 2,000 agents, 100,000 customers, five channels, two years of start times, chat
messages built from a vocabulary with a few fixed phrases, retention decisions and occasional holds
and findings — the shape the archive indexes.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archive.index.sqlite import SqliteIndex  # noqa: E402

CHANNELS = ["phone", "chat", "email", "messaging", "video"]
POLICIES = ["sec-17a-4-b4", "mifid-ii-16-7", "cn-insurance-traceability-long", "default", "cftc-1-31"]
WORDS = ("account balance card statement transfer payment refund order delivery insurance policy premium "
         "contract cancel fee interest loan mortgage savings deposit product risk return guarantee branch "
         "manager advisor complaint address phone email password limit travel abroad fraud block").split()
PHRASES = ["not a deposit", "cooling-off period", "returns are not guaranteed", "please hold the line"]
START = datetime(2023, 1, 1, tzinfo=UTC)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def view(i: int, rng: random.Random) -> dict:
    started = START + timedelta(seconds=rng.randrange(2 * 365 * 86400))
    customer = f"C-{rng.randrange(100_000):06d}"
    agent = str(1000 + rng.randrange(2000))
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(8, 30)))
    if rng.random() < 0.05:
        text += " " + rng.choice(PHRASES)
    channel = rng.choice(CHANNELS)
    policy = rng.choice(POLICIES)
    return {
        "record_id": f"r{uuid.UUID(int=rng.getrandbits(128)).hex[:32]}",
        "metadata": {
            "source": {"system": "bench", "interaction_id": f"i-{i}"}, "channel": channel,
            "started_at": started.isoformat(),
            "participants": [{"role": "agent", "id": agent, "name": f"Agent {agent}"},
                             {"role": "customer", "id": customer, "account": f"AC{customer[2:]}",
                              "phone": f"+86138{int(customer[2:]):08d}"}],
            "messages": [{"at": started.isoformat(), "from": customer, "text": text}],
        },
        "parts": [{"name": "transcript", "size": len(text), "sha256": "0" * 64}],
        "retention": {"policies": [{"id": policy, "version": 1}], "retain_until": "2033-01-01T00:00:00+00:00"},
        "findings": [{"code": "missing-risk-disclosure"}] if rng.random() < 0.01 else [],
        "holds": ["CASE-7"] if rng.random() < 0.001 else [],
    }


def load(index, n: int, seed: int) -> float:
    rng = random.Random(seed)
    start = time.perf_counter()
    for i in range(n):
        index.upsert(view(i, rng))
        if i and i % 100_000 == 0:
            log(f"  {i} records, {i / (time.perf_counter() - start):.0f}/s")
    index.flush()
    return n / (time.perf_counter() - start)


def p95(index, queries: list[tuple], repeat: int = 1) -> float:
    times = []
    for args, kwargs in queries:
        for _ in range(repeat):
            t = time.perf_counter()
            if "timeline" in kwargs:
                index.timeline(*kwargs["timeline"])
            else:
                index.query(*args, **kwargs)
            times.append((time.perf_counter() - t) * 1000)
    return round(statistics.quantiles(times, n=20)[18], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--osmem-records", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    rng = random.Random(7)
    index = SqliteIndex(work / "index.sqlite")
    index.BATCH = 2000
    log(f"loading {args.records} synthetic records into SQLite ({work}) ...")
    sqlite_rate = load(index, args.records, seed=1)
    index.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    index.db.execute("ANALYZE")
    size = sum(p.stat().st_size for p in work.glob("index.sqlite*")) / 1e6
    log(f"SQLite: {sqlite_rate:.0f} docs/s, {size:.0f} MB; querying ...")

    n = args.queries
    months = [f"{y}-{m:02d}" for y in (2023, 2024) for m in range(1, 13)]
    field_q = [((f"agent:{1000 + rng.randrange(2000)} channel:{rng.choice(CHANNELS)}",), {}) for _ in range(n)]
    range_q = []
    for _ in range(n):
        month = rng.choice(months)
        y, m = map(int, month.split("-"))
        end = f"{y + (m == 12)}-{m % 12 + 1:02d}-01"
        range_q.append(((f"after:{month}-01 before:{end}",), {"facets": ("channel", "agent", "policy", "month")}))
    phrase_q = [((f'"{rng.choice(PHRASES)}"',), {}) for _ in range(n)]
    timeline_q = [((), {"timeline": ("customer.id", f"C-{rng.randrange(100_000):06d}")}) for _ in range(n)]
    result = {
        "records": index.count(),
        "p95_ms_field": p95(index, field_q),
        "p95_ms_range_facet": p95(index, range_q),
        "p95_ms_phrase": p95(index, phrase_q),
        "p95_ms_timeline": p95(index, timeline_q),
        "index_mb": round(size, 1),
    }
    log(f"SQLite: {result}")

    log(f"loading {args.osmem_records} records into osmem-server ...")
    from archive.index.elastic import ElasticIndex
    from tests.servers import Osmem

    with Osmem() as server:
        es = ElasticIndex(server.url, alias="bench", media_type="json")
        osmem_rate = load(es, args.osmem_records, seed=2)
    result["bulk_docs_per_s"] = {"sqlite": round(sqlite_rate), "osmem": round(osmem_rate)}
    result["osmem_records"] = args.osmem_records
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
