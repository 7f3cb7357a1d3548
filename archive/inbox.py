"""Inboxes: where recorders and chat platforms drop inputs for the workers — an S3 bucket/prefix or a
local directory (``ARCHIVE_INBOX``).

An inbox is read as **groups**: the files of one directory sharing a stem (``call-17.wav`` with
``call-17.json`` and ``call-17.txt``; a chat ``c-9.json`` alone), exactly as ``archive ingest`` groups a
directory. A group is taken only once its newest file is ``ARCHIVE_INBOX_SETTLE`` old, so a recording is
not taken before its sidecar has arrived. Names starting with ``.`` are skipped (uploads in progress).

Inputs are never changed at the source. After verified archival — and once the ingest audit event naming
their records is recorded — a group's files move to the ``done`` area beside the inbox
(``s3://bucket/processed/…`` for ``s3://bucket/inbox``; ``…/processed`` beside a directory) or are deleted
(``ARCHIVE_INBOX_DONE=delete``) — never before, so the inbox is the workers' write-ahead journal: a worker
killed at any point leaves the files to be taken again. Rejected inputs, and conflicting deliveries, stay
where they are; ``archive quarantine list`` says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from archive.errors import ArchiveError, ConfigError, ObjectNotFound, StorageError


class TransientInboxError(StorageError):
    """The inbox could not be reached or answered with a server error: worth retrying."""

    code = "inbox_unavailable"
    transient = True


class Replaced(TransientInboxError):
    """A conditional read found another version of the file than the one listed."""


class GroupChanged(ArchiveError):
    """A file of a group is gone or was replaced since the scan listed it: the group is left for the next
    scan, which lists it as it is now (a worker whose claim lapsed may be finishing it)."""

    code = "inbox_group_changed"


@dataclass(frozen=True)
class Item:
    """One file of an inbox group."""

    name: str  # its file name
    key: str  # S3 key, or absolute path
    size: int
    modified: float  # epoch seconds
    etag: str


@dataclass(frozen=True)
class Group:
    """The files of one input: one directory, one stem."""

    inbox: str
    id: str  # the directory (relative to the inbox) and the stem: "calls/2024/call-17"
    items: tuple[Item, ...]

    @property
    def newest(self) -> float:
        return max(i.modified for i in self.items)

    @property
    def signature(self) -> str:
        """Changes whenever a file of the group is added, removed or replaced."""
        return hashlib.sha256("\n".join(f"{i.name}\0{i.etag}" for i in self.items).encode()).hexdigest()[:32]

    @property
    def size(self) -> int:
        return sum(i.size for i in self.items)

    def to_doc(self, marked: bool = False) -> dict:
        """The group as a task message carries it: what the scan listed, so the worker need not list
        again. ``marked``: the scan saw a finishing marker for it."""
        return {"id": self.id, "files": [[i.name, i.size, i.modified, i.etag] for i in self.items],
                **({"marked": True} if marked else {})}


def group_id(relative: str) -> str:
    path = PurePosixPath(relative)
    stem = os.path.splitext(path.name)[0]
    return str(path.parent / stem) if str(path.parent) != "." else stem


def _grouped(inbox: str, items: Iterator[tuple[str, Item]]) -> Iterator[Group]:
    groups: dict[str, list[Item]] = {}
    for relative, item in items:
        if item.name.startswith(".") or not item.name:
            continue
        groups.setdefault(group_id(relative), []).append(item)
    for gid in sorted(groups):
        yield Group(inbox, gid, tuple(sorted(groups[gid], key=lambda i: i.name)))


class Inbox:
    """The contract: list groups, look one up again, fetch its files, finish it."""

    url: str

    def groups(self) -> Iterator[Group]:
        raise NotImplementedError

    def group(self, gid: str) -> Group | None:
        raise NotImplementedError

    def adopt(self, doc: dict) -> Group | None:
        """The group a task message describes (:meth:`Group.to_doc`), or None when the message names
        nothing inside this inbox. A message comes through the broker: its names are checked, never
        trusted — a forged one cannot make a worker read or move a file outside the inbox."""
        return self.group(doc["id"]) if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None

    def fetch(self, group: Group, scratch: Path) -> Path:
        """A local directory holding the group's files under their own names."""
        raise NotImplementedError

    def finish(self, group: Group, names: set[str]) -> None:
        """Move the named files of the group to the done area (or delete them)."""
        raise NotImplementedError

    def origin(self, group: Group, name: str) -> str:
        """How an input is named in outcomes, the quarantine list and the audit trail."""
        raise NotImplementedError

    # A group of several files is finished file by file; a worker dying halfway would leave, say, a sidecar
    # whose recording already moved, which alone would be refused. So before moving, the worker writes a
    # marker naming the files that were archived (MARKERS, a hidden folder inside the inbox), and the next
    # worker to take the group finishes moving them instead of ingesting what is left.
    MARKERS = ".archive-finishing"

    def read_marker(self, gid: str) -> dict | None:
        raise NotImplementedError

    def write_marker(self, gid: str, doc: dict) -> None:
        raise NotImplementedError

    def drop_marker(self, gid: str) -> None:
        raise NotImplementedError

    def marked(self) -> list[str]:
        """The groups that have a marker (usually none)."""
        raise NotImplementedError

    def ready(self, group: Group, settle: float, now: float | None = None) -> bool:
        return (now or time.time()) - group.newest >= settle


class DirectoryInbox(Inbox):
    def __init__(self, path: str | Path, done: str = "processed") -> None:
        self.root = Path(path)
        self.url = str(self.root)
        self.done = None if done == "delete" else self.root.parent / done
        if not self.root.is_dir():
            raise ConfigError(f"ARCHIVE_INBOX: {self.root} is not a directory", variable="ARCHIVE_INBOX")

    def _items(self, directory: Path) -> Iterator[tuple[str, Item]]:
        for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and (self.done is None or here / d != self.done))
            for name in sorted(filenames):
                path = here / name
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue  # moved away meanwhile
                yield (str(path.relative_to(self.root)),
                       Item(name, str(path), st.st_size, st.st_mtime, f"{st.st_size}-{st.st_mtime_ns}"))

    def groups(self) -> Iterator[Group]:
        yield from _grouped(self.url, self._items(self.root))

    def group(self, gid: str) -> Group | None:
        directory = (self.root / gid).parent
        stem = PurePosixPath(gid).name
        # a group id comes back through the broker: it must name a directory inside the inbox
        if not directory.resolve().is_relative_to(self.root.resolve()) or not directory.is_dir():
            return None
        items = []
        for name in sorted(os.listdir(directory)):
            path = directory / name
            if os.path.splitext(name)[0] == stem and not name.startswith(".") and path.is_file():
                st = path.lstat()
                items.append(Item(name, str(path), st.st_size, st.st_mtime, f"{st.st_size}-{st.st_mtime_ns}"))
        return Group(self.url, gid, tuple(items)) if items else None

    def fetch(self, group: Group, scratch: Path) -> Path:
        return Path(group.items[0].key).parent  # already local: read in place

    def finish(self, group: Group, names: set[str]) -> None:
        for item in group.items:
            if item.name not in names:
                continue
            source = Path(item.key)
            if self.done is None:
                source.unlink(missing_ok=True)
                continue
            target = self.done / source.relative_to(self.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, target)
            except FileNotFoundError:
                pass  # finished already (a retry)
            except OSError:  # another filesystem: copy, make it durable, then remove the source
                shutil.copyfile(source, target)
                with open(target, "rb") as f:
                    os.fsync(f.fileno())
                source.unlink(missing_ok=True)

    def origin(self, group: Group, name: str) -> str:
        return str((self.root / group.id).parent / name)

    def _marker(self, gid: str) -> Path:
        return self.root / self.MARKERS / (hashlib.sha256(gid.encode()).hexdigest() + ".json")

    def read_marker(self, gid: str) -> dict | None:
        try:
            return json.loads(self._marker(gid).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def write_marker(self, gid: str, doc: dict) -> None:
        path = self._marker(gid)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def drop_marker(self, gid: str) -> None:
        self._marker(gid).unlink(missing_ok=True)

    def marked(self) -> list[str]:
        out = []
        for path in sorted((self.root / self.MARKERS).glob("*.json")):
            try:
                out.append(json.loads(path.read_text())["group"])
            except (OSError, ValueError, KeyError):
                continue
        return out


class S3Inbox(Inbox):
    def __init__(self, url: str, client, done: str = "processed") -> None:
        parsed = urlparse(url)
        self.url = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/") + "/" if parsed.path.strip("/") else ""
        parent = str(PurePosixPath(self.prefix.rstrip("/")).parent) if self.prefix else ""
        parent = "" if parent in (".", "") else parent + "/"
        self.done = None if done == "delete" else f"{parent}{done}/"
        self.client = client

    def _call(self, what: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(f"{self.url}: {what}: no such object") from e
            if code == "PreconditionFailed" or status == 412:  # replaced since the listing
                raise Replaced(f"{self.url}: {what}: {code or status}") from e
            if status >= 500 or code in ("SlowDown", "RequestTimeout"):
                raise TransientInboxError(f"{self.url}: {what}: {code or status}") from e
            raise ArchiveError(f"{self.url}: {what} refused: {code} {e}") from e
        except BotoCoreError as e:
            raise TransientInboxError(f"{self.url}: {what}: {e}") from e

    def _list(self, prefix: str) -> Iterator[tuple[str, Item]]:
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self._call("list", self.client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if self.done and key.startswith(self.done) or key.endswith("/"):
                    continue
                relative = key[len(self.prefix):]
                if any(segment.startswith(".") for segment in relative.split("/")[:-1]):
                    continue  # hidden folders (the finishing markers) are not inputs
                yield relative, Item(PurePosixPath(relative).name, key, obj["Size"],
                                     obj["LastModified"].timestamp(), obj.get("ETag", "").strip('"'))
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def groups(self) -> Iterator[Group]:
        yield from _grouped(self.url, self._list(self.prefix))

    def group(self, gid: str) -> Group | None:
        found = [(rel, item) for rel, item in self._list(self.prefix + gid) if group_id(rel) == gid]
        groups = list(_grouped(self.url, iter(found)))
        return groups[0] if groups and groups[0].id == gid else None

    def adopt(self, doc: dict) -> Group | None:
        """The group as the scan listed it, without listing again: its keys follow from its id and its
        file names, which must name files of that group (one stem, no folders, no hidden names)."""
        try:
            gid, files = doc["id"], doc["files"]
            parent = str(PurePosixPath(gid).parent)
            base = self.prefix + ("" if parent == "." else parent + "/")
            items = []
            for name, size, modified, etag in files:
                if not (isinstance(name, str) and isinstance(etag, str) and isinstance(size, int)
                        and isinstance(modified, (int, float))):
                    return None
                relative = base[len(self.prefix):] + name
                if ("/" in name or name.startswith(".") or group_id(relative) != gid
                        or any(s in ("", ".", "..") or s.startswith(".") for s in relative.split("/"))
                        or self.done and (base + name).startswith(self.done)):
                    return None
                items.append(Item(name, base + name, size, float(modified), etag))
        except (KeyError, TypeError, ValueError):
            return None
        if not items or len({i.name for i in items}) != len(items):
            return None
        return Group(self.url, gid, tuple(sorted(items, key=lambda i: i.name)))

    def fetch(self, group: Group, scratch: Path) -> Path:
        scratch.mkdir(parents=True, exist_ok=True)
        for item in group.items:
            target = scratch / item.name
            if target.resolve().parent != scratch.resolve():
                continue  # a name that could escape (the ingest rejects it by name)
            try:
                body = self._call(f"get {item.key}", self.client.get_object, Bucket=self.bucket, Key=item.key,
                                  IfMatch=item.etag) if item.etag else \
                    self._call(f"get {item.key}", self.client.get_object, Bucket=self.bucket, Key=item.key)
                with open(target, "wb") as f:
                    for chunk in body["Body"].iter_chunks(1024 * 1024):
                        f.write(chunk)
            except ObjectNotFound:
                raise GroupChanged(f"{item.key}: gone since the inbox was listed") from None
            except Replaced:
                raise GroupChanged(f"{item.key}: replaced since the inbox was listed") from None
        return scratch

    def finish(self, group: Group, names: set[str]) -> None:
        for item in group.items:
            if item.name not in names:
                continue
            if self.done is not None:
                target = self.done + item.key[len(self.prefix):]
                source = {"Bucket": self.bucket, "Key": item.key}
                try:
                    if item.size < 5 * 1024**3:  # one CopyObject; larger ones need a multipart copy
                        self._call(f"copy {item.key}", self.client.copy_object, CopySource=source,
                                   Bucket=self.bucket, Key=target)
                    else:
                        self._call(f"copy {item.key}", self.client.copy, CopySource=source, Bucket=self.bucket,
                                   Key=target)
                except ObjectNotFound:
                    continue  # finished already
            self._call(f"delete {item.key}", self.client.delete_object, Bucket=self.bucket, Key=item.key)

    def _marker(self, gid: str) -> str:
        return f"{self.prefix}{self.MARKERS}/{hashlib.sha256(gid.encode()).hexdigest()}.json"

    def read_marker(self, gid: str) -> dict | None:
        try:
            body = self._call("read marker", self.client.get_object, Bucket=self.bucket, Key=self._marker(gid))
            return json.loads(body["Body"].read())
        except (ObjectNotFound, ValueError):
            return None

    def write_marker(self, gid: str, doc: dict) -> None:
        self._call("write marker", self.client.put_object, Bucket=self.bucket, Key=self._marker(gid),
                   Body=json.dumps(doc).encode())

    def drop_marker(self, gid: str) -> None:
        self._call("drop marker", self.client.delete_object, Bucket=self.bucket, Key=self._marker(gid))

    def marked(self) -> list[str]:
        page = self._call("list markers", self.client.list_objects_v2, Bucket=self.bucket,
                          Prefix=f"{self.prefix}{self.MARKERS}/")
        out = []
        for obj in page.get("Contents", []):
            try:
                body = self._call("read marker", self.client.get_object, Bucket=self.bucket, Key=obj["Key"])
                out.append(json.loads(body["Body"].read())["group"])
            except (ObjectNotFound, ValueError, KeyError):
                continue
        return out

    def origin(self, group: Group, name: str) -> str:
        parent = str(PurePosixPath(group.id).parent)
        return f"s3://{self.bucket}/{self.prefix}{'' if parent == '.' else parent + '/'}{name}"


def s3_client(settings):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                        aws_access_key_id=settings.s3_access_key_id,
                        aws_secret_access_key=settings.s3_secret_access_key,
                        config=Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32,
                                      s3={"addressing_style": "path"} if settings.s3_endpoint_url else {}))


def open_inbox(url: str, settings) -> Inbox:
    if url.startswith("s3://"):
        return S3Inbox(url, s3_client(settings), settings.inbox_done)
    return DirectoryInbox(url, settings.inbox_done)


def open_group(inbox: Inbox, group: Group, limits, scratch: Path, *, marked: bool = True) -> list:
    """Fetch a group's files and find its inputs (:class:`archive.ingest.discover.Found`, named by where
    they are in the inbox). ``marked``: the group may have a finishing marker (a worker died while moving
    it): then the files that worker had archived are moved first, and only the rest is taken. Raises
    GroupChanged when a file is gone or replaced since the listing, leaving everything as it was."""
    from archive.ingest.discover import _hostile
    from archive.ingest.discover import group as discover_group

    if marked:
        marker = inbox.read_marker(group.id)  # (a lone file may be what a dying worker left of a group)
        if marker is not None:  # a worker died while moving this group: finish what it had archived
            finishing = {i.name for i in group.items if marker.get("files", {}).get(i.name) == i.etag}
            if finishing:
                inbox.finish(group, finishing)
            inbox.drop_marker(group.id)
            group = Group(group.inbox, group.id, tuple(i for i in group.items if i.name not in finishing))
            if not group.items:
                return []
    directory = inbox.fetch(group, scratch)
    names = [i.name for i in group.items if _hostile(i.name) or os.path.lexists(directory / i.name)]
    prefix = str(directory).rstrip("/") + "/"
    out = []
    for found in discover_group(directory, names, limits):
        shown = found.origin[len(prefix):] if found.origin.startswith(prefix) else found.origin
        found.origin = inbox.origin(group, shown)
        found.rename = (prefix, inbox.origin(group, ""))  # reasons name it by where it is in the inbox
        out.append(found)
    return out


def finish_group(inbox: Inbox, group: Group, archived: set[str]) -> None:
    """Move (or delete) the named files of a group, now safely archived — to be called only once the
    ingest audit event naming their records is recorded: a worker that dies before leaves the files in
    the inbox, and the next worker to take them records the event (as a duplicate) and moves them. A
    group of several files is moved under a marker (see :attr:`Inbox.MARKERS`)."""
    if not archived:
        return
    several = len(group.items) > 1
    if several:
        inbox.write_marker(group.id, {"group": group.id,
                                      "files": {i.name: i.etag for i in group.items if i.name in archived}})
    inbox.finish(group, archived)
    if several:
        inbox.drop_marker(group.id)
