"""Hostile inputs, made the way an attacker or a broken exporter would make them, for the CLI, the
workers and the API (tests/test_hostile_inputs.py), beside inputs that must still be archived.

Each case is one input (its files, by name) with what must happen to it: the code and a piece of the
reason it is quarantined with, or ``None`` for an input that must be archived. ``special`` files are
made on disk only (a FIFO, a socket, a symbolic link): an S3 inbox or an upload cannot hold them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tests.workerkit import wav_bytes

# What the hostile suite sets ARCHIVE_MAX_METADATA_BYTES to, so that "a chat too big to parse" is small
METADATA_LIMIT = 1024 * 1024


@dataclass
class Case:
    stem: str
    files: dict[str, bytes]  # name -> bytes
    code: str | None  # None: archived
    says: str = ""  # part of the reason
    special: str | None = None  # "fifo" | "socket" | "symlink": made on disk only (files is empty)
    interaction: str | None = None  # for archived ones: the interaction id to find the record by

    @property
    def origin_name(self) -> str:
        """The file the outcome is named by (the recording, for a recording with a sidecar)."""
        names = sorted(self.files) if self.files else [self.stem]
        media = [n for n in names if n.endswith(".wav")]
        return media[0] if media else names[0]


def chat(iid: str, **changes) -> dict:
    doc = {"schema": "archive-record/1", "source": {"system": "hostile-suite", "interaction_id": iid},
           "channel": "chat", "started_at": "2024-05-01T10:00:00Z", "ended_at": "2024-05-01T10:03:00Z",
           "participants": [{"role": "agent", "id": "a1", "name": "Zhou Min"}, {"role": "customer", "id": "c9"}],
           "messages": [{"at": "2024-05-01T10:00:00Z", "from": "c9", "text": f"question about {iid}"},
                        {"at": "2024-05-01T10:01:00Z", "from": "a1", "text": "this product is not a deposit"}]}
    doc.update(changes)
    return doc


def call_sidecar(iid: str, **changes) -> dict:
    doc = {"schema": "archive-record/1", "source": {"system": "hostile-suite", "interaction_id": iid},
           "channel": "phone", "direction": "inbound", "started_at": "2024-05-02T09:00:00+08:00",
           "participants": [{"role": "agent", "id": "1042"}, {"role": "customer", "id": "C-7"}]}
    doc.update(changes)
    return doc


def _json(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def _siprec(encoding: str | None, body_extra: str = "", doctype: str = "") -> bytes:
    declaration = f'<?xml version="1.0" encoding="{encoding}"?>' if encoding else '<?xml version="1.0"?>'
    return (f'{declaration}{doctype}<recording xmlns="urn:ietf:params:xml:ns:recording:1">'
            '<datamode>complete</datamode><session session_id="s-1"><start-time>2024-05-02T01:00:00Z</start-time>'
            f'</session>{body_extra}</recording>').encode()


_LAUGHS = ('<!DOCTYPE lolz [<!ENTITY lol "lol">' + "".join(
    f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10))
    + ']>')


def _email(headers: str, body: bytes = b"Please call me back.\r\n") -> bytes:
    return headers.encode() + b"\r\n" + body


_MAIL_HEAD = "From: Li Lei <li.lei@example.com>\r\nTo: support@bank.example\r\nSubject: {subject}\r\n" \
             "Date: {date}\r\nMessage-ID: <{iid}@example.com>\r\n"


def _deep_mime(levels: int) -> bytes:
    out = _MAIL_HEAD.format(subject="deep", date="Mon, 06 May 2024 10:00:00 +0000", iid="deep-mime").encode()
    for i in range(levels):
        out += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
    return out + b"Content-Type: text/plain\r\n\r\nhi\r\n"


def cases(*, with_special: bool = True) -> list[Case]:
    wav = wav_bytes(1.0, 4)  # 16 KB: small enough to be carried inside the manifest
    deep = b'{"schema": "archive-record/1", "source_fields": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    nested: dict = {}
    inner = nested
    for _ in range(40):  # deep for a record (over 32), shallow for the JSON reader (under 64)
        inner["x"] = {}
        inner = inner["x"]
    out = [
        # --- archived, beside the hostile ones
        Case("good-chat-1", {"good-chat-1.json": _json(chat("good-1"))}, None, interaction="good-1"),
        Case("good-chat-2", {"good-chat-2.json": _json(chat("good-2"))}, None, interaction="good-2"),
        Case("good-call", {"good-call.wav": wav, "good-call.json": _json(call_sidecar("good-call"))}, None,
             interaction="good-call"),
        Case("good-mail", {"good-mail.eml": _email(_MAIL_HEAD.format(
            subject="refund", date="Mon, 06 May 2024 10:00:00 +0000", iid="good-mail"))}, None,
             interaction="good-mail"),
        # a NUL in message text is kept as sent: it is evidence, and the index stores it safely
        Case("nul-text", {"nul-text.json": _json(chat("nul-text", messages=[
            {"at": "2024-05-01T10:00:00Z", "from": "c9", "text": "before\u0000after refund"}]))}, None,
             interaction="nul-text"),
        # --- JSON a parser chokes on
        Case("deep", {"deep.json": deep}, "invalid_metadata", "nests arrays and objects 200,001 deep"),
        Case("bigint", {"bigint.json": _json(chat("bigint")).replace(b'"id": "c9"}', b'"id": "c9", "age": '
                                                                       + b"9" * 5000 + b"}", 1)},
             "invalid_metadata", "integer of 5,000 digits"),
        Case("nan", {"nan.json": _json(chat("nan", duration_s=1)).replace(b'"duration_s": 1', b'"duration_s": NaN')},
             "invalid_metadata", "NaN"),
        Case("infinity", {"infinity.json": _json(chat("inf", duration_s=1)).replace(b'"duration_s": 1',
                                                                                     b'"duration_s": 1e999')},
             "invalid_metadata", "1e999"),
        Case("surrogate", {"surrogate.json": json.dumps(chat("sur", messages=[
            {"at": "2024-05-01T10:00:00Z", "from": "c9", "text": "\ud800"}])).encode()},
             "invalid_metadata", "unpaired surrogate"),
        Case("nested", {"nested.json": _json(chat("nested", source_fields=nested))}, "invalid_metadata",
             "more than 32 deep"),
        Case("too-big", {"too-big.json": _json(chat("big", messages=[
            {"at": "2024-05-01T10:00:00Z", "from": "c9", "text": "x" * (METADATA_LIMIT + 10)}]))},
             "too_large", "ARCHIVE_MAX_METADATA_BYTES"),
        # --- values out of range
        Case("year-9999", {"year-9999.json": _json(chat("y9999", started_at="9999-12-31T23:00:00Z",
                                                        ended_at="9999-12-31T23:30:00Z"))},
             "invalid_metadata", "outside 1970-01-01"),
        Case("year-1969", {"year-1969.json": _json(chat("y1969", started_at="1969-12-31T23:00:00Z",
                                                        ended_at=None))}, "invalid_metadata", "outside 1970-01-01"),
        Case("forever", {"forever.json": _json(chat("forever", contract_term="P9999Y"))}, "invalid_metadata",
             "longer than 100 years"),
        Case("nul-name", {"nul-name.json": _json(chat("nul-name", participants=[
            {"role": "agent", "id": "a1", "name": "Zhou\u0000Min"}]))}, "invalid_metadata", "control characters"),
        Case("long-id", {"long-id.json": _json(chat("long-id", participants=[
            {"role": "agent", "id": "a" * 100_000}]))}, "invalid_metadata", "too long"),
        Case("call-9999", {"call-9999.wav": wav, "call-9999.json": _json(call_sidecar(
            "call-9999", started_at="9999-12-31T23:59:00+00:00"))}, "invalid_metadata", "outside 1970-01-01"),
        Case("call-inf", {"call-inf.wav": wav, "call-inf.json": _json(call_sidecar("call-inf", duration_s=1)).replace(
            b'"duration_s": 1', b'"duration_s": 1e999')}, "invalid_metadata", "1e999"),
        Case("call-long", {"call-long.wav": wav, "call-long.json": _json(call_sidecar("call-long", duration_s=1e12))},
             "invalid_metadata", "duration_s"),
        Case("call-transcript", {"call-transcript.wav": wav, "call-transcript.json": _json(call_sidecar("call-t")),
                                 "call-transcript.txt": b"words " * (METADATA_LIMIT // 5)},
             "too_large", "ARCHIVE_MAX_METADATA_BYTES"),
        # --- SIPREC metadata
        Case("utf7", {"utf7.wav": wav, "utf7.xml": _siprec("UTF-7")}, "invalid_metadata", "declares encoding 'UTF-7'"),
        Case("klingon", {"klingon.wav": wav, "klingon.xml": _siprec("x-klingon")}, "invalid_metadata",
             "declares encoding 'x-klingon'"),
        Case("laughs", {"laughs.wav": wav, "laughs.xml": _siprec(None, doctype=_LAUGHS)}, "invalid_metadata",
             "DOCTYPE"),
        # --- e-mail
        Case("headers", {"headers.eml": _email(_MAIL_HEAD.format(
            subject="h", date="Mon, 06 May 2024 10:00:00 +0000", iid="headers")
            + "".join(f"X-Junk-{i}: {i}\r\n" for i in range(5000)))}, "invalid_metadata", "5,005 header fields"),
        Case("long-header", {"long-header.eml": _email(_MAIL_HEAD.format(
            subject="x" * 200_000, date="Mon, 06 May 2024 10:00:00 +0000", iid="long-header"))},
             "invalid_metadata", "header field 'Subject'"),
        Case("deep-mime", {"deep-mime.eml": _deep_mime(3000)}, "invalid_metadata", "nested too deeply"),
        Case("mail-9999", {"mail-9999.eml": _email(_MAIL_HEAD.format(
            subject="late", date="Fri, 31 Dec 9999 23:00:00 +0000", iid="mail-9999"))}, "invalid_metadata",
             "outside 1970-01-01"),
    ]
    if with_special:
        out += [Case("fifo.json", {}, "not_regular_file", "FIFO", special="fifo"),
                Case("socket.eml", {}, "not_regular_file", "socket", special="socket"),
                Case("link.json", {}, "symlink", "symbolic link", special="symlink")]
    return out


def write(directory: Path, chosen: list[Case]) -> list[socket.socket]:
    """Make the cases' files in ``directory``; returns the sockets to keep open (and close) meanwhile."""
    directory.mkdir(parents=True, exist_ok=True)
    sockets = []
    for case in chosen:
        for name, data in case.files.items():
            (directory / name).write_bytes(data)
        if case.special == "fifo":
            os.mkfifo(directory / case.stem)
        elif case.special == "socket":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(directory / case.stem))
            s.listen(1)
            sockets.append(s)
        elif case.special == "symlink":
            target = directory.parent / "outside-the-inbox.json"
            target.write_bytes(_json(chat("outside")))
            os.symlink(target, directory / case.stem)
    return sockets


def snapshot(directory: Path) -> dict[str, str]:
    """Every entry under ``directory``: a regular file by its SHA-256, anything else by its type — read
    without opening anything but regular files."""
    out = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(path.relative_to(directory))] = f"type {stat.S_IFMT(st.st_mode):o}"
    return out
