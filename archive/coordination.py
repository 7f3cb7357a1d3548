"""What workers share besides the queue, in Redis: claims on inbox inputs, which inputs are queued or were
rejected, and counters for ``archive status``.

Redis holds nothing the archive cannot lose: the inboxes and the object store are the truth. If Redis
restarts empty, the next inbox scan queues every input still in an inbox again; a claim that vanished
lets a second worker take an input, and the pipeline's content addressing makes that a duplicate, never a
second record.

Keys (prefix ``archive:``): ``claim:<input>`` (a worker's lease, with a token only it can renew or
release), ``queued:<input>`` (in a task message not yet taken: scans do not queue it again), ``rejected``
(inputs quarantined, by their file signature: not retried until they change), ``counters``.

An input is queued once: its ``queued`` mark lives until a worker claims it (the claim then stands for it,
renewed while the worker works) or, should the message be lost with no worker ever taking it (a worker
killed holding prefetched messages, a broker that lost its queue), until ``ARCHIVE_REQUEUE_AFTER``. A
scan queues again only an input with neither: one whose worker died (its claim lapsed) or whose message
was lost.
"""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager

from archive.errors import ArchiveError


class CoordinationUnavailable(ArchiveError):
    """Redis could not be reached: worth retrying."""

    code = "coordination_unavailable"
    transient = True


_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class Lease:
    """A claim held by this worker; renewed in the background while the work runs."""

    def __init__(self, coordinator: Coordinator, key: str, token: str, ttl_ms: int) -> None:
        self.c, self.key, self.token, self.ttl_ms = coordinator, key, token, ttl_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True, name=f"lease {key[:40]}")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                # 0: lapsed or taken over; the work is idempotent (content addressing), so it may finish
                self.c._eval(_RENEW, self.key, self.token, self.ttl_ms)
            except CoordinationUnavailable:
                pass

    def release(self) -> None:
        self._stop.set()
        try:
            self.c._eval(_RELEASE, self.key, self.token)
        except CoordinationUnavailable:
            pass  # it lapses on its own


class Leases:
    """Claims on many inputs, renewed together (one pipelined round trip) while the work runs."""

    def __init__(self, coordinator: Coordinator, tokens: dict[str, str], ttl_ms: int) -> None:
        self.c, self.tokens, self.ttl_ms = coordinator, tokens, ttl_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True, name=f"leases ({len(tokens)})")

    def __contains__(self, key: str) -> bool:
        return key in self.tokens

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                self.c._each(_RENEW, dict(self.tokens), self.ttl_ms)
            except CoordinationUnavailable:
                pass  # 0 or unreachable: lapsed or taken over; the work is idempotent, so it may finish

    def release(self, keys=None) -> None:
        """Give up the claims on ``keys`` (default: all that are left)."""
        keys = list(self.tokens) if keys is None else [k for k in keys if k in self.tokens]
        gone = {k: self.tokens.pop(k) for k in keys}
        if not self.tokens:
            self._stop.set()
        if not gone:
            return
        try:
            self.c._each(_RELEASE, gone)
        except CoordinationUnavailable:
            pass  # they lapse on their own


class Coordinator:
    def __init__(self, url: str, namespace: str = "archive") -> None:
        import redis

        self._redis_errors = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
        self.r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        self.ns = namespace

    def _do(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._redis_errors as e:
            raise CoordinationUnavailable(f"Redis (worker coordination) unavailable: {e}") from e

    def _eval(self, script: str, key: str, *args):
        return self._do(self.r.eval, script, 1, f"{self.ns}:claim:{key}", *args)

    @contextmanager
    def claim(self, key: str, ttl_seconds: float):
        """Yield a Lease on ``key``, or None when another worker holds it."""
        token = uuid.uuid4().hex
        ttl_ms = max(1000, int(ttl_seconds * 1000))
        if not self._do(self.r.set, f"{self.ns}:claim:{key}", token, nx=True, px=ttl_ms):
            yield None
            return
        lease = Lease(self, key, token, ttl_ms)
        lease._thread.start()
        try:
            yield lease
        finally:
            lease.release()

    def _each(self, script: str, tokens: dict[str, str], *args) -> list:
        pipe = self.r.pipeline(transaction=False)
        for key, token in tokens.items():
            pipe.eval(script, 1, f"{self.ns}:claim:{key}", token, *args)
        return self._do(pipe.execute)

    @contextmanager
    def claim_many(self, keys: list[str], ttl_seconds: float):
        """Yield :class:`Leases` on those of ``keys`` no other worker holds (``key in leases``), taken in
        one round trip, their ``queued`` marks dropped (the claims stand for them now); released at the
        end unless released before."""
        ttl_ms = max(1000, int(ttl_seconds * 1000))
        tokens = {key: uuid.uuid4().hex for key in dict.fromkeys(keys)}
        pipe = self.r.pipeline(transaction=False)
        for key, token in tokens.items():
            pipe.set(f"{self.ns}:claim:{key}", token, nx=True, px=ttl_ms)
        taken = self._do(pipe.execute)
        leases = Leases(self, {k: t for (k, t), ok in zip(tokens.items(), taken) if ok}, ttl_ms)
        try:
            if leases.tokens:
                self._do(self.r.delete, *(f"{self.ns}:queued:{k}" for k in leases.tokens))
                leases._thread.start()
            yield leases
        finally:
            leases.release()

    def unqueue(self, key: str) -> None:
        self._do(self.r.delete, f"{self.ns}:queued:{key}")

    def select_new(self, keyed: list[tuple[str, str]], ttl_seconds: float) -> list[int]:
        """Of (key, signature) pairs, the positions of those not rejected with that signature, not
        claimed by a worker and not queued already — and mark those queued, for ``ttl_seconds`` at most
        (see the module docstring). Two round trips however many there are."""
        if not keyed:
            return []
        pipe = self.r.pipeline(transaction=False)
        pipe.smismember(f"{self.ns}:rejected", [f"{k}|{s}" for k, s in keyed])
        for key, _ in keyed:
            pipe.exists(f"{self.ns}:claim:{key}")
        rejected, *claimed = self._do(pipe.execute)
        fresh = [i for i, (r, c) in enumerate(zip(rejected, claimed)) if not r and not c]
        pipe = self.r.pipeline(transaction=False)
        for i in fresh:
            pipe.set(f"{self.ns}:queued:{keyed[i][0]}", 1, nx=True, ex=max(1, int(ttl_seconds)))
        marked = self._do(pipe.execute)
        return [i for i, ok in zip(fresh, marked) if ok]

    def count_many(self, counts: dict[str, int]) -> None:
        """Add to several counters in one round trip."""
        if counts:
            pipe = self.r.pipeline(transaction=False)
            for name, n in counts.items():
                pipe.hincrby(f"{self.ns}:counters", name, n)
            self._do(pipe.execute)

    def add_rejected(self, key: str, signature: str) -> None:
        self._do(self.r.sadd, f"{self.ns}:rejected", f"{key}|{signature}")

    def count(self, name: str, n: int = 1) -> None:
        self._do(self.r.hincrby, f"{self.ns}:counters", name, n)

    def counters(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self._do(self.r.hgetall, f"{self.ns}:counters").items()}

    def claims(self) -> int:
        return sum(1 for _ in self._do(self.r.scan_iter, match=f"{self.ns}:claim:*", count=1000))

    def queue_length(self, queue: str) -> int:
        return int(self._do(self.r.llen, queue))
