"""Shared helpers for the chat converters: typed field access that names the JSON path of a bad field,
time parsing (ISO-8601 with offset, or epoch seconds), HTML-to-text and record assembly."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

from archive.ingest.record import InvalidMetadata, validate

_TYPE_NAMES = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object",
               bool: "true or false"}


def join(path: str, key: str | int) -> str:
    """``join("Transcript", 3)`` → ``Transcript[3]``; ``join("ticket", "id")`` → ``ticket.id``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _typename(types: tuple[type, ...]) -> str:
    return " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in types))


def check(value: Any, path: str, types: tuple[type, ...]) -> Any:
    if isinstance(value, bool) and bool not in types:
        raise InvalidMetadata(path, f"must be {_typename(types)}, not {value!r}"[:200])
    if dict in types and isinstance(value, Mapping):
        return value
    if not isinstance(value, types):
        raise InvalidMetadata(path, f"must be {_typename(types)}, not {value!r}"[:200])
    return value


def req(obj: Mapping, key: str, path: str, *types: type) -> Any:
    """The value at ``obj[key]``; missing/null or of the wrong type raises naming ``path.key``."""
    where = join(path, key)
    if obj.get(key) is None:
        raise InvalidMetadata(where, "missing")
    return check(obj[key], where, types) if types else obj[key]


def opt(obj: Mapping, key: str, path: str, *types: type) -> Any:
    """Like :func:`req` but ``None`` when absent or null."""
    value = obj.get(key)
    if value is None:
        return None
    return check(value, join(path, key), types) if types else value


def text_id(value: Any) -> str | None:
    """Platform ids are strings or integers; the record wants strings."""
    if value is None or isinstance(value, bool):
        return None
    return str(value) if str(value).strip() else None


def parse_time(value: Any, path: str, *, epoch: bool = False) -> datetime:
    """An aware datetime from an ISO-8601 string with offset (or, if ``epoch``, Unix seconds)."""
    if epoch and isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise InvalidMetadata(path, f"{value!r} is not a Unix time in seconds")
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidMetadata(path, f"{value!r} is not a Unix time in seconds") from None
    if not isinstance(value, str):
        want = "Unix seconds" if epoch else "an ISO-8601 date-time string"
        raise InvalidMetadata(path, f"must be {want}, not {value!r}"[:200])
    raw = value.strip()
    want = "Unix seconds or an ISO-8601 date-time with offset" if epoch else "an ISO-8601 date-time"
    try:
        parsed = datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1:] in "Zz" and raw else raw)
    except ValueError:
        raise InvalidMetadata(path, f"{value!r} is not {want}") from None
    if parsed.tzinfo is None:
        raise InvalidMetadata(path, f"{value!r} has no UTC offset" + (f" (expected {want})" if epoch else ""))
    return parsed


def req_time(obj: Mapping, key: str, path: str, *, epoch: bool = False) -> datetime:
    if obj.get(key) is None:
        raise InvalidMetadata(join(path, key), "missing")
    return parse_time(obj[key], join(path, key), epoch=epoch)


def opt_time(obj: Mapping, key: str, path: str, *, epoch: bool = False) -> datetime | None:
    return None if obj.get(key) is None else parse_time(obj[key], join(path, key), epoch=epoch)


def iso(moment: datetime) -> str:
    """ISO-8601 with an explicit offset, milliseconds only when the source had sub-second precision."""
    return moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")


class _Text(HTMLParser):
    _BREAKS = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self._BREAKS and self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        self.handle_starttag(tag, [])

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_text(markup: str) -> str:
    """Visible text of an HTML fragment: tags stripped (block elements become line breaks), entities
    unescaped."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    lines = [" ".join(line.split()) for line in html.unescape("".join(parser.parts)).split("\n")]
    return "\n".join(line for line in lines if line)


def names(items: Iterable[Any]) -> list[str]:
    return [str(item) for item in items if item not in (None, "")]


def participant(role: str, pid: str | None, name: str | None = None, **extra: Any) -> dict:
    p = {"role": role, "id": pid, "name": name, **extra}
    return {k: v for k, v in p.items() if v not in (None, "", {}, [])}


def build(fmt: str, interaction_id: str, channel: str, started: datetime, ended: datetime | None,
          participants: list[dict], messages: list[dict], source_fields: Mapping[str, Any], **optional: Any) -> dict:
    """Assemble and validate one record; ``optional`` holds subject/tags/language (dropped when empty)."""
    if ended is not None and ended < started:
        ended = started
    doc = {"schema": "archive-record/1", "source": {"system": fmt, "interaction_id": interaction_id},
           "channel": channel, "started_at": iso(started)}
    if ended is not None:
        doc["ended_at"] = iso(ended)
    doc["participants"] = participants
    for key, value in optional.items():
        if value not in (None, "", []):
            doc[key] = value
    doc["messages"] = messages
    fields = {k: v for k, v in source_fields.items() if v is not None}
    if fields:
        doc["source_fields"] = fields
    return validate(doc)


def bounds(times: Iterable[datetime | None], start: datetime | None = None) -> tuple[datetime, datetime | None]:
    """(started, ended): the platform's start when given, else the first item; ended = the last item."""
    seen = sorted(t for t in times if t is not None)
    if start is None and not seen:
        raise InvalidMetadata("(document)", "has no timestamps: cannot tell when the conversation happened")
    first = start if start is not None else seen[0]
    return first, (seen[-1] if seen else None)
