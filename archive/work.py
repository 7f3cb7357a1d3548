"""What the Celery workers do, as library calls (``workers/tasks.py`` only forwards to these).

One :class:`Work` per worker process holds the archive's services, opened once from settings. Every
operation acts as ``ARCHIVE_WORKER_ACTOR`` (or the identity that asked for it) through
:class:`archive.access.Session`, so the audit trail records it like a CLI command; and every task starts
from the store's current state (:meth:`Retention.refresh`), since other workers change it.

Inbox flow: :meth:`scan` lists each inbox and hands back batches of groups to queue — settled, neither
queued nor claimed already, not rejected as they are; up to ``ARCHIVE_BATCH_INPUTS`` inputs and
``ARCHIVE_BATCH_BYTES`` to a batch, each group as listed (its files, sizes and ETags), so the worker does
not list again. :meth:`ingest_batch` claims the batch's groups in one round trip (leases in Redis,
renewed while it works), fetches their files in parallel, archives every input through the pipeline as
one run (records committed in groups: every manifest object, then every receipt), records one audit event
per group — all in one batch of the log — and only then moves each group's files to the done area, in
parallel. A worker that dies leaves its claims to lapse and its groups in the inbox; the next scan queues
them again and another worker takes them (and records the event, for a duplicate). The pipeline's
content addressing makes a second run a duplicate, so no input is archived twice and none is lost.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from archive.access import Session
from archive.coordination import Coordinator
from archive.dates import parse_duration
from archive.errors import ConfigError
from archive import s3calls
from archive.errors import ArchiveError
from archive.inbox import Group, GroupChanged, Inbox, finish_group, open_group, open_inbox
from archive.ingest.discover import Limits
from archive.settings import Settings


def seconds(duration: str) -> float:
    return parse_duration(duration).nominal_seconds()


class Work:
    """The services a worker process uses, opened once."""

    def __init__(self, settings: Settings) -> None:
        from archive.services import open_archive, services_for

        self.settings = settings
        services = services_for(open_archive(settings))
        self.archive, self.index, self.retention = services.archive, services.index, services.retention
        self.ingestor, self.identities = services.ingestor, services.identities
        self._coordinator: Coordinator | None = None
        self._inboxes: dict[str, Inbox] = {}
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="inbox")  # kept: a thread start costs a GIL hand-off
        self._integrator: _Integrator | None = None
        client = getattr(self.archive.vault.store, "client", None)
        if client is not None:
            s3calls.count(client)

    @property
    def coordinator(self) -> Coordinator:
        if self._coordinator is None:
            if not self.settings.redis_url:
                raise ConfigError("workers need Redis for claims: set ARCHIVE_REDIS_URL (the broker is not Redis)",
                                  variable="ARCHIVE_REDIS_URL")
            self._coordinator = Coordinator(self.settings.redis_url)
        return self._coordinator

    def inbox(self, url: str) -> Inbox:
        if url not in self._inboxes:
            if url not in self.settings.inboxes:
                raise ConfigError(f"{url!r} is not one of ARCHIVE_INBOX ({', '.join(self.settings.inboxes) or 'none'})",
                                  variable="ARCHIVE_INBOX")
            self._inboxes[url] = open_inbox(url, self.settings)
            if getattr(self._inboxes[url], "client", None) is not None:
                s3calls.count(self._inboxes[url].client)
        return self._inboxes[url]

    def report(self, counts: dict[str, int] | None = None) -> None:
        """Add what this task did to the shared counters: ``counts`` and the S3 requests it sent."""
        counts = {**(counts or {}), **{f"s3.{op}": n for op, n in s3calls.take().items()}}
        try:
            self.coordinator.count_many(counts)
        except ArchiveError:
            pass  # counters are for operators; losing some never fails the work

    def session(self, actor: str | None = None) -> Session:
        return Session(self.archive.audit, self.identities, actor or self.settings.worker_actor, stage=True)

    # --- inboxes ---------------------------------------------------------------------------------------

    def scan(self) -> list[tuple[str, list[dict]]]:
        """(inbox, groups) batches to queue now: groups settled, neither queued nor claimed already, and
        not rejected before with the same files; each batch within ``ARCHIVE_BATCH_INPUTS`` groups and
        ``ARCHIVE_BATCH_BYTES`` (a group larger than that goes alone)."""
        settle = seconds(self.settings.inbox_settle)
        requeue = max(seconds(self.settings.requeue_after), seconds(self.settings.claim_ttl))
        out = []
        for url in self.settings.inboxes:
            inbox = self.inbox(url)
            marked = set(inbox.marked())  # listed before the groups: a marker whose group is gone is finished
            groups = list(inbox.groups())
            present = {g.id for g in groups}
            for gid in marked - present:  # a worker died after moving every file, before dropping its marker
                inbox.drop_marker(gid)
            ready = [g for g in groups if inbox.ready(g, settle)]
            chosen = [ready[i] for i in
                      self.coordinator.select_new([(f"{url}|{g.id}", g.signature) for g in ready], requeue)]
            batch: list[dict] = []
            size = 0
            for g in chosen:
                if batch and (len(batch) >= self.settings.batch_inputs or size + g.size > self.settings.batch_bytes):
                    out.append((url, batch))
                    batch, size = [], 0
                batch.append(g.to_doc(marked=g.id in marked))
                size += g.size
            if batch:
                out.append((url, batch))
        self.report()
        return out

    def ingest(self, url: str, gid: str) -> dict:
        """Archive one inbox group, listed now (an API upload, a message from before batches). Returns
        {"status": …, "outcomes": […]}."""
        group = self.inbox(url).group(gid)
        if group is None:
            return {"status": "gone", "outcomes": []}  # finished by a worker whose claim lapsed, or forged
        return self.ingest_batch(url, [group.to_doc(marked=True)])["groups"].get(
            gid, {"status": "gone", "outcomes": []})

    def ingest_batch(self, url: str, docs: list[dict]) -> dict:
        """Claim, archive and finish a batch of inbox groups (as :meth:`scan` queued them). Returns
        {"status": "done", "groups": {group id: {"status": …, "outcomes": […]}}}: a group is ``done``,
        ``claimed-elsewhere``, ``changed`` (a file gone or replaced since the scan: left for the next one)
        or ``gone`` (its message names nothing in this inbox)."""
        inbox = self.inbox(url)
        groups: list[Group] = []
        result: dict[str, dict] = {}
        for doc in docs:
            group = inbox.adopt(doc)
            if group is None:
                result[str(doc.get("id") if isinstance(doc, dict) else doc)] = {"status": "gone", "outcomes": []}
            elif group.id not in result:
                groups.append(group)
                result[group.id] = {"status": "claimed-elsewhere", "outcomes": []}
        marked = {d["id"] for d in docs if isinstance(d, dict) and d.get("marked")}
        keys = {g.id: f"{url}|{g.id}" for g in groups}
        try:
            with self.coordinator.claim_many(list(keys.values()), seconds(self.settings.claim_ttl)) as leases:
                mine = [g for g in groups if keys[g.id] in leases]
                if mine:
                    self._archive(inbox, mine, marked, result, leases, keys)
            if any(r["status"] == "done" for r in result.values()):
                self.integrate_soon()
        finally:
            self.report()
        return {"status": "done", "groups": result}

    def integrate_audit(self) -> int | None:
        """Append the workers' staged audit events to the log (:meth:`AuditLog.integrate`) until none are
        left, unless another worker is doing it — then this costs one Redis round trip and returns None.
        Returns the events integrated. A failure here fails nothing: the events are staged, durably, for
        the next integrator."""
        total = 0
        try:
            with self.coordinator.claim("audit-integrator", seconds(self.settings.claim_ttl)) as lease:
                if lease is None:
                    return None
                while n := self.archive.audit.integrate(pool=self._pool):
                    total += n
        except ArchiveError:
            pass
        return total

    def integrate_soon(self) -> None:
        """Have this process's integrator thread integrate what was just staged, while the task slot goes
        on to its next task (the events are recorded already: staging is durable)."""
        if self._integrator is None or not self._integrator.is_alive():
            self._integrator = _Integrator(self, seconds(self.settings.audit_integrate_interval))
            self._integrator.start()
        self._integrator.wake.set()

    def _archive(self, inbox: Inbox, groups: list[Group], marked: set[str], result: dict, leases, keys) -> None:
        self.retention.refresh()
        limits = Limits.of(self.settings)
        pool = self._pool
        with tempfile.TemporaryDirectory(prefix="archive-inbox-") as scratch:
            def fetch(item: tuple[int, Group]):
                n, group = item
                try:
                    return open_group(inbox, group, limits, Path(scratch) / str(n), marked=group.id in marked)
                except GroupChanged:
                    return None

            opened = list(pool.map(fetch, enumerate(groups)))
            taken = [(g, found) for g, found in zip(groups, opened) if found is not None]
            for g, found in zip(groups, opened):
                if found is None:  # left for the next scan, which lists it as it is now
                    result[g.id] = {"status": "changed", "outcomes": []}
            leases.release([keys[g.id] for g, found in zip(groups, opened) if found is None])
            targets = [{"inbox": inbox.url, "input": g.id, "worker": self.worker} for g, _ in taken]
            inputs = [f for _, found in taken for f in found]

            def do():
                summary = self.ingestor.run_found(inputs) if inputs else None
                return summary.outcomes if summary else []

            outcomes = iter(self.session().run_each("ingest", lambda: _targets(do(), taken, targets),
                                                    targets=targets))
            per_group = [[next(outcomes) for _ in found] for _, found in taken]
            # only now, the events recorded: killed before this, the worker leaves the files for the next
            archived = [{n for f, o in zip(found, done) if o.status in ("archived", "duplicate") for n in f.files}
                        for (_, found), done in zip(taken, per_group)]
            list(pool.map(lambda a: finish_group(inbox, a[0][0], a[1]), zip(taken, archived)))
        counts: dict[str, int] = {}
        for (g, _), done in zip(taken, per_group):
            for o in done:
                counts[o.status] = counts.get(o.status, 0) + 1
            if any(o.status in ("rejected", "conflict") for o in done):
                self.coordinator.add_rejected(keys[g.id], g.signature)
            result[g.id] = {"status": "done", "outcomes": [o.__dict__ for o in done]}
        self.report(counts)

    # --- sweeps ----------------------------------------------------------------------------------------

    def fixity(self, *, limit: int | None = None, record_ids: list[str] | None = None,
               actor: str | None = None) -> dict:
        from archive import fixity

        self.retention.refresh()
        target = {"records": record_ids} if record_ids else {"sweep": "all" if limit is None else f"first {limit}"}

        def do() -> dict:
            summary = fixity.sweep(self.retention, audit_retention=parse_duration(self.settings.audit_retention),
                                   record_ids=record_ids, limit=limit)
            failed = [f["record_id"] for f in summary["failed"]]
            target.update({"records_checked": summary["records"], **({"records": failed} if failed else {})})
            return summary

        summary = self.session(actor).run("fixity", do, target=target)
        self.index.flush()
        return summary

    def disposition(self, *, actor: str | None = None, dispose: bool = False) -> dict:
        """Plan disposition (and carry it out when ``dispose``): records past their date, not held,
        whose policy says delete."""
        self.retention.refresh()
        plans = self.session(actor).run("disposition-plan", self.retention.plan, target={"sweep": "due"})
        due = [p for p in plans if p.action == "delete"]
        result = {"planned": len(plans), "due": len(due), "disposed": 0}
        if dispose and due:
            keys = self.archive.keys
            signer = keys.signer() if hasattr(keys, "signer") else None
            certificates = self.session(actor).run(
                "disposition", lambda: self.retention.dispose(due, by=actor or self.settings.worker_actor,
                                                              signer=signer),
                target={"records": [p.record_id for p in due]})
            result["disposed"] = len(certificates)
        self.index.flush()
        return result

    def reindex(self, *, actor: str | None = None) -> int:
        self.retention.refresh()
        return self.session(actor).run("reindex", self.retention.rebuild_index, target={"index": "all"})

    def event(self, kind: str, *, actor: str, **fields) -> dict:
        self.retention.refresh()
        return self.session(actor).run("retention-event", lambda: self.retention.add_event(kind, by=actor, **fields),
                                       target={"event": kind, **{k: v for k, v in fields.items() if v}})

    def hold(self, case: str, records: list[str], *, actor: str, reason: str | None) -> dict:
        self.retention.refresh()
        return self.session(actor).run(
            "hold", lambda: self.retention.place_hold(case, records, by=actor, reason=reason),
            target={"records": records}, case=case, reason=reason)

    def release(self, case: str, *, actor: str, approval: str, reason: str | None) -> list[str]:
        self.retention.refresh()
        return self.session(actor).run(
            "hold", lambda: self.retention.release_hold(case, by=actor, approval=approval, reason=reason),
            target={"release": case, "approval": approval}, case=case, reason=reason)


class _Integrator(threading.Thread):
    """A worker process's integrator: woken after each task that staged events, it becomes the
    deployment's integrator if no other process is (the Redis lease) and drains what is staged. A process
    that staged while another held the lease tries again after ``interval`` (that one may have listed
    before this one's events were staged); the beat's ``archive.integrate_audit`` is the last resort."""

    def __init__(self, work: Work, interval: float) -> None:
        super().__init__(daemon=True, name="audit integrator")
        self.work, self.interval = work, interval
        self.wake = threading.Event()

    def run(self) -> None:
        owed = False  # events staged here may still wait (another process held the lease)
        while True:
            if not self.wake.wait(self.interval) and not owed:
                continue
            self.wake.clear()
            try:
                owed = self.work.integrate_audit() is None
                self.work.report()  # the requests it sent
            except Exception:  # noqa: BLE001 - the thread must outlive any failure; the events wait, staged
                owed = True


def _targets(outcomes: list, taken: list, targets: list[dict]) -> list:
    """Name in each group's audit event what its inputs became (the records, and how many of each)."""
    it = iter(outcomes)
    for (_, found), target in zip(taken, targets):
        done = [next(it) for _ in found]
        target["records"] = sorted({r for o in done for r in o.record_ids})
        target.update({s: sum(o.status == s for o in done) for s in ("archived", "duplicate", "conflict", "rejected")})
    return outcomes
