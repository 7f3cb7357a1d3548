"""The ingest journal: a write-ahead list of the records a run is about to commit, so that a run killed
(``kill -9``, a power cut) between committing records and recording them is finished by the next run.

A record is committed once its manifest is sealed with its receipt (:mod:`archive.ingest.pipeline`);
its index entry is written a moment later, and the run's ``ingest`` audit event — the one naming every
record the run archived — only when the run ends. A run that dies in between leaves records in the
store, the system of record, that the index does not show and no audit event names. Before each group
commit the run appends the group's record ids to its journal; the next ``archive ingest`` (or anything
calling :meth:`Journals.dead`) finds the journals of dead runs, indexes each of their records that was
committed, names them in its own audit event as ``recovered``, and deletes those journals once that
event is recorded.

Why a journal rather than comparing the store with the index: that comparison lists every record in
the store (a million names is minutes of S3 LIST calls) and every index entry, at every start, to find
what is normally nothing; and the index cannot tell which records lack an audit event. The journal
holds only what a dead run was committing, costs one small append and ``fsync`` per group commit (up to
128 records), and an empty directory to list at start.

Files: ``$ARCHIVE_HOME/ingest-journal/<run id>.journal``, one JSON line per group commit:
``{"records": [...]}``. A run holds an exclusive ``flock`` on its journal, taken before the file gets its
name; the kernel releases it when the process ends, however it ends, so a journal whose lock can be
taken belongs to a run that is gone. (The journal is local to the machine running the ingest; a
crashed worker needs none: its inputs stay in the inbox until their audit event is recorded, and are
taken again.)
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

SUFFIX = ".journal"


class Journal:
    """The live run's journal (held locked until :meth:`close`)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.run_id = path.name[: -len(SUFFIX)]
        self._fd = fd

    def add(self, record_ids: list[str]) -> None:
        """Record, durably, that these records are about to be committed (before the commit starts)."""
        if record_ids and self._fd >= 0:
            os.write(self._fd, (json.dumps({"records": record_ids}) + "\n").encode())
            os.fsync(self._fd)

    def close(self) -> None:
        """The run's records are indexed and its audit event is recorded: the journal is done."""
        if self._fd >= 0:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1


@dataclass
class Dead:
    """The journals of runs that are gone, locked by this process until :meth:`close`."""

    records: list[str] = field(default_factory=list)  # every record id they list, in order, once each
    runs: list[str] = field(default_factory=list)
    _held: list[tuple[Path, int]] = field(default_factory=list)

    def close(self) -> None:
        """Their records are indexed and named in a recorded audit event: delete the journals."""
        for path, fd in self._held:
            path.unlink(missing_ok=True)
            os.close(fd)
        self._held.clear()


class Journals:
    """The journal directory of one archive home."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def start(self) -> Journal:
        """A new journal for this run, locked before it is visible under its name."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}-{secrets.token_hex(4)}"
        temporary = self.directory / f".{run_id}.new"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = self.directory / f"{run_id}{SUFFIX}"
        os.rename(temporary, path)
        return Journal(path, fd)

    def dead(self) -> Dead:
        """The journals whose runs are gone (their lock is free), now locked by this process. Journals
        of runs still going are left alone."""
        found = Dead()
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(SUFFIX))
        except FileNotFoundError:
            return found
        seen: set[str] = set()
        for name in names:
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
            except FileNotFoundError:
                continue  # recovered and deleted by another run meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live run
            if not path.exists():  # deleted by the run that held it just before we took the lock
                os.close(fd)
                continue
            with os.fdopen(os.dup(fd), "rb") as f:
                for line in f:
                    try:
                        ids = json.loads(line)["records"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by the crash: its group never started to commit
                    for rid in ids:
                        if isinstance(rid, str) and rid not in seen:
                            seen.add(rid)
                            found.records.append(rid)
            found.runs.append(name[: -len(SUFFIX)])
            found._held.append((path, fd))
        return found
