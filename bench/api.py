"""Benchmark: the HTTP API under 20 concurrent clients, on the embedded default.

Run ``python bench/api.py [--records N] [--clients C] [--seconds S] [--think MS]`` (defaults 5000, 20, 30,
250). The last line of stdout is one JSON object; progress goes to stderr.

Set-up: a fresh embedded archive with N chat transcripts and one one-hour call (8 kHz stereo 16-bit WAV,
115 MB, made by sox), served by ``archive serve --workers W`` (default 2, one per core) on loopback.

Clients: C auditors at once (threads in four processes), each with its own keep-alive connection and an
auditor token, alternating
* a search, chosen in turn from field filters, phrases, date ranges with facets and paged queries;
* a playback seek: ``Range: bytes=K-`` at a random point in the middle half of the hour, as a player
  asks after a seek; the client reads the first bytes and hangs up, as a player does on the next seek.

Every request is authenticated, authorised and appended to the audit log, as in production.

Two runs of S seconds each:
* **users** (the figures the issue names): each client pauses after every action for a think time drawn
  from an exponential distribution with a mean of ``--think`` ms (250: four actions a second for every
  auditor, ten times the pace of a person reading results and listening to calls). Latency here is what
  a console user waits for;
* **saturated**: no pause at all, so the clients keep the machine (two cores, shared with the clients)
  fully busy and latency is mostly the queue: about C / throughput. This measures capacity; a plain
  static file server measured the same way shows what the machine allows.

Figures:
* ``search_p95_ms``     95th percentile latency of the searches (request sent → whole body read), users run
* ``playback_ttfb_ms``  95th percentile time to the first byte of the range responses (connect included),
                        users run
* ``errors``            requests that failed or answered anything but 200 / 206, in both runs
* ``saturated``         the same p95s, p50s and requests per second with no pause
* baselines on the same machine in the same run: ``baseline_static_ttfb_ms`` (users) and
  ``baseline_static_saturated_ttfb_ms``, the same seeks answered by a plain static file server
  (Starlette's FileResponse under the same uvicorn, no TLS, no token, no decryption, no audit) on the
  plaintext WAV; ``baseline_library_search_p95_ms``, the same searches straight through the library in
  one thread (no HTTP, no token, no audit).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# What auditors type: an agent's interactions, a customer's, a quoted phrase, a word, a month with facets,
# a channel and a word, an exclusion, one interaction id. Agents, customers and words as in bench/search.py
# (here at a smaller scale): a field matches ~1/50 of the records, a common word a large share.
QUERIES = ["agent:{agent}", "customer:u{n}", '"refund for order {n}"', "{word}", "after:2024-04-01 before:2024-05-01",
           'channel:chat "{word}"', "agent:{agent} NOT channel:messaging", "interaction:bench-{n}"]
FACETS = ["channel,month", "", "", "agent", "channel,agent,month", "", "", ""]
WORDS = ["account", "balance", "card", "statement", "transfer", "payment", "refund", "order", "delivery", "insurance", "policy", "premium", "claim", "deposit", "withdrawal", "loan", "mortgage", "interest", "rate", "fee", "complaint", "cancel", "upgrade", "password", "address", "fraud", "dispute", "chargeback", "abroad", "block", "unblock", "limit", "pension", "fund", "risk", "product", "advice"]
AGENTS = 50
CLIENT_PROCESSES = 4
CHANNELS = ("chat", "messaging")
def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else float("nan")


def chat(n: int) -> dict:
    rng = random.Random(n)
    day = 1 + n % 28
    agent = f"a{rng.randrange(AGENTS)}"
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 20)))
    return {"schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": f"bench-{n}"},
            "channel": CHANNELS[n % 2], "started_at": f"2024-{4 + n % 3:02d}-{day:02d}T10:00:00Z",
            "participants": [{"role": "agent", "id": agent, "name": f"Agent {agent}"},
                             {"role": "customer", "id": f"u{n}"}],
            "messages": [{"at": "2024-04-01T10:00:00Z", "from": f"u{n}", "text": f"I want a refund for order {n}"},
                         {"at": "2024-04-01T10:01:00Z", "from": agent, "text": words}]}


def archive_cli(env: dict, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "archive", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"archive {' '.join(args)} failed: {proc.stderr}{proc.stdout[-2000:]}")
    return proc.stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, port: int, probe: str, log_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", probe)
            c.getresponse().read()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"server did not start: {log_path.read_text()}")
            time.sleep(0.2)


class Client(threading.Thread):
    def __init__(self, i: int, port: int, token: str | None, rid: str, size: int, records: int, until: float,
                 path: str | None = None, search: bool = True, think: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.i, self.port, self.token, self.rid, self.size, self.records = i, port, token, rid, size, records
        self.until, self.path, self.search, self.think = until, path, search, think
        self.rng = random.Random(i)
        self.search_ms: list[float] = []
        self.ttfb_ms: list[float] = []
        self.errors: list[str] = []
        self.conn = None

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def do_search(self, k: int) -> None:
        q = QUERIES[k % len(QUERIES)].format(n=self.rng.randrange(self.records), word=self.rng.choice(WORDS),
                                             agent=f"a{self.rng.randrange(AGENTS)}")
        url = f"/api/v1/search?q={quote(q)}&limit=25&facets={FACETS[k % len(FACETS)]}"
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        t0 = time.perf_counter()
        self.conn.request("GET", url, headers=self.headers())
        r = self.conn.getresponse()
        body = r.read()
        self.search_ms.append((time.perf_counter() - t0) * 1000)
        if r.status != 200:
            self.errors.append(f"search {q!r}: {r.status} {body[:200]!r}")

    def do_seek(self) -> None:
        offset = self.rng.randrange(self.size // 4, 3 * self.size // 4)
        path = self.path or f"/api/v1/records/{self.rid}/parts/audio?reason=bench%20playback"
        t0 = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", path, headers={**self.headers(), "Range": f"bytes={offset}-"})
        r = c.getresponse()
        first = r.read(1)
        self.ttfb_ms.append((time.perf_counter() - t0) * 1000)
        if r.status != 206 or not first or not r.getheader("content-range", "").startswith(f"bytes {offset}-"):
            self.errors.append(f"seek {offset}: {r.status} {r.getheader('content-range')}")
        r.read(64 * 1024)  # a player buffers a little, then the user seeks again: hang up
        c.close()

    def run(self) -> None:
        k = self.i
        while time.monotonic() < self.until:
            try:
                if self.search and k % 2 == 0:
                    self.do_search(k // 2)
                else:
                    self.do_seek()
            except Exception as e:  # noqa: BLE001 - counted as an error, the load goes on
                self.errors.append(f"{type(e).__name__}: {e}")
                self.conn = None
            k += 1
            if self.think:
                time.sleep(self.rng.expovariate(1 / self.think))


def _load_part(job: tuple) -> tuple[list[float], list[float], list[str]]:
    first, count, port, token, rid, size, records, until, path, search, think = job
    threads = [Client(i, port, token, rid, size, records, until, path, search, think)
               for i in range(first, first + count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ([m for t in threads for m in t.search_ms], [m for t in threads for m in t.ttfb_ms],
            [e for t in threads for e in t.errors])


def load(port: int, token: str | None, rid: str, size: int, records: int, clients: int, seconds: float,
         path: str | None = None, search: bool = True, think: float = 0.0) -> tuple[list[float], list[float], list[str]]:
    """``clients`` concurrent clients for ``seconds``, each pausing ``think`` seconds on average after each
    action: threads spread over a few processes, so that the load generator's own GIL adds less to the
    latencies it measures."""
    import multiprocessing

    until = time.monotonic() + seconds
    procs = min(clients, CLIENT_PROCESSES)
    jobs = [(sum(clients // procs + (j < clients % procs) for j in range(i)), clients // procs + (i < clients % procs),
             port, token, rid, size, records, until, path, search, think) for i in range(procs)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_load_part, jobs)
    return ([m for p in parts for m in p[0]], [m for p in parts for m in p[1]], [e for p in parts for e in p[2]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--workers", type=int, default=2, help="archive serve --workers (default 2: one per core)")
    ap.add_argument("--think", type=float, default=250, help="mean pause of each client after each action, ms "
                                                              "(users run; default 250)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVE_")}
    env.update({"ARCHIVE_HOME": str(work / "home"), "ARCHIVE_ACTOR": "bench"})
    inbox = work / "inbox"
    (inbox / "chats").mkdir(parents=True)
    log(f"making {args.records} chats and a one-hour call in {inbox}")
    for i in range(args.records):
        (inbox / "chats" / f"chat-{i:06d}.json").write_text(json.dumps(chat(i)))
    wav = inbox / "hour.wav"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "2", "-b", "16", "-e", "signed-integer", str(wav), "synth", "3600",
                    "sine", "300-3000", "pinknoise", "gain", "-6"], check=True)
    (inbox / "hour.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "bench-recorder", "interaction_id": "hour-1"},
        "channel": "phone", "started_at": "2024-05-06T10:30:00Z",
        "participants": [{"role": "agent", "id": "1042"}, {"role": "customer", "id": "C-1"}]}))
    size = wav.stat().st_size
    archive_cli(env, "init")
    archive_cli(env, "identity", "add", "auditor-1", "--role", "auditor")
    t0 = time.perf_counter()
    archive_cli(env, "ingest", str(inbox))
    log(f"ingested {args.records + 1} records in {time.perf_counter() - t0:.1f} s")
    rid = json.loads(archive_cli(env, "search", "interaction:hour-1", "--json"))["records"][0]["record_id"]
    token = archive_cli(env, "token", "create", "auditor-1", "--role", "auditor").strip()

    # the library alone, one thread: the same searches without HTTP, tokens or audit
    from archive.index.sqlite import SqliteIndex
    from archive.settings import Settings

    index = SqliteIndex(Settings.from_env(env).index_path)
    rng = random.Random(7)
    lib_ms = []
    for k in range(400):
        q = QUERIES[k % len(QUERIES)].format(n=rng.randrange(args.records), word=rng.choice(WORDS),
                                             agent=f"a{rng.randrange(AGENTS)}")
        facets = tuple(f for f in FACETS[k % len(FACETS)].split(",") if f)
        t = time.perf_counter()
        index.query(q, limit=25, facets=facets)
        lib_ms.append((time.perf_counter() - t) * 1000)

    port = free_port()
    server = start([sys.executable, "-m", "archive", "serve", "--port", str(port), "--workers", str(args.workers)], env, port,
                   "/api/v1/openapi.json", work / "server.log")
    static_port = free_port()
    static_app = work / "static_app.py"
    static_app.write_text(textwrap.dedent(f"""
        from starlette.applications import Starlette
        from starlette.responses import FileResponse
        from starlette.routing import Route
        app = Starlette(routes=[Route("/hour.wav", lambda request: FileResponse({str(wav)!r}))])
    """))
    static = start([sys.executable, "-m", "uvicorn", "static_app:app", "--port", str(static_port), "--log-level",
                    "warning", "--no-access-log", "--app-dir", str(work)], env, static_port, "/hour.wav",
                   work / "static.log")
    think = args.think / 1000
    try:
        log("warm-up (3 s)")
        load(port, token, rid, size, args.records, args.clients, 3)
        log(f"users: {args.clients} clients for {args.seconds:.0f} s, pausing {args.think:.0f} ms on average "
            "between actions: searches and seeks through the API")
        search_ms, ttfb_ms, errors = load(port, token, rid, size, args.records, args.clients, args.seconds,
                                          think=think)
        log(f"{len(search_ms)} searches, {len(ttfb_ms)} seeks, {len(errors)} errors {errors[:3]}")
        log(f"saturated: {args.clients} clients for {args.seconds:.0f} s without pausing")
        sat_search, sat_ttfb, sat_errors = load(port, token, rid, size, args.records, args.clients, args.seconds)
        log(f"{len(sat_search)} searches, {len(sat_ttfb)} seeks, {len(sat_errors)} errors {sat_errors[:3]}")
        log(f"baseline: {args.clients} clients seeking in the plaintext file through a static file server, "
            "pausing, then not")
        _, static_ttfb, static_errors = load(static_port, None, rid, size, args.records, args.clients,
                                             min(args.seconds, 10), path="/hour.wav", search=False, think=think)
        _, static_sat, static_sat_errors = load(static_port, None, rid, size, args.records, args.clients,
                                                min(args.seconds, 10), path="/hour.wav", search=False)
    finally:
        server.terminate()
        static.terminate()
        server.wait(10)
        static.wait(10)
    if "Traceback" in (work / "server.log").read_text():
        errors.append("the server logged a traceback")
    result = {
        "search_p95_ms": pct(search_ms, 0.95), "playback_ttfb_ms": pct(ttfb_ms, 0.95),
        "errors": len(errors) + len(sat_errors),
        "search_p50_ms": pct(search_ms, 0.5), "playback_ttfb_p50_ms": pct(ttfb_ms, 0.5),
        "requests_per_s": round((len(search_ms) + len(ttfb_ms)) / args.seconds, 1), "think_ms_mean": args.think,
        "saturated": {"search_p95_ms": pct(sat_search, 0.95), "playback_ttfb_ms": pct(sat_ttfb, 0.95),
                      "search_p50_ms": pct(sat_search, 0.5), "playback_ttfb_p50_ms": pct(sat_ttfb, 0.5),
                      "requests_per_s": round((len(sat_search) + len(sat_ttfb)) / args.seconds, 1)},
        "baseline_static_ttfb_ms": pct(static_ttfb, 0.95), "baseline_static_saturated_ttfb_ms": pct(static_sat, 0.95),
        "baseline_static_errors": len(static_errors) + len(static_sat_errors),
        "baseline_library_search_p95_ms": pct(lib_ms, 0.95),
        "clients": args.clients, "workers": args.workers, "records": args.records + 1, "recording_mb": round(size / 1e6, 1),
        "searches": len(search_ms), "seeks": len(ttfb_ms),
        "search_mean_ms": round(statistics.fmean(search_ms), 2) if search_ms else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
