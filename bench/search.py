"""Benchmark: search latency on the embedded SQLite index at a million records, and bulk indexing speed on
SQLite and on the search engines (osmem-server behind the strict shim of each engine profile,
tests/engine_shim.py), through the archive's own index code.

Run ``python bench/search.py [--records N] [--engine-records N] [--queries N]`` (defaults 1,000,000,
20,000 and 200 per kind; ``--records 20000 --engine-records 5000 --queries 20`` for a quick run). The last
line of stdout is one JSON object:

* ``records``              records in the SQLite index
* ``p95_ms_field``         a field filter (agent + channel), first page of 50
* ``p95_ms_range_facet``   a one-month range with facets by channel, agent, policy and month
* ``p95_ms_phrase``        a quoted phrase from the transcripts
* ``p95_ms_timeline``      one customer's whole timeline
* ``index_mb``             the SQLite database with its write-ahead log
* ``bulk_docs_per_s``      {"sqlite": …, "elasticsearch": …, "opensearch": …}: documents indexed per second
                           (upsert of every record, then flush), the engines through ``ElasticIndex``
                           and the shim of the Elasticsearch 8 and OpenSearch profiles
* ``stand_in_docs_per_s``  the same documents, already serialised, posted straight to osmem-server in
                           bulk requests of the same size with no client and no shim: the most the
                           stand-in itself takes on this machine (the engines' figures cannot exceed it)
* ``engine_records``       records loaded into each engine

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


def stand_in_rate(url: str, n: int) -> float:
    """Documents per second osmem-server takes when handed the backend's own bulk bodies, serialised
    beforehand, over one plain HTTP connection: the stand-in's ceiling."""
    import http.client
    from urllib.parse import urlsplit

    from archive.index.bulk import BulkWriter, action
    from archive.index.elastic import TEMPLATE_VERSION, ElasticIndex, _mappings

    rng = random.Random(2)
    actions = {}
    for i in range(n):
        v = view(i, rng)
        actions[v["record_id"]] = action(v["record_id"], json.dumps(ElasticIndex._doc(v), ensure_ascii=False,
                                                                    separators=(",", ":")).encode())
    bodies = [b"".join(batch.values()) for batch in BulkWriter().batches(actions)]
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)

    def post(method, path, body, kind="application/json"):
        conn.request(method, path, body=body, headers={"Content-Type": kind})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 300 or (path.endswith("/_bulk") and json.loads(data).get("errors")):
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")

    index = f"ceiling-v{TEMPLATE_VERSION}"
    post("PUT", f"/{index}", json.dumps({"settings": {"number_of_shards": 1}, "mappings": _mappings()}).encode())
    start = time.perf_counter()
    for body in bodies:
        post("POST", f"/{index}/_bulk", body, "application/x-ndjson")
    post("POST", f"/{index}/_refresh", b"")
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
    parser.add_argument("--engine-records", type=int, default=20_000)
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

    from archive.index.elastic import ElasticIndex
    from tests.servers import EngineShim, Osmem

    rates = {"sqlite": round(sqlite_rate)}
    for profile, name in (("elasticsearch-8", "elasticsearch"), ("opensearch-3", "opensearch")):
        # a fresh stand-in for each run: its cost per document grows with what it already holds
        with Osmem() as server, EngineShim(server.url, profile) as shim:
            log(f"loading {args.engine_records} records into {name} ({profile} shim in front of osmem-server) ...")
            engine = ElasticIndex(shim.url, alias=f"bench-{name}")
            rates[name] = round(load(engine, args.engine_records, seed=2))
            assert engine.count() == args.engine_records
            engine.close()
    log("the same documents straight into osmem-server ...")
    with Osmem() as server:
        ceiling = stand_in_rate(server.url, args.engine_records)
    result["bulk_docs_per_s"] = rates
    result["stand_in_docs_per_s"] = round(ceiling)
    result["engine_records"] = args.engine_records
    log(f"bulk: {rates}, stand-in alone {ceiling:.0f}/s")
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
