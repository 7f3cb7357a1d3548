"""The Celery app, configured from settings: Redis broker by default, RabbitMQ by URL.

Tasks are acknowledged after they finish (``acks_late``) and given back when a worker dies
(``reject_on_worker_lost``), one at a time per process (prefetch 1), JSON only. The beat schedules the
inbox scan, the fixity sweep and the disposition sweep at the intervals the settings give.

A worker that seems stuck can say where: ``kill -USR1 <worker pid>`` logs the main process's threads
(Celery's own handler), ``kill -USR2 <pool process pid>`` writes every thread's stack of that pool
process to the worker's log.
"""

from __future__ import annotations

import faulthandler
import signal
import sys

from celery import Celery
from celery.signals import worker_process_init

from archive.settings import Settings
from archive.work import seconds

QUEUE = "archive"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("archive", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker restart is waited out, not fatal
        worker_send_task_events=False,
        beat_schedule={
            "scan-inboxes": {"task": "archive.scan_inboxes", "schedule": seconds(settings.scan_interval)},
            "integrate-audit": {"task": "archive.integrate_audit",
                                "schedule": seconds(settings.audit_integrate_interval)},
            "fixity-sweep": {"task": "archive.fixity_sweep", "schedule": seconds(settings.fixity_interval)},
            "disposition-sweep": {"task": "archive.disposition_sweep",
                                  "schedule": seconds(settings.disposition_interval)},
        },
    )
    return app


app = make_app()


@worker_process_init.connect
def _stacks_on_request(**_) -> None:
    """SIGUSR2 in a pool process: every thread's stack to the worker's log (the process's own stderr)."""
    if sys.__stderr__ is not None:
        faulthandler.register(signal.SIGUSR2, file=sys.__stderr__, all_threads=True, chain=False)
