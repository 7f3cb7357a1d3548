"""Export jobs for the HTTP API: an evidence bundle is built in the background and downloaded when done.

A job is a directory under ``$ARCHIVE_HOME/exports/<id>/`` holding ``job.json`` (who asked, for which
case and why, which records, its state and progress) and, once done, ``bundle.zip``
(:func:`archive.export.export`, which writes under a temporary name and renames when complete, so a
download never sees half a bundle); both are mode 0600, in a directory of mode 0700. A job still ``running`` when the server starts again was interrupted
(its process is gone): it is marked ``failed`` and what it had written is removed (start it again).

Jobs run in one background thread each, inside the API process; the export itself records its
``export-bundle`` audit event, and every download is recorded by the API. (With several API processes
behind a balancer, ``exports/`` must be a shared directory, or exports go to a worker queue.)
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

from archive.errors import ArchiveError, InputError, ObjectNotFound
from archive.files import write_atomic

_ID_CHARS = set("0123456789abcdef-x")


def _alive(host: str | None, pid: int | None) -> bool:
    """Whether the process that runs a job is still there (another server process on this host)."""
    if host != socket.gethostname() or not pid:
        return host is not None and host != socket.gethostname()  # another host's: not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ExportJobs:
    def __init__(self, root: Path, services) -> None:
        self.root = Path(root)
        self.services = services
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for job in self.list():
            if job["state"] == "running" and not _alive(job.get("host"), job.get("pid")):
                self._update(job["id"], state="failed", error="interrupted: the server stopped during the export; "
                                                                "start it again", finished_at=_now())
                for tmp in (self.root / job["id"]).glob(".bundle.zip.*.tmp"):
                    tmp.unlink()

    def _path(self, job_id: str) -> Path:
        if not job_id.startswith("x-") or not set(job_id) <= _ID_CHARS or len(job_id) > 40:
            raise ObjectNotFound(f"no export {job_id!r}", export=job_id)
        return self.root / job_id

    def get(self, job_id: str) -> dict:
        try:
            return json.loads((self._path(job_id) / "job.json").read_text())
        except FileNotFoundError:
            raise ObjectNotFound(f"no export {job_id!r}", export=job_id) from None

    def list(self) -> list[dict]:
        jobs = []
        for d in self.root.iterdir() if self.root.exists() else []:
            try:
                jobs.append(json.loads((d / "job.json").read_text()))
            except (FileNotFoundError, NotADirectoryError, ValueError):
                continue
        return sorted(jobs, key=lambda j: j["created_at"], reverse=True)

    def _write(self, job: dict) -> None:
        # who asked, why and for which records: private (0600), and whole after a crash
        write_atomic(self.root / job["id"] / "job.json", json.dumps(job, indent=1).encode())

    def _update(self, job_id: str, **changes) -> dict:
        with self._lock:
            job = {**self.get(job_id), **changes}
            self._write(job)
            return job

    def bundle(self, job_id: str) -> Path:
        job = self.get(job_id)
        if job["state"] != "done":
            raise InputError(f"export {job_id} is {job['state']}, not done" +
                             (f": {job['error']}" if job.get("error") else ""), export=job_id)
        return self._path(job_id) / "bundle.zip"

    def start(self, ids: list[str], *, case: str, reason: str, actor: str, role: str) -> dict:
        """Create a job for ``ids`` and start building its bundle; returns the job (state ``running``)."""
        job_id = f"x-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(6)}"
        (self.root / job_id).mkdir(mode=0o700)
        job = {"id": job_id, "state": "running", "case": case, "reason": reason, "actor": actor, "records": ids,
               "host": socket.gethostname(), "pid": os.getpid(),
               "created_at": _now(), "finished_at": None, "done_bytes": 0, "total_bytes": None, "error": None}
        self._write(job)
        threading.Thread(target=self._run, args=(job_id, ids, case, reason, actor, role), daemon=True,
                         name=f"export-{job_id}").start()
        return job

    def _run(self, job_id: str, ids: list[str], case: str, reason: str, actor: str, role: str) -> None:
        from archive.export import export

        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = datetime.now(UTC).timestamp()
            if now - last[0] > 0.5:
                last[0] = now
                self._update(job_id, done_bytes=done, total_bytes=total)

        s = self.services
        try:
            s.retention.refresh()
            result = export(s.archive, s.retention, s.ingestor, ids, case=case, reason=reason, actor=actor,
                            role=role, out=self.root / job_id / "bundle.zip", split=None, progress=progress)
            self._update(job_id, state="done", finished_at=_now(), done_bytes=result.bytes,
                         total_bytes=result.bytes, files=result.files, bytes=result.bytes,
                         manifest_sha256=result.manifest_sha256, audit_seq=result.audit_seq,
                         size=(self.root / job_id / "bundle.zip").stat().st_size)
        except ArchiveError as e:
            self._update(job_id, state="failed", finished_at=_now(), error=f"[{e.code}] {e}")
        except Exception as e:  # a job must end in a state, whatever went wrong
            self._update(job_id, state="failed", finished_at=_now(), error=f"the export failed: {type(e).__name__}")
            raise
