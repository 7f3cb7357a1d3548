"""The record model: one interaction (a call, a chat, an email thread, a dual-recording session).

A record has metadata (who, when, which channel, what was sold, under which jurisdiction) and one or more
parts (``audio``, ``video``, ``screen``, ``transcript``, ``attachment-1`` …). This module owns the
metadata schema and its validation; every importer produces metadata in this shape, and every error names
the field (``participants[1].phone: not an E.164 number``). ``docs/record-schema.md`` documents it for
integrators.

Metadata (JSON, ``schema: "archive-record/1"``)::

    source         {system, interaction_id}        required: where it came from, and its id there
    channel        phone | video | chat | messaging | email          required
    direction      inbound | outbound | internal                     optional
    started_at     ISO-8601 with offset                              required
    ended_at       ISO-8601 with offset, not before started_at       optional
    duration_s     number ≥ 0                                        optional (probed for media)
    participants   [{role: agent|customer|other|bot, id, name, phone (E.164), email, account,
                     age, attributes{}}]                             at least one
    business_line, product, product_type, jurisdiction (ISO 3166 alpha-2, or with subdivision "CN-31"),
    language (BCP 47), subject, contract_id, tags [str]              optional
    contract_term  ISO-8601 duration of the contract sold (P1Y, P10Y) optional; retention policies match it
    messages       [{at, from, text, attachments[]}]                 chats and email: the thread
    source_fields  {…}                                               the source's own fields, verbatim

Unknown top-level fields are refused (a typo must not silently drop data); ``source_fields`` holds
anything the source sends that the schema does not name.

Bounds (hostile or broken sources must be refused here, at the edge, not fail somewhere downstream):

* every date-time lies in [1970-01-01T00:00Z, 2100-01-01T00:00Z) (``EARLIEST``, ``LATEST``). No
  interaction this archive keeps — a digital recording, an electronic chat or e-mail — is older than the
  Unix epoch, and a clock that says 1970 is almost always a zero that stood in for "unknown"; 2100 is
  past any plausible clock error while keeping retention arithmetic (a century-long clause on top of it)
  far from the calendar's end at year 9999, where it would overflow;
* ``duration_s`` is finite and at most 31 days (``MAX_DURATION_S``: a recording longer than a month is
  not one interaction; open-line recorders cut theirs daily); ``contract_term`` at most ``P100Y``;
* text is valid Unicode (no unpaired surrogates); short fields (names, ids, subject …) hold no control
  characters; message text is kept as sent (control characters included: it is evidence), but not
  unpaired surrogates, which no encoding can store;
* ``source_fields`` and ``attributes`` nest at most ``MAX_NESTING`` levels; numbers anywhere are finite
  (the manifest is written with ``allow_nan=False``, and JSON inputs are parsed refusing NaN/Infinity).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from archive.errors import InvalidMetadata

SCHEMA = "archive-record/1"
CHANNELS = ("phone", "video", "chat", "messaging", "email")
DIRECTIONS = ("inbound", "outbound", "internal")
ROLES = ("agent", "customer", "other", "bot", "system")
PART_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_E164 = re.compile(r"\+[1-9]\d{4,14}")
_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")  # control characters but tab, newline,
# return; and unpaired surrogates (not Unicode text: they cannot be encoded)
_SURROGATE = re.compile("[\ud800-\udfff]")
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MAX_DURATION_S = 31 * 24 * 3600
MAX_CONTRACT_YEARS = 100
MAX_NESTING = 32
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_TOP = {"schema", "source", "channel", "direction", "started_at", "ended_at", "duration_s", "participants",
        "business_line", "product", "product_type", "jurisdiction", "language", "subject", "contract_id",
        "contract_term", "tags",
        "messages", "source_fields"}
_PARTICIPANT = {"role", "id", "name", "phone", "email", "account", "age", "attributes"}
_MESSAGE = {"at", "from", "text", "attachments", "id", "type"}


def _str(doc: Mapping, key: str, path: str, *, required: bool = False, max_len: int = 1000) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise InvalidMetadata(f"{path}{key}", "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidMetadata(f"{path}{key}", f"must be a non-empty string, not {value!r}"[:200])
    if len(value) > max_len or _CONTROL.search(value):
        raise InvalidMetadata(f"{path}{key}", "is too long or contains control characters")
    return value


def _time(doc: Mapping, key: str, path: str, *, required: bool = False) -> datetime | None:
    raw = _str(doc, key, path, required=required, max_len=64)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidMetadata(f"{path}{key}", f"{raw!r} is not an ISO-8601 date-time") from None
    if value.tzinfo is None:
        raise InvalidMetadata(f"{path}{key}", f"{raw!r} has no UTC offset; recordings need absolute times")
    if not EARLIEST <= value < LATEST:
        raise InvalidMetadata(f"{path}{key}", f"{raw!r} is outside {EARLIEST:%Y-%m-%d} … {LATEST:%Y-%m-%d} "
                                              "(no recording, chat or e-mail this archive keeps is dated there)")
    return value


def _nested(value: Any, path: str, limit: int = MAX_NESTING) -> None:
    """Refuse objects and lists nested more than ``limit`` deep inside ``value`` (iteratively: no recursion
    for a hostile depth to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, Mapping) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, Mapping | list):
                if depth >= limit:
                    raise InvalidMetadata(path, f"nests objects and lists more than {limit} deep")
                stack.append((child, depth + 1))


def _unknown(doc: Mapping, allowed: set[str], path: str) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise InvalidMetadata(f"{path}{extra[0]}", "is not a field of the record schema (put source-specific "
                                                   "fields under source_fields)")


class Validated(dict):
    """Record metadata as :func:`validate` returned it: validating it again returns it as it is (the
    importers validate what they convert, and the pipeline validates whatever it is given)."""


def validate(doc: Any) -> dict:
    """Check ``doc`` against the record schema; return it normalised (schema tag set, times as given).
    Raises InvalidMetadata naming the first bad field."""
    if type(doc) is Validated:
        return doc
    if not isinstance(doc, Mapping):
        raise InvalidMetadata("(record)", "metadata must be a JSON object")
    _unknown(doc, _TOP, "")
    if doc.get("schema", SCHEMA) != SCHEMA:
        raise InvalidMetadata("schema", f"unsupported schema {doc.get('schema')!r}; expected {SCHEMA!r}")
    source = doc.get("source")
    if not isinstance(source, Mapping):
        raise InvalidMetadata("source", "is required: {system, interaction_id}")
    _unknown(source, {"system", "interaction_id"}, "source.")
    _str(source, "system", "source.", required=True, max_len=100)
    _str(source, "interaction_id", "source.", required=True, max_len=500)
    if doc.get("channel") not in CHANNELS:
        raise InvalidMetadata("channel", f"must be one of {', '.join(CHANNELS)}, not {doc.get('channel')!r}")
    if doc.get("direction") is not None and doc["direction"] not in DIRECTIONS:
        raise InvalidMetadata("direction", f"must be one of {', '.join(DIRECTIONS)}, not {doc['direction']!r}")
    started = _time(doc, "started_at", "", required=True)
    ended = _time(doc, "ended_at", "")
    if ended is not None and ended < started:
        raise InvalidMetadata("ended_at", "is before started_at")
    duration = doc.get("duration_s")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int | float)
                                 or not 0 <= duration <= MAX_DURATION_S or not math.isfinite(duration)):
        raise InvalidMetadata("duration_s", f"must be a number of seconds from 0 to {MAX_DURATION_S:,} "
                                            f"(31 days), not {duration!r}"[:200])
    participants = doc.get("participants")
    if not isinstance(participants, list) or not participants:
        raise InvalidMetadata("participants", "needs at least one participant")
    for i, p in enumerate(participants):
        path = f"participants[{i}]."
        if not isinstance(p, Mapping):
            raise InvalidMetadata(f"participants[{i}]", "must be an object")
        _unknown(p, _PARTICIPANT, path)
        if p.get("role") not in ROLES:
            raise InvalidMetadata(f"{path}role", f"must be one of {', '.join(ROLES)}, not {p.get('role')!r}")
        for key in ("id", "name", "email", "account"):
            _str(p, key, path)
        phone = _str(p, "phone", path, max_len=16)
        if phone is not None and not _E164.fullmatch(phone):
            raise InvalidMetadata(f"{path}phone", f"{phone!r} is not an E.164 number (+ and 5-15 digits)")
        age = p.get("age")
        if age is not None and (isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= 150):
            raise InvalidMetadata(f"{path}age", f"must be a whole number of years, not {age!r}")
        if p.get("attributes") is not None:
            if not isinstance(p["attributes"], Mapping):
                raise InvalidMetadata(f"{path}attributes", "must be an object")
            _nested(p["attributes"], f"{path}attributes")
    for key in ("business_line", "product", "product_type", "subject", "contract_id"):
        _str(doc, key, "")
    term = _str(doc, "contract_term", "", max_len=32)
    if term is not None:
        from archive.dates import parse_duration

        try:
            length = parse_duration(term)
        except ValueError:
            raise InvalidMetadata("contract_term", f"{term!r} is not an ISO-8601 duration such as P1Y or P6M") from None
        if length.years * 12 + length.months > MAX_CONTRACT_YEARS * 12 \
                or length.exact.days > MAX_CONTRACT_YEARS * 366:
            raise InvalidMetadata("contract_term", f"{term!r} is longer than {MAX_CONTRACT_YEARS} years")
    jurisdiction = _str(doc, "jurisdiction", "", max_len=6)
    if jurisdiction is not None and not _JURISDICTION.fullmatch(jurisdiction):
        raise InvalidMetadata("jurisdiction", f"{jurisdiction!r} is not an ISO 3166 code such as CN or US-NY")
    language = _str(doc, "language", "", max_len=35)
    if language is not None and not _LANGUAGE.fullmatch(language):
        raise InvalidMetadata("language", f"{language!r} is not a BCP 47 language tag such as zh-CN")
    tags = doc.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags)):
        raise InvalidMetadata("tags", "must be a list of non-empty strings")
    for i, tag in enumerate(tags or ()):
        if len(tag) > 1000 or _CONTROL.search(tag):
            raise InvalidMetadata(f"tags[{i}]", "is too long or contains control characters")
    messages = doc.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise InvalidMetadata("messages", "must be a list")
        for i, m in enumerate(messages):
            path = f"messages[{i}]."
            if not isinstance(m, Mapping):
                raise InvalidMetadata(f"messages[{i}]", "must be an object")
            _unknown(m, _MESSAGE, path)
            _time(m, "at", path, required=True)
            _str(m, "from", path, required=True)
            text = m.get("text")
            if text is not None:
                if not isinstance(text, str):
                    raise InvalidMetadata(f"{path}text", "must be a string")
                if _SURROGATE.search(text):
                    raise InvalidMetadata(f"{path}text", "contains an unpaired surrogate: not Unicode text")
    if doc.get("source_fields") is not None:
        if not isinstance(doc["source_fields"], Mapping):
            raise InvalidMetadata("source_fields", "must be an object")
        _nested(doc["source_fields"], "source_fields")
    return Validated({"schema": SCHEMA, **{k: v for k, v in doc.items() if k != "schema"}})


def check_part_name(name: str) -> str:
    """Part names are short lowercase identifiers (``audio``, ``video``, ``attachment-2``)."""
    if not isinstance(name, str) or not PART_NAME.fullmatch(name):
        raise InvalidMetadata("parts", f"part name {name!r} must be lowercase letters, digits, - or _")
    return name
