"""What the Celery workers do, as library calls (``workers/tasks.py`` only forwards to these).

One :class:`Work` per worker process holds the archive's services, opened once from settings. Every
operation acts as ``ARCHIVE_WORKER_ACTOR`` (or the identity that asked for it) through
:class:`archive.access.Session`, so the audit trail records it like a CLI command; and every task starts
from the store's current state (:meth:`Retention.refresh`), since other workers change it.

Inbox flow: :meth:`scan` lists each inbox and hands back the groups to queue (settled, not queued
recently, not already rejected as they are); :meth:`ingest` claims one group (a lease in Redis, renewed
while it works), archives it through the pipeline and moves its files to the done area only after
verified archival and after the audit event naming its records is recorded. A worker that dies leaves
its claim to lapse and its group in the inbox; the next scan queues it again and another worker takes it
(and records the event, for a duplicate). The pipeline's content addressing makes a second run a
duplicate, so no input is archived twice and none is lost.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from archive.access import Session
from archive.coordination import Coordinator
from archive.dates import parse_duration
from archive.errors import ConfigError
from archive.inbox import Inbox, archive_group, open_inbox
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
        return self._inboxes[url]

    def session(self, actor: str | None = None) -> Session:
        return Session(self.archive.audit, self.identities, actor or self.settings.worker_actor)

    # --- inboxes ---------------------------------------------------------------------------------------

    def scan(self) -> list[tuple[str, str]]:
        """(inbox, group) pairs to queue now: settled, not queued within the claim period, and not
        rejected before with the same files."""
        settle = seconds(self.settings.inbox_settle)
        requeue = seconds(self.settings.claim_ttl)
        out = []
        for url in self.settings.inboxes:
            inbox = self.inbox(url)
            marked = inbox.marked()  # listed before the groups: a marker whose group is gone is finished
            groups = list(inbox.groups())
            present = {g.id for g in groups}
            for gid in marked:
                if gid not in present:  # a worker died after moving every file, before dropping its marker
                    inbox.drop_marker(gid)
            ready = [g for g in groups if inbox.ready(g, settle)]
            chosen = self.coordinator.select_new([(f"{url}|{g.id}", g.signature) for g in ready], requeue)
            out += [(url, ready[i].id) for i in chosen]
        return out

    def ingest(self, url: str, gid: str) -> dict:
        """Claim, archive and finish one inbox group. Returns {"status": …, "outcomes": […]}."""
        inbox = self.inbox(url)
        key = f"{url}|{gid}"
        with self.coordinator.claim(key, seconds(self.settings.claim_ttl)) as lease:
            if lease is None:
                return {"status": "claimed-elsewhere", "outcomes": []}
            group = inbox.group(gid)
            if group is None:
                self.coordinator.unqueue(key)
                return {"status": "gone", "outcomes": []}  # finished by a worker whose claim lapsed
            self.retention.refresh()
            target = {"inbox": url, "input": gid, "worker": self.worker}

            def do() -> tuple[list, Callable[[], None]]:
                with tempfile.TemporaryDirectory(prefix="archive-inbox-") as scratch:
                    outcomes, finish = archive_group(inbox, group, self.ingestor, Limits.of(self.settings),
                                                     Path(scratch))
                # the audit event names what was archived (recorded when do() returns)
                target["records"] = sorted({r for o in outcomes for r in o.record_ids})
                target.update({s: sum(o.status == s for o in outcomes)
                               for s in ("archived", "duplicate", "conflict", "rejected")})
                return outcomes, finish

            outcomes, finish = self.session().run("ingest", do, target=target)
            finish()  # only now: killed before this, the worker leaves the files for the next to take
            for o in outcomes:
                self.coordinator.count(o.status)
            if any(o.status in ("rejected", "conflict") for o in outcomes):
                self.coordinator.add_rejected(key, group.signature)
            self.coordinator.unqueue(key)
            return {"status": "done", "outcomes": [o.__dict__ for o in outcomes]}

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
