"""Finding inputs on disk and turning each into records to archive — reading, never changing, the source.

Rules, per directory (walked recursively, in name order, never following symbolic links):

* recordings — ``.wav .mp3 .ogg .opus .flac .m4a .aac .mp4 .webm`` — are grouped with every other file of
  the same stem: media files of one stem are one record (a dual-recording session may have ``.mp4`` and
  ``.wav``), and its metadata comes from the sidecar ``<stem>.json`` (the record schema) and/or
  ``<stem>.xml`` (SIPREC, RFC 7865). A recording without a sidecar is rejected: metadata is required.
  A transcript of the call may come beside it as ``<stem>.txt`` (UTF-8 text) or ``<stem>.vtt`` (WebVTT);
  it is archived as the record's ``transcript`` part and checked for mandated phrases.
* ``.json`` without a recording of the same stem is a chat transcript (format detected, or named);
* ``.eml`` is an email (RFC 5322);
* anything else is rejected as an unsupported format; hidden files (``.name``) are skipped.

Only regular files are inputs: a FIFO, a socket, a device or a symbolic link is refused from ``lstat``
alone, never opened (``open()`` on a FIFO waits forever), and every later open goes through
:func:`archive.ingest.files.open_input`, which refuses whatever may have been swapped in meanwhile. Sizes
are checked from the same ``lstat`` against :class:`Limits` — recordings against
``ARCHIVE_MAX_INPUT_BYTES``, files read whole to be parsed against the smaller
``ARCHIVE_MAX_METADATA_BYTES`` / ``ARCHIVE_MAX_EMAIL_BYTES`` — and again while they are read. JSON is
parsed strictly (:func:`parse_json`: finite numbers, bounded integers and nesting).

Each input becomes a :class:`Found`: either a rejection (a reason, nothing read beyond what it took to
decide) or a ``load()`` that yields ``(metadata, parts, format)`` for the pipeline.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from archive.errors import ArchiveError, RejectedInput
from archive.ingest.files import not_regular, open_input, read_input
from archive.ingest.files import show as _show
from archive.ingest.record import InvalidMetadata

MEDIA_TYPES = {
    ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".opus": "audio/ogg", ".flac": "audio/flac",
    ".m4a": "audio/mp4", ".aac": "audio/aac", ".mp4": "video/mp4", ".webm": "video/webm",
}
SIDECARS = (".json", ".xml")
TRANSCRIPTS = {".txt": "text/plain; charset=utf-8", ".vtt": "text/vtt; charset=utf-8"}


@dataclass(frozen=True)
class Limits:
    """What the archive accepts; each limit names the setting that changes it.

    * ``max_input_bytes`` (``ARCHIVE_MAX_INPUT_BYTES``): any one file;
    * ``max_metadata_bytes`` (``ARCHIVE_MAX_METADATA_BYTES``): a file read whole to be parsed — a
      sidecar (``.json``, SIPREC ``.xml``), a chat transcript, a text transcript — and a record's metadata
      as JSON once converted (so an e-mail body or a chat cannot make a manifest of gigabytes);
    * ``max_email_bytes`` (``ARCHIVE_MAX_EMAIL_BYTES``): an ``.eml``, which is parsed in memory with its
      attachments (the default, 150 MiB, is the largest message Exchange Online accepts).
    """

    max_input_bytes: int = 10 * 1024**3
    max_metadata_bytes: int = 16 * 1024**2
    max_email_bytes: int = 150 * 1024**2

    @classmethod
    def of(cls, settings) -> Limits:
        """The limits the settings give."""
        return cls(settings.max_input_bytes, settings.max_metadata_bytes, settings.max_email_bytes)

    def for_file(self, name: str) -> tuple[int, str]:
        """(limit in bytes, setting) for the file ``name``: the kind's limit, never above the input limit."""
        ext = os.path.splitext(name)[1].lower()
        if ext in (".json", ".xml", *TRANSCRIPTS):
            limit, setting = self.max_metadata_bytes, "ARCHIVE_MAX_METADATA_BYTES"
        elif ext == ".eml":
            limit, setting = self.max_email_bytes, "ARCHIVE_MAX_EMAIL_BYTES"
        else:
            return self.max_input_bytes, "ARCHIVE_MAX_INPUT_BYTES"
        return (limit, setting) if limit <= self.max_input_bytes else (self.max_input_bytes, "ARCHIVE_MAX_INPUT_BYTES")


@dataclass
class Found:
    """One input: its origin (a path, or a group of paths of one stem), and how to load it."""

    origin: str
    load: Callable[[], Iterator[tuple]] | None = None
    rejection: ArchiveError | None = None
    files: tuple[str, ...] = ()  # the file names it is made of (for an inbox to move once archived)
    kind: str = ""  # "recording" (media to probe, hash and seal: heavy), "chat" or "email"; "" when rejected
    rename: tuple[str, str] | None = None  # (prefix, shown as): a scratch copy's path, named as its source


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._ -]+")  # (most names: nothing hostile to look for)


def _hostile(name: str) -> str | None:
    if _PLAIN_NAME.fullmatch(name) and name not in (".", ".."):
        return None
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        return "contains control or format characters"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if name in (".", "..") or "/" in name or "\\" in name:
        return "could escape its directory"
    return None


def discover(paths: Iterable[Path], *, limits: Limits) -> Iterator[Found]:
    """Every input under ``paths``, in a stable order."""
    for top in paths:
        top = Path(top)
        try:
            st = os.lstat(top)
        except OSError as e:
            yield Found(_show(top), rejection=RejectedInput("unreadable", f"{_show(top)}: {e.strerror}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(top, limits)
        else:
            yield from _group(top.parent, [top.name], limits)


def _walk(root: Path, limits: Limits) -> Iterator[Found]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            problem = _hostile(d)
            if problem or os.path.islink(here / d):
                dirnames.remove(d)
                why = f"directory name {problem}" if problem else "symbolic link (not followed)"
                yield Found(_show(here / d), rejection=RejectedInput("hostile_name" if problem else "symlink",
                                                                    f"{_show(here / d)}: {why}"))
        dirnames.sort()
        yield from _group(here, sorted(filenames), limits)


def group(directory: Path, names: list[str], limits: Limits) -> Iterator[Found]:
    """The inputs made of ``names`` in ``directory`` (one inbox group: a recording with its sidecar, a chat)."""
    return _group(directory, sorted(names), limits)


def _group(directory: Path, names: list[str], limits: Limits) -> Iterator[Found]:
    stems: dict[str, list[str]] = {}
    refused: dict[str, RejectedInput] = {}  # files refused from lstat alone: never opened
    for name in names:
        if name.startswith("."):
            continue
        path = directory / name
        problem = _hostile(name)
        if problem:
            yield Found(_show(path), rejection=RejectedInput("hostile_name", f"{_show(path)}: file name {problem}"))
            continue
        refused_as = _refused(path, name, limits)
        if refused_as is not None:
            refused[name] = refused_as
        stem, ext = os.path.splitext(name)
        stems.setdefault(stem, []).append(name)
    for stem, group in stems.items():
        exts = {os.path.splitext(n)[1].lower(): n for n in group}
        media = sorted(n for n in group if os.path.splitext(n)[1].lower() in MEDIA_TYPES)
        if media:
            sidecars = [directory / exts[e] for e in SIDECARS if e in exts]
            origin = _show(directory / media[0]) if len(media) == 1 else _show(directory / stem) + ".*"
            transcripts = [exts[e] for e in TRANSCRIPTS if e in exts]
            members = [*media, *(p.name for p in sidecars), *transcripts]
            bad = next((refused[n] for n in members if n in refused), None)
            if bad is not None:  # one file of a recording refused: the recording is refused whole, never half
                yield Found(origin, rejection=bad)
            elif not sidecars:
                yield Found(origin, rejection=RejectedInput(
                    "metadata_missing", f"{origin}: no metadata — put {stem}.json (record schema) or {stem}.xml "
                                        "(SIPREC) beside the recording"))
                continue
            else:
                yield Found(origin, load=_recording_loader(directory, media, sidecars, transcripts, limits),
                            files=tuple(members), kind="recording")
            for other in sorted(set(group) - set(members)):
                yield Found(_show(directory / other), rejection=refused.get(other) or _unsupported(directory / other))
            continue
        for name in group:
            path = directory / name
            ext = os.path.splitext(name)[1].lower()
            if name in refused:
                yield Found(_show(path), rejection=refused[name])
            elif ext == ".json":
                yield Found(_show(path), load=_chat_loader(path, limits), files=(name,), kind="chat")
            elif ext == ".eml":
                yield Found(_show(path), load=_email_loader(path, limits), files=(name,), kind="email")
            elif ext == ".xml":
                yield Found(_show(path), rejection=RejectedInput(
                    "metadata_without_recording", f"{_show(path)}: SIPREC metadata with no recording of the same name"))
            else:
                yield Found(_show(path), rejection=_unsupported(path))


def _refused(path: Path, name: str, limits: Limits) -> RejectedInput | None:
    """Why ``path`` is refused from its ``lstat`` alone (nothing is opened), or None."""
    try:
        st = os.lstat(path)  # never stat() or open() first: a FIFO would block the run for good
    except OSError as e:
        return RejectedInput("unreadable", f"{_show(path)}: {e.strerror}")
    if stat.S_ISLNK(st.st_mode):
        return RejectedInput("symlink", f"{_show(path)}: symbolic link (not followed)")
    what = not_regular(st.st_mode)
    if what is not None:
        return RejectedInput("not_regular_file", f"{_show(path)}: is {what}, not a regular file; not opened")
    limit, setting = limits.for_file(name)
    if st.st_size > limit:
        return RejectedInput("too_large", f"{_show(path)}: {st.st_size:,} bytes is over the limit of {limit:,} "
                                          f"({setting})")
    return None


def _unsupported(path: Path) -> RejectedInput:
    return RejectedInput("unsupported_format", f"{_show(path)}: unsupported format "
                         f"({os.path.splitext(path.name)[1] or 'no extension'}); recordings: "
                         f"{' '.join(MEDIA_TYPES)}, chats: .json, email: .eml")


MAX_JSON_DEPTH = 64  # objects and arrays inside one another; platform exports nest a handful deep
MAX_JSON_INT_DIGITS = 64  # far beyond any id or count (a 64-bit integer has 20 digits)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _json_depth(raw: bytes) -> int:
    """How deeply ``raw``'s arrays and objects nest, without parsing (no recursion; strings skipped).
    Cheap when there are few brackets, linear in the brackets otherwise."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0
    structure = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(itertools.accumulate(_STEP[c] for c in structure), default=0)


def _constant(name: str):
    def refuse(literal: str):
        raise InvalidMetadata(name, f"holds {literal}, which is not a JSON number (RFC 8259 §6)")
    return refuse


def _number(name: str):
    def parse_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise InvalidMetadata(name, f"holds the number {text[:40]}, too large to be finite")
        return value
    return parse_float


def _integer(name: str):
    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
            raise InvalidMetadata(name, f"holds an integer of {len(text.lstrip('-')):,} digits "
                                        f"(more than {MAX_JSON_INT_DIGITS} is not a value any source sends)")
        return int(text)
    return parse_int


def parse_json(raw: bytes, name: str):
    """``raw`` (the bytes of file ``name``) as JSON, strictly: UTF-8, no NaN or Infinity, finite numbers,
    integers of at most MAX_JSON_INT_DIGITS digits, at most MAX_JSON_DEPTH levels of nesting (checked
    before parsing, so nothing recurses that deep). Raises InvalidMetadata naming the file and the place."""
    depth = _json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise InvalidMetadata(name, f"nests arrays and objects {depth:,} deep; at most {MAX_JSON_DEPTH} is accepted")
    try:
        return json.loads(raw, parse_constant=_constant(name), parse_float=_number(name), parse_int=_integer(name))
    except UnicodeDecodeError as e:
        raise InvalidMetadata(name, f"is not UTF-8 JSON ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InvalidMetadata(name, f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:  # (the depth check above makes this unreachable; kept as the last guard)
        raise InvalidMetadata(name, "nests arrays and objects too deeply") from None



def _opener(path: Path) -> Callable:
    return lambda: open_input(path)


def _recording_loader(directory: Path, media: list[str], sidecars: list[Path], transcripts: list[str] = (),
                      limits: Limits = Limits()):
    def load():
        from archive.ingest.media import probe
        from archive.ingest.pipeline import PartInput

        metadata: dict = {}
        fmt = "recording"
        evidence = []  # the sidecars' bytes, as delivered: kept if this delivery conflicts with an earlier one
        for sidecar in sidecars:
            raw = read_input(sidecar, *limits.for_file(sidecar.name))
            evidence.append((sidecar.name, raw))
            if sidecar.suffix.lower() == ".xml":
                from archive.ingest.siprec import parse_siprec

                try:
                    siprec = parse_siprec(raw)
                except InvalidMetadata as e:
                    raise InvalidMetadata(f"{sidecar.name}: {e.field}", str(e).split(": ", 1)[-1]) from None
                metadata = {**siprec, **metadata}
                fmt = "recording+siprec"
            else:
                doc = parse_json(raw, sidecar.name)
                if not isinstance(doc, dict):
                    raise InvalidMetadata(sidecar.name, "must hold one JSON object (the record metadata)")
                metadata = {**metadata, **doc}
        parts, counts = [], {}
        for name in media:
            path = directory / name
            info = probe(path, claimed_extension=os.path.splitext(name)[1].lower())
            kind = info.kind
            counts[kind] = counts.get(kind, 0) + 1
            part_name = kind if counts[kind] == 1 else f"{kind}-{counts[kind]}"
            parts.append(PartInput(part_name, info.media_type, _opener(path), filename=name, media=info.to_json()))
            if metadata.get("duration_s") is None and info.duration_s:
                metadata["duration_s"] = round(info.duration_s, 3)
        for i, name in enumerate(transcripts, 1):
            path = directory / name
            raw = read_input(path, *limits.for_file(name))
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidMetadata(name, f"transcript is not UTF-8 text ({e.reason} at byte {e.start})") from None
            media_type = TRANSCRIPTS[os.path.splitext(name)[1].lower()]
            parts.append(PartInput.of_bytes("transcript" if i == 1 else f"transcript-{i}", media_type, raw,
                                            filename=name))
        yield metadata, parts, fmt, evidence

    return load


def _chat_loader(path: Path, limits: Limits = Limits()):
    def load():
        from archive.ingest.chats import convert, detect
        from archive.ingest.pipeline import PartInput

        raw = read_input(path, *limits.for_file(path.name))  # read once: the metadata and the archived bytes are one snapshot
        doc = parse_json(raw, path.name)
        fmt = detect(doc)
        for metadata in convert(doc, fmt, origin=path.name):
            yield metadata, [PartInput.of_bytes("transcript", "application/json", raw, filename=path.name)], fmt

    return load


def _email_loader(path: Path, limits: Limits = Limits()):
    def load():
        from archive.ingest.email_import import parse_eml
        from archive.ingest.pipeline import PartInput

        parsed = parse_eml(read_input(path, *limits.for_file(path.name)), origin=path.name)
        parts = [PartInput.of_bytes(p.name, p.media_type, p.data, filename=p.filename) for p in parsed.parts]
        yield parsed.metadata, parts, "email"

    return load
