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

Each input becomes a :class:`Found`: either a rejection (a reason, nothing read beyond what it took to
decide) or a ``load()`` that yields ``(metadata, parts, format)`` for the pipeline.
"""

from __future__ import annotations

import json
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from archive.errors import ArchiveError, RejectedInput
from archive.ingest.record import InvalidMetadata

MEDIA_TYPES = {
    ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".opus": "audio/ogg", ".flac": "audio/flac",
    ".m4a": "audio/mp4", ".aac": "audio/aac", ".mp4": "video/mp4", ".webm": "video/webm",
}
SIDECARS = (".json", ".xml")
TRANSCRIPTS = {".txt": "text/plain; charset=utf-8", ".vtt": "text/vtt; charset=utf-8"}


@dataclass(frozen=True)
class Limits:
    """What the archive accepts."""

    max_input_bytes: int = 10 * 1024**3


@dataclass
class Found:
    """One input: its origin (a path, or a group of paths of one stem), and how to load it."""

    origin: str
    load: Callable[[], Iterator[tuple]] | None = None
    rejection: ArchiveError | None = None
    files: tuple[str, ...] = ()  # the file names it is made of (for an inbox to move once archived)
    kind: str = ""  # "recording" (media to probe, hash and seal: heavy), "chat" or "email"; "" when rejected


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


def _show(path: Path) -> str:
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


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
    for name in names:
        if name.startswith("."):
            continue
        path = directory / name
        problem = _hostile(name)
        if problem:
            yield Found(_show(path), rejection=RejectedInput("hostile_name", f"{_show(path)}: file name {problem}"))
            continue
        if os.path.islink(path):
            yield Found(_show(path), rejection=RejectedInput("symlink", f"{_show(path)}: symbolic link (not followed)"))
            continue
        size = os.stat(path).st_size
        if size > limits.max_input_bytes:
            yield Found(_show(path), rejection=RejectedInput(
                "too_large", f"{_show(path)}: {size} bytes is over the limit of {limits.max_input_bytes} "
                             "(ARCHIVE_MAX_INPUT_BYTES)"))
            continue
        stem, ext = os.path.splitext(name)
        stems.setdefault(stem, []).append(name)
    for stem, group in stems.items():
        exts = {os.path.splitext(n)[1].lower(): n for n in group}
        media = sorted(n for n in group if os.path.splitext(n)[1].lower() in MEDIA_TYPES)
        if media:
            sidecars = [directory / exts[e] for e in SIDECARS if e in exts]
            origin = _show(directory / media[0]) if len(media) == 1 else _show(directory / stem) + ".*"
            if not sidecars:
                yield Found(origin, rejection=RejectedInput(
                    "metadata_missing", f"{origin}: no metadata — put {stem}.json (record schema) or {stem}.xml "
                                        "(SIPREC) beside the recording"))
                continue
            transcripts = [exts[e] for e in TRANSCRIPTS if e in exts]
            yield Found(origin, load=_recording_loader(directory, media, sidecars, transcripts),
                        files=(*media, *(p.name for p in sidecars), *transcripts), kind="recording")
            for other in sorted(set(group) - set(media) - {p.name for p in sidecars} - set(transcripts)):
                yield Found(_show(directory / other), rejection=_unsupported(directory / other))
            continue
        for name in group:
            path = directory / name
            ext = os.path.splitext(name)[1].lower()
            if ext == ".json":
                yield Found(_show(path), load=_chat_loader(path), files=(name,), kind="chat")
            elif ext == ".eml":
                yield Found(_show(path), load=_email_loader(path), files=(name,), kind="email")
            elif ext == ".xml":
                yield Found(_show(path), rejection=RejectedInput(
                    "metadata_without_recording", f"{_show(path)}: SIPREC metadata with no recording of the same name"))
            else:
                yield Found(_show(path), rejection=_unsupported(path))


def _unsupported(path: Path) -> RejectedInput:
    return RejectedInput("unsupported_format", f"{_show(path)}: unsupported format "
                         f"({os.path.splitext(path.name)[1] or 'no extension'}); recordings: "
                         f"{' '.join(MEDIA_TYPES)}, chats: .json, email: .eml")


def _parse_json(raw: bytes, name: str):
    """``raw`` (the bytes of file ``name``) as JSON; raises InvalidMetadata naming the file and the place."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise InvalidMetadata(name, f"is not UTF-8 JSON ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InvalidMetadata(name, f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def _opener(path: Path) -> Callable:
    return lambda: open(path, "rb")


def _recording_loader(directory: Path, media: list[str], sidecars: list[Path], transcripts: list[str] = ()):
    def load():
        from archive.ingest.media import probe
        from archive.ingest.pipeline import PartInput

        metadata: dict = {}
        fmt = "recording"
        for sidecar in sidecars:
            if sidecar.suffix.lower() == ".xml":
                from archive.ingest.siprec import parse_siprec

                try:
                    siprec = parse_siprec(sidecar.read_bytes())
                except InvalidMetadata as e:
                    raise InvalidMetadata(f"{sidecar.name}: {e.field}", str(e).split(": ", 1)[-1]) from None
                metadata = {**siprec, **metadata}
                fmt = "recording+siprec"
            else:
                doc = _parse_json(sidecar.read_bytes(), sidecar.name)
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
            try:
                path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidMetadata(name, f"transcript is not UTF-8 text ({e.reason} at byte {e.start})") from None
            media_type = TRANSCRIPTS[os.path.splitext(name)[1].lower()]
            parts.append(PartInput("transcript" if i == 1 else f"transcript-{i}", media_type, _opener(path),
                                   filename=name))
        yield metadata, parts, fmt

    return load


def _chat_loader(path: Path):
    def load():
        from archive.ingest.chats import convert, detect
        from archive.ingest.pipeline import PartInput

        raw = path.read_bytes()  # read once: the metadata and the archived bytes are one snapshot
        doc = _parse_json(raw, path.name)
        fmt = detect(doc)
        for metadata in convert(doc, fmt, origin=path.name):
            yield metadata, [PartInput.of_bytes("transcript", "application/json", raw, filename=path.name)], fmt

    return load


def _email_loader(path: Path):
    def load():
        from archive.ingest.email_import import parse_eml
        from archive.ingest.pipeline import PartInput

        parsed = parse_eml(path.read_bytes(), origin=path.name)
        parts = [PartInput.of_bytes(p.name, p.media_type, p.data, filename=p.filename) for p in parsed.parts]
        yield parsed.metadata, parts, "email"

    return load
