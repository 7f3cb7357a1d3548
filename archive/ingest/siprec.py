"""Read SIPREC recording metadata (RFC 7865) into partial record metadata for a phone recording.

A Session Recording Client (an SBC, a PBX) sends the recorder an ``application/rs-metadata+xml`` body
(RFC 7866, metadata handling: a MIME part of the recording session's INVITE/UPDATE, with
``Content-Disposition: recording-session``); recorders store it next to the audio. This module reads
that XML body. The caller merges the result with the sidecar JSON that names agents, products and so on.

RFC 7865 points relied on:

* Metadata format and XML schema: the root ``<recording xmlns="urn:ietf:params:xml:ns:recording:1">``
  holds, in order, ``datamode`` (``complete`` snapshot or ``partial`` update), ``group``
  (``group_id``), ``session`` (``session_id``; ``sipSessionID`` per RFC 7989, ``group-ref``,
  ``start-time``, ``stop-time``), ``participant`` (``participant_id``; ``nameID aor=`` with an optional
  ``name``), ``stream`` (``stream_id``, ``session_id``, ``label`` = the SDP ``a=label``), and the
  association elements ``sessionrecordingassoc``, ``participantsessionassoc``, ``participantstreamassoc``
  whose ``associate-time``/``disassociate-time`` say when something joined or left the recording.
* The examples section: complete metadata with ids such as ``hVpd7YQgRW2nD22h7q60JQ==``, and partial
  updates that only carry the elements that changed (e.g. a ``disassociate-time``).
* Times are ``xs:dateTime``. Without a zone they are not absolute: they are refused unless the caller
  says which zone the SRC uses (``assume_tz``), never guessed.

Choices:

* ``started_at`` is the earliest session ``start-time`` or association ``associate-time``; group times
  are not the call's (a group can predate it). In a ``partial`` update a participant or stream joining
  is a change mid-call, not the start, so only session and recording times count there.
* ``ended_at`` is the session ``stop-time`` (also read as ``end-time``, which some SRCs write), else the
  recording association's ``disassociate-time``, else the last participant ``disassociate-time`` when a
  complete snapshot shows every participant has left (a partial update lists only what changed).
* A participant's phone comes from a ``tel:`` URI or a ``sip:``/``sips:`` user part only when it is a
  global E.164 number (RFC 3966 §5.1.4; visual separators ``-.()`` removed); national numbers are not
  guessed at. Roles are unknown here (``other``): the sidecar says who the agent is.

Hostile XML: a DOCTYPE, entity or notation declaration is refused before the tree is built (no entity
expansion, no external fetches — so no "billion laughs"), as is malformed XML, reported with the parser's
line and column, and a declared encoding other than UTF-8, UTF-16, US-ASCII or ISO-8859-1 (``UTF-7``
and unknown names would otherwise fail inside Python's codecs). Times are bounded by the record schema
(:mod:`archive.ingest.record`), ids and names by its string limits.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from urllib.parse import unquote
from xml.etree import ElementTree
from xml.parsers import expat

from archive.ingest.record import InvalidMetadata

NS = "urn:ietf:params:xml:ns:recording:1"
_DRAFT_NS = "urn:ietf:params:xml:ns:recording"  # pre-RFC drafts, still written by some SBCs
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_E164 = re.compile(r"\+[1-9]\d{4,14}")
_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?")


def _refuse(what: str):
    def handler(*_args):
        raise InvalidMetadata("(xml)", f"{what} declarations are refused in SIPREC metadata (hostile XML)")
    return handler


_DECLARED = re.compile(rb"(?:\xef\xbb\xbf)?<\?xml\s[^>]*?encoding\s*=\s*[\"']([^\"']{0,64})[\"']")
_ENCODINGS = {"utf-8", "utf8", "utf-16", "utf-16le", "utf-16be", "us-ascii", "ascii", "iso-8859-1", "latin-1",
              "latin1"}


def _check_encoding(xml: bytes) -> None:
    """Refuse an XML declaration naming an encoding other than those expat reads itself (UTF-8, UTF-16,
    US-ASCII, ISO-8859-1): Python would hand others to codecs that fail outright (UTF-7, any multi-byte
    one: ``ValueError``) or do not exist (``LookupError``), and a guessed encoding is a guessed value."""
    m = _DECLARED.match(xml.lstrip(b" \t\r\n")[:512])
    if m and m.group(1).decode("ascii", "replace").strip().lower() not in _ENCODINGS:
        shown = m.group(1).decode("ascii", "backslashreplace")[:40]
        raise InvalidMetadata("(xml)", f"declares encoding {shown!r}; SIPREC metadata is read as UTF-8, UTF-16, "
                                       "US-ASCII or ISO-8859-1 only")


def _check_xml(xml: bytes) -> None:
    """One expat pass that refuses DTDs and entities and reports malformed XML with line and column."""
    _check_encoding(xml)
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse("DOCTYPE")
    parser.EntityDeclHandler = _refuse("ENTITY")
    parser.UnparsedEntityDeclHandler = _refuse("ENTITY")
    parser.NotationDeclHandler = _refuse("NOTATION")
    parser.ExternalEntityRefHandler = _refuse("external entity")
    try:
        parser.Parse(xml, True)
    except expat.ExpatError as e:
        raise InvalidMetadata("(xml)", f"malformed XML at line {e.lineno}, column {e.offset + 1}: "
                                       f"{expat.ErrorString(e.code)}", line=e.lineno, column=e.offset + 1) from None
    except (ValueError, LookupError) as e:  # an encoding expat hands to Python's codecs, which fail
        raise InvalidMetadata("(xml)", f"cannot be read in the encoding it declares ({e})") from None


class _Doc:
    """The parsed tree with lookups in the recording namespace (RFC or draft)."""

    def __init__(self, root: ElementTree.Element) -> None:
        self.ns = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""
        if self.ns not in (NS, _DRAFT_NS) or root.tag.rpartition("}")[2] != "recording":
            raise InvalidMetadata("(xml)", f"root element is {root.tag!r}, not <recording xmlns=\"{NS}\"> "
                                           "(RFC 7865)")
        self.root = root

    def all(self, parent: ElementTree.Element, *names: str) -> list[ElementTree.Element]:
        return [e for e in parent if e.tag in {f"{{{self.ns}}}{n}" for n in names}]

    def text(self, parent: ElementTree.Element, *names: str) -> str | None:
        for e in self.all(parent, *names):
            if e.text and e.text.strip():
                return e.text.strip()
        return None

    def texts(self, parent: ElementTree.Element, name: str, *, squeeze: bool = False) -> list[str]:
        out = []
        for e in self.all(parent, name):
            if e.text and e.text.strip():
                out.append("".join(e.text.split()) if squeeze else e.text.strip())
        return out


def _attr(element: ElementTree.Element, *names: str) -> str | None:
    for name in names:
        value = element.get(name)
        if value and value.strip():
            return value.strip()
    return None


def _time(raw: str, where: str, assume_tz: tzinfo | None) -> datetime:
    m = _DATETIME.fullmatch(raw.strip())
    if not m:
        raise InvalidMetadata(where, f"{raw!r} is not an xs:dateTime")
    text = m.group(1) + ("." + m.group(2)[:6].ljust(6, "0") if m.group(2) else "")
    zone = m.group(3)
    try:
        value = datetime.fromisoformat(text + ("+00:00" if zone == "Z" else zone or ""))
    except ValueError:
        raise InvalidMetadata(where, f"{raw!r} is not a valid date-time") from None
    if value.tzinfo is None:
        if assume_tz is None:
            raise InvalidMetadata(where, f"{raw!r} has no UTC offset; pass assume_tz with the SRC's time zone")
        value = value.replace(tzinfo=assume_tz)
    return value


def phone_from_uri(uri: str | None) -> str | None:
    """``sip:+8613800138000@host;user=phone`` or ``tel:+86-138-0013-8000`` → ``+8613800138000``."""
    if not uri:
        return None
    uri = uri.strip().strip("<>")
    scheme, _, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme in ("sip", "sips"):
        if "@" not in rest:
            return None
        user = unquote(rest.rpartition("@")[0].split(";", 1)[0].split(":", 1)[0])
    elif scheme == "tel":
        user = unquote(rest.split(";", 1)[0])
    else:
        return None
    number = re.sub(r"[-.()\s]", "", user)
    return number if _E164.fullmatch(number) else None


def parse_siprec(xml: bytes, *, assume_tz: tzinfo | None = None) -> dict:
    """Partial record metadata (source, channel, times, participants, source_fields) from RFC 7865 XML.

    Raises InvalidMetadata: ``(xml)`` for hostile, malformed or non-SIPREC documents; the element path for
    bad times; ``source.interaction_id`` when nothing identifies the session."""
    if isinstance(xml, str):
        xml = xml.encode("utf-8")
    if not isinstance(xml, bytes | bytearray) or not bytes(xml).strip():
        raise InvalidMetadata("(xml)", "SIPREC metadata must be non-empty XML bytes")
    xml = bytes(xml)
    _check_xml(xml)
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as e:  # pragma: no cover - expat already accepted it
        line, column = e.position
        raise InvalidMetadata("(xml)", f"malformed XML at line {line}, column {column + 1}") from None
    doc = _Doc(root)
    r = doc.root

    starts: list[datetime] = []
    stops: list[datetime] = []
    session_ids, sip_session_ids, group_refs = [], [], []
    for i, s in enumerate(doc.all(r, "session")):
        sid = _attr(s, "session_id", "id")
        if sid:
            session_ids.append(sid)
        sip_session_ids += doc.texts(s, "sipSessionID", squeeze=True)
        group_refs += doc.texts(s, "group-ref", squeeze=True)
        for raw in doc.texts(s, "start-time"):
            starts.append(_time(raw, f"session[{i}].start-time", assume_tz))
        for name in ("stop-time", "end-time"):
            for raw in doc.texts(s, name):
                stops.append(_time(raw, f"session[{i}].{name}", assume_tz))

    groups = {}
    for i, g in enumerate(doc.all(r, "group")):
        gid = _attr(g, "group_id", "id")
        if gid:
            groups[gid] = {k: v for k, v in (("associate_time", doc.text(g, "associate-time")),
                                              ("disassociate_time", doc.text(g, "disassociate-time"))) if v}

    recording_ends: list[datetime] = []
    for i, a in enumerate(doc.all(r, "sessionrecordingassoc")):
        for raw in doc.texts(a, "associate-time"):
            starts.append(_time(raw, f"sessionrecordingassoc[{i}].associate-time", assume_tz))
        for raw in doc.texts(a, "disassociate-time"):
            recording_ends.append(_time(raw, f"sessionrecordingassoc[{i}].disassociate-time", assume_tz))

    datamode = doc.text(r, "datamode", "dataMode")
    joins: list[datetime] = []  # participant/stream joins: the call's start only in a complete snapshot
    left: dict[str, datetime] = {}
    joined: set[str] = set()
    participant_times: dict[str, dict[str, str]] = {}
    for i, a in enumerate(doc.all(r, "participantsessionassoc")):
        pid = _attr(a, "participant_id") or f"#{i}"
        joined.add(pid)
        for raw in doc.texts(a, "associate-time"):
            joins.append(_time(raw, f"participantsessionassoc[{i}].associate-time", assume_tz))
            participant_times.setdefault(pid, {})["associate_time"] = joins[-1].isoformat()
        for raw in doc.texts(a, "disassociate-time"):
            left[pid] = _time(raw, f"participantsessionassoc[{i}].disassociate-time", assume_tz)
            participant_times.setdefault(pid, {})["disassociate_time"] = left[pid].isoformat()
        if not session_ids and _attr(a, "session_id"):
            session_ids.append(_attr(a, "session_id"))

    participant_streams: dict[str, dict[str, list[str]]] = {}
    for i, a in enumerate(doc.all(r, "participantstreamassoc")):
        for raw in doc.texts(a, "associate-time"):
            joins.append(_time(raw, f"participantstreamassoc[{i}].associate-time", assume_tz))
        pid = _attr(a, "participant_id")
        if pid:
            entry = participant_streams.setdefault(pid, {"send": [], "recv": []})
            entry["send"] += doc.texts(a, "send", squeeze=True)
            entry["recv"] += doc.texts(a, "recv", squeeze=True)

    participants, participant_aors = [], {}
    for i, p in enumerate(doc.all(r, "participant")):
        pid = _attr(p, "participant_id", "id") or f"#{i}"
        aors, name = [], None
        for n in doc.all(p, "nameID"):
            if _attr(n, "aor"):
                aors.append(_attr(n, "aor"))
            name = name or doc.text(n, "name")
        aors += doc.texts(p, "aor")  # pre-RFC draft form: <aor> and <name> directly in <participant>
        name = name or doc.text(p, "name")
        participant_aors[pid] = aors
        person = {"role": "other", "id": aors[0] if aors else pid, "name": name,
                  "phone": next((ph for ph in map(phone_from_uri, aors) if ph), None),
                  "attributes": {"participant_id": pid, **({"aors": aors} if len(aors) > 1 else {})}}
        participants.append({k: v for k, v in person.items() if v is not None})

    streams = {}
    for i, s in enumerate(doc.all(r, "stream")):
        sid = _attr(s, "stream_id", "id") or f"#{i}"
        streams[sid] = doc.text(s, "label")

    if datamode != "partial":
        starts += joins
    interaction_id = (session_ids[0] if session_ids else next(iter(groups), None)
                      or (sip_session_ids[0] if sip_session_ids else None))
    if not interaction_id:
        raise InvalidMetadata("source.interaction_id", "the metadata has no session_id, group_id or sipSessionID")
    source_fields = {
        "datamode": datamode,
        "session_ids": session_ids,
        "sip_session_ids": sip_session_ids,
        "group_id": next(iter(groups), None) or (group_refs[0] if group_refs else None),
        "groups": groups,
        "stream_labels": streams,
        "participant_aors": participant_aors,
        "participant_streams": participant_streams,
        "participant_times": participant_times,
    }
    if doc.ns != NS:
        source_fields["namespace"] = doc.ns
    out: dict = {"source": {"system": "siprec", "interaction_id": interaction_id}, "channel": "phone"}
    if starts:
        out["started_at"] = min(starts).isoformat()
    if stops:
        ended = max(stops)
    elif recording_ends:
        ended = max(recording_ends)
    elif datamode == "complete" and left and joined <= set(left):
        ended = max(left.values())
    else:
        ended = None
    if ended is not None:
        if starts and ended < min(starts):
            raise InvalidMetadata("ended_at", f"{ended.isoformat()} is before the start {min(starts).isoformat()}")
        out["ended_at"] = ended.isoformat()
    if participants:
        out["participants"] = participants
    out["source_fields"] = {k: v for k, v in source_fields.items() if v not in (None, [], {})}
    return out
